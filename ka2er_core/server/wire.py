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
import struct
import zlib
from typing import Optional, Sequence

import numpy as np

from ..errors import Ka2erError
from ..volume import Volume, check_finite, validate_geometry

MAGIC = b"KA2V"
VERSION = 1
MAX_HEADER_BYTES = 4096
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
Region = tuple[slice, slice, slice]


class WireError(Ka2erError):
    """A container or region payload is malformed, truncated, too large or inconsistent."""


def encode_array(array: np.ndarray, ijk_to_ras: Optional[np.ndarray] = None, level: int = 1) -> bytes:
    """A 3D ``array`` (k, j, i) and its optional geometry as one container."""
    array = np.ascontiguousarray(array)
    if array.dtype == bool:
        array = array.view(np.uint8)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    header = {"shape": list(array.shape), "dtype": dtype.name}
    if ijk_to_ras is not None:
        header["ijk_to_ras"] = np.asarray(ijk_to_ras, dtype=np.float64).tolist()
    text = json.dumps(header).encode()
    body = zlib.compress(array.astype(dtype.newbyteorder("<"), copy=False).tobytes(), level)
    return MAGIC + bytes([VERSION]) + struct.pack("<I", len(text)) + text + body


def encode_volume(volume: Volume) -> bytes:
    return encode_array(volume.array, volume.ijk_to_ras)


def decode_array(data: bytes, max_voxels: int, field: str = "body") -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Container bytes -> (array (k, j, i), ijk_to_ras or None); :class:`WireError` names what is wrong."""
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
    try:
        header = json.loads(data[prefix:prefix + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WireError(f"header is not JSON ({err})", field=f"{field}.header") from None
    if not isinstance(header, dict):
        raise WireError("header must be a JSON object", field=f"{field}.header")
    shape = header.get("shape")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise WireError(f"expected 3 positive integers (k, j, i), got {shape!r}", field=f"{field}.shape")
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > max_voxels:
        raise WireError(f"{voxels} voxels exceed the server's limit of {max_voxels}",
                        field=f"{field}.shape")
    dtype_name = header.get("dtype")
    if dtype_name not in DTYPES:
        raise WireError(f"expected one of {', '.join(DTYPES)}, got {dtype_name!r}",
                        field=f"{field}.dtype")
    dtype = np.dtype(dtype_name).newbyteorder("<")
    matrix = None
    if "ijk_to_ras" in header:
        try:
            matrix = np.array(header["ijk_to_ras"], dtype=np.float64)
        except (TypeError, ValueError):
            raise WireError("expected a 4x4 array of numbers", field=f"{field}.ijk_to_ras") from None
        try:
            validate_geometry(tuple(shape), matrix)
        except Ka2erError as err:
            raise WireError(err.problem, field=f"{field}.{err.field or 'ijk_to_ras'}") from None
    expected = voxels * dtype.itemsize
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data[prefix + length:], expected)
    except zlib.error as err:
        raise WireError(f"voxels are not a zlib stream ({err})", field=f"{field}.voxels") from None
    if len(raw) < expected or not inflater.eof or inflater.unused_data:
        problem = "truncated" if len(raw) < expected else "longer than the shape"
        raise WireError(f"voxel data {problem}: expected {expected} bytes for {shape} {dtype_name}",
                        field=f"{field}.voxels")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
    try:
        check_finite(array)
    except Ka2erError as err:
        raise WireError(err.problem, field=f"{field}.voxels") from None
    return array, matrix


def decode_volume(data: bytes, max_voxels: int) -> Volume:
    """A container with geometry -> :class:`Volume`."""
    array, matrix = decode_array(data, max_voxels, field="image")
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
        if len(region) != 3 or any(not 0 <= s.start < s.stop <= n for s, n in zip(region, shape)):
            raise ValueError(f"region {payload['region']} outside shape {list(shape)}")
        size = int(np.prod([s.stop - s.start for s in region]))
        bits = np.frombuffer(zlib.decompress(base64.b64decode(payload["bits"])), dtype=np.uint8)
        content = np.unpackbits(bits, count=size).reshape([s.stop - s.start for s in region])
    except (KeyError, TypeError, ValueError, zlib.error) as err:
        raise WireError(f"malformed changed region ({err})", field="region") from None
    return region, content
