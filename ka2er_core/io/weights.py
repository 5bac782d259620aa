"""The header of a ``.safetensors`` weight file, checked before the safetensors library reads it.

The format: 8 bytes, the header's length N (little-endian u64); N bytes of JSON, an object that maps
each tensor's name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (plus an optional
``"__metadata__"`` object of strings); then the tensors' bytes, back to back. Every number is
checked here in Python integers (no overflow), so that a damaged or hostile file is refused with one
line naming the file and the field, not a library error or a huge allocation.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnreadableFileError

LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100_000_000
"""The safetensors library's own limit on the header's length."""
METADATA = "__metadata__"
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
"""Bytes per value of each tensor type the format names."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]

    @property
    def values(self) -> int:
        return math.prod(self.shape)


def is_count(value) -> bool:
    """A JSON integer >= 0 (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_header(path: os.PathLike | str) -> dict[str, TensorEntry]:
    """The tensors of the safetensors file ``path`` by name, its header checked against the
    format and the file's size; :class:`~ka2er_core.errors.UnreadableFileError` names ``path`` and
    the field (``header`` or ``header.<tensor>.<key>``) of the first problem."""
    path = Path(path)

    def bad(problem: str, field: str = "header") -> UnreadableFileError:
        return UnreadableFileError(problem, path=path, field=field)

    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            prefix = stream.read(LENGTH_BYTES)
            if len(prefix) < LENGTH_BYTES:
                raise bad(f"{size} bytes: too short for a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(size - LENGTH_BYTES, MAX_HEADER_BYTES):
                raise bad(f"a length of {length} bytes exceeds the file ({size} bytes) or the "
                          f"format's limit ({MAX_HEADER_BYTES} bytes)")
            text = stream.read(length)
    except OSError as err:
        raise UnreadableFileError(f"unreadable ({err.strerror or err})", path=path) from None
    if not text.startswith(b"{"):
        raise bad("expected a JSON object right after the length")
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise bad(f"not valid JSON ({type(err).__name__})") from None
    if not isinstance(header, dict):
        raise bad(f"expected a JSON object, found {type(header).__name__}")
    metadata = header.pop(METADATA, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("expected an object of strings", field=f"header.{METADATA}")
    data_bytes = size - LENGTH_BYTES - length
    tensors, spans = {}, []
    for name, entry in header.items():
        field = f"header.{name}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad("expected an object with dtype, shape and data_offsets", field=field)
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise bad(f"unknown tensor type {dtype!r}", field=f"{field}.dtype")
        if not isinstance(shape, list) or not all(is_count(n) for n in shape):
            raise bad(f"expected a list of sizes >= 0, found {shape!r}", field=f"{field}.shape")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(is_count, offsets))
                or not offsets[0] <= offsets[1] <= data_bytes):
            raise bad(f"expected [begin, end] within the {data_bytes} data bytes, found "
                      f"{offsets!r}", field=f"{field}.data_offsets")
        tensor = TensorEntry(dtype, tuple(shape))
        if tensor.values * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
            raise bad(f"shape {shape} of {dtype} needs {tensor.values * DTYPE_BYTES[dtype]} bytes, "
                      f"data_offsets give {offsets[1] - offsets[0]}", field=f"{field}.shape")
        tensors[name] = tensor
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):  # the format: tensors back to back, no gap, no overlap
        if begin != end:
            raise bad(f"tensor bytes start at {begin}, expected {end} (gap or overlap)",
                      field=f"header.{name}.data_offsets")
        end = stop
    if end != data_bytes:
        raise bad(f"the tensors take {end} bytes, the file holds {data_bytes} after the header")
    return tensors
