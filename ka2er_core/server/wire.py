"""What travels between ``ka2er serve`` and :class:`~ka2er_core.server.client.RemoteSession`.

Volumes and masks go as one compressed container: ``KA2V``, a version byte, the header length
(uint32, little-endian), a JSON header (``shape`` (k, j, i), ``dtype``, optional ``ijk_to_ras``
4x4) and the zlib-compressed C-order voxels. Decoding bounds everything before allocating: header
size, voxel count, decompressed size (a zip bomb stops at the expected size), and checks geometry and
finite voxels. Changed regions of a mask go inside JSON: (k, j, i) ``[start, stop]`` pairs and the
region's bits, packed, zlib-compressed and base64-encoded.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
import zlib
from typing import Optional, Sequence

import numpy as np

from ..errors import Ka2erError
from ..volume import Volume, check_finite, validate_geometry

MAGIC = b"KA2V"
VERSION = 1
MAX_HEADER_BYTES = 4096
MAX_HEADER_DEPTH = 3
"""The header object, ``ijk_to_ras`` and its rows."""
HEADER_KEYS = frozenset({"shape", "dtype", "ijk_to_ras"})
JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:]')
"""A JSON string, a bracket or a colon: enough to follow nesting and the header's keys."""
INFLATE_INPUT_CHUNK = 1 << 20
INFLATE_OUTPUT_CHUNK = 64 << 20
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
Region = tuple[slice, slice, slice]


class WireError(Ka2erError):
    """A container or region payload is malformed, truncated, too large or inconsistent."""


def encode_array(array: np.ndarray, ijk_to_ras: Optional[np.ndarray] = None, level: int = 1) -> bytes:
    """A 3D ``array`` (k, j, i) and its optional geometry as one container."""
    array = np.ascontiguousarray(array)
    if array.dtype == bool:
        array = array.view(np.uint8)
    dtype = check_dtype(array.dtype.name, "dtype")
    header = {"shape": list(array.shape), "dtype": dtype.name}
    if ijk_to_ras is not None:
        header["ijk_to_ras"] = np.asarray(ijk_to_ras, dtype=np.float64).tolist()
    text = json.dumps(header).encode()
    body = zlib.compress(array.astype(dtype.newbyteorder("<"), copy=False).tobytes(), level)
    return MAGIC + bytes([VERSION]) + struct.pack("<I", len(text)) + text + body


def encode_volume(volume: Volume) -> bytes:
    return encode_array(volume.array, volume.ijk_to_ras)


def decode_array(data: bytes, max_voxels: int, field: str = "body",
                 max_bytes: Optional[int] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Container bytes -> (array (k, j, i), ijk_to_ras or None); :class:`WireError` names what is wrong.

    Everything is checked before the voxels are inflated: the header's size and nesting, a shape of
    at most ``max_voxels`` voxels (and ``max_bytes`` bytes), the dtype and the geometry; inflating
    then stops one byte past the size the header announces.
    """
    header, body = split_container(data, field)
    shape = check_shape(header.get("shape"), max_voxels, f"{field}.shape")
    dtype = check_dtype(header.get("dtype"), f"{field}.dtype")
    expected = math.prod(shape) * dtype.itemsize
    if max_bytes is not None and expected > max_bytes:
        raise WireError(f"{expected / 2**20:.0f} MB of {dtype.name} voxels exceed the "
                        f"{max_bytes / 2**20:.0f} MB the server keeps for all sessions",
                        field=f"{field}.shape")
    matrix = None
    if "ijk_to_ras" in header:
        matrix = check_matrix(header["ijk_to_ras"], shape, f"{field}.ijk_to_ras")
    raw = inflate(body, expected, f"{field}.voxels")
    array = raw.view(dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
    try:
        check_finite(array)
    except Ka2erError as err:
        raise WireError(err.problem, field=f"{field}.voxels") from None
    return array, matrix


def split_container(data: bytes, field: str) -> tuple[dict, memoryview]:
    """The container's JSON header (a bounded, shallow object with known keys) and its zlib body."""
    prefix = len(MAGIC) + 5
    if len(data) < prefix or data[:len(MAGIC)] != MAGIC:
        raise WireError(f"not a KA2V volume container (expected it to start with {MAGIC!r})",
                        field=field)
    if data[len(MAGIC)] != VERSION:
        raise WireError(f"container version {data[len(MAGIC)]}, expected {VERSION}", field=field)
    (length,) = struct.unpack("<I", data[len(MAGIC) + 1:prefix])
    if length > MAX_HEADER_BYTES or prefix + length > len(data):
        raise WireError(f"header length {length} exceeds {min(MAX_HEADER_BYTES, len(data) - prefix)}"
                        " bytes", field=field)
    header = parse_header(data[prefix:prefix + length], field)
    unknown = sorted(set(header) - HEADER_KEYS)
    if unknown:
        raise WireError(f"unknown keys {brief(unknown)}; expected {sorted(HEADER_KEYS)}",
                        field=f"{field}.header")
    return header, memoryview(data)[prefix + length:]


def parse_header(text: bytes, field: str) -> dict:
    """The header of the container ``field``: a JSON object nested at most :data:`MAX_HEADER_DEPTH`
    deep (checked before parsing)."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("header is not UTF-8 text", field=f"{field}.header") from None
    key = first_too_deep(decoded, MAX_HEADER_DEPTH)
    if key is not None:
        raise WireError(f"nested deeper than the header allows ({MAX_HEADER_DEPTH} levels in all)",
                        field=f"{field}.{key[:40]}" if key else f"{field}.header")
    try:
        header = json.loads(decoded)
    except ValueError as err:
        raise WireError(f"header is not JSON ({err})", field=f"{field}.header") from None
    if not isinstance(header, dict):
        raise WireError("header must be a JSON object", field=f"{field}.header")
    return header


def first_too_deep(text: str, max_depth: int) -> Optional[str]:
    """The top-level key of JSON ``text`` under which arrays and objects first nest deeper than
    ``max_depth`` ("" outside any key), or None. Brackets inside strings do not count."""
    depth, key, previous = 0, "", None
    for token in JSON_TOKEN.findall(text):
        if token == ":" and depth == 1 and previous is not None and previous.startswith('"'):
            key = previous[1:-1]
        elif token in ("[", "{"):
            depth += 1
            if depth > max_depth:
                return key
        elif token in ("]", "}"):
            depth -= 1
        previous = token
    return None


def check_shape(shape, max_voxels: int, field: str) -> tuple[int, int, int]:
    """3 positive integers whose product (in Python integers: no wrapping) is <= ``max_voxels``."""
    if not (isinstance(shape, list) and len(shape) == 3
            and all(is_integer(n) and n > 0 for n in shape)):
        raise WireError(f"expected 3 positive integers (k, j, i), got {brief(shape)}", field=field)
    if max(shape) > max_voxels or math.prod(shape) > max_voxels:
        raise WireError(f"{brief(shape)} exceeds the server's limit of {max_voxels} voxels",
                        field=field)
    return tuple(shape)


def check_dtype(name, field: str) -> np.dtype:
    """One of :data:`DTYPES` (real numbers only), little-endian."""
    if not isinstance(name, str) or name not in DTYPES:
        raise WireError(f"expected one of {', '.join(DTYPES)}, got {brief(name)}", field=field)
    return np.dtype(name).newbyteorder("<")


def check_matrix(value, shape: Sequence[int], field: str) -> np.ndarray:
    """Exactly 4 rows of 4 finite numbers, a valid voxel-to-RAS matrix for ``shape``."""
    if not (isinstance(value, list) and len(value) == 4 and all(
            isinstance(row, list) and len(row) == 4 and all(is_finite_number(x) for x in row)
            for row in value)):
        raise WireError("expected a 4x4 array of finite numbers", field=field)
    matrix = np.array(value, dtype=np.float64)
    try:
        validate_geometry(tuple(shape), matrix)
    except Ka2erError as err:
        parent = field.rsplit(".", 1)[0]
        raise WireError(err.problem, field=f"{parent}.{err.field or 'ijk_to_ras'}") from None
    return matrix


def inflate(stream: bytes, expected: int, field: str) -> np.ndarray:
    """The zlib ``stream`` inflated into exactly ``expected`` bytes (uint8). Inflates piece by piece
    into one buffer and stops one byte past ``expected``: a bomb costs no more memory than an honest
    stream, and a short one is refused."""
    out = np.empty(expected, dtype=np.uint8)
    filled = 0
    inflater = zlib.decompressobj()
    source = memoryview(stream)
    pending = source[:0]
    try:
        while not inflater.eof:
            if not pending:
                if not source:
                    break
                pending, source = source[:INFLATE_INPUT_CHUNK], source[INFLATE_INPUT_CHUNK:]
            # max_length >= 1 always (0 would mean "no limit")
            piece = inflater.decompress(pending, min(expected - filled + 1, INFLATE_OUTPUT_CHUNK))
            if filled + len(piece) > expected:
                raise WireError(f"voxel data longer than the shape: expected {expected} bytes",
                                field=field)
            out[filled:filled + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
            filled += len(piece)
            pending = inflater.unconsumed_tail
    except zlib.error as err:
        raise WireError(f"voxels are not a zlib stream ({err})", field=field) from None
    if filled < expected:
        raise WireError(f"voxel data truncated: expected {expected} bytes, got {filled}", field=field)
    if not inflater.eof:
        raise WireError("voxel data truncated: the zlib stream has no end", field=field)
    if inflater.unused_data or pending or source:
        raise WireError("bytes after the end of the voxel data", field=field)
    return out


def is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond float64
        return False


def brief(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (never echo a large input back)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def decode_volume(data: bytes, max_voxels: int, max_bytes: Optional[int] = None) -> Volume:
    """A container with geometry -> :class:`Volume`."""
    array, matrix = decode_array(data, max_voxels, field="image", max_bytes=max_bytes)
    if matrix is None:
        raise WireError("an image needs its ijk_to_ras matrix", field="image.ijk_to_ras")
    return Volume(array, matrix)


def encode_region(mask: np.ndarray, region: Optional[Region]) -> Optional[dict]:
    """The content of ``mask[region]`` as JSON: {"region": [[start, stop] x (k, j, i)], "bits": str}."""
    if region is None:
        return None
    bits = np.packbits(np.asarray(mask[region], dtype=bool), axis=None)
    return {"region": [[s.start, s.stop] for s in region],
            "bits": base64.b64encode(zlib.compress(bits.tobytes(), 1)).decode("ascii")}


def decode_region(payload: Optional[dict], shape: Sequence[int]) -> Optional[tuple[Region, np.ndarray]]:
    """Inverse of :func:`encode_region` for a mask of ``shape``: (region, uint8 content) or None."""
    if payload is None:
        return None
    try:
        region = tuple(slice(int(a), int(b)) for a, b in payload["region"])
        bits = base64.b64decode(payload["bits"])
    except (KeyError, TypeError, ValueError) as err:
        raise WireError(f"malformed changed region ({err})", field="region") from None
    if len(region) != 3 or any(not 0 <= s.start < s.stop <= n for s, n in zip(region, shape)):
        raise WireError(f"{brief(payload['region'])} is not a (k, j, i) region inside {list(shape)}",
                        field="region")
    size = [s.stop - s.start for s in region]
    packed = inflate(bits, (math.prod(size) + 7) // 8, "region.bits")
    return region, np.unpackbits(packed, count=math.prod(size)).reshape(size)
