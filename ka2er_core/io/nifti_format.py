"""NIfTI volumes (nibabel): the affine is RAS; nibabel arrays are (i, j, k), ours (k, j, i)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import NotThreeDimensionalError, UnreadableFileError


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Data as nibabel gives it ((i, j, k, ...)) and the affine; failures become UnreadableFileError."""
    try:
        image = nib.load(str(path))
        return np.asanyarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)
    except FileNotFoundError:
        raise UnreadableFileError("no such file", path=path) from None
    except Exception as err:  # truncated gzip streams raise EOFError, zlib.error, OSError...
        raise UnreadableFileError(f"not a readable NIfTI file ({type(err).__name__}: {err})",
                                  path=path) from None


def load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Array (k, j, i) and ijk_to_ras of a 3D NIfTI (a 4D file with one frame is accepted)."""
    data, affine = read_nifti(path)
    if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise NotThreeDimensionalError(f"expected a 3D volume, got shape {data.shape} (i, j, k, ...)",
                                       path=path, field="dim")
    return np.ascontiguousarray(data.transpose(2, 1, 0)), affine


def write_nifti(path: Path, array: np.ndarray, ijk_to_ras: np.ndarray) -> None:
    """Write a (k, j, i) array; sform and qform both carry ``ijk_to_ras`` (float32 in the format)."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.int64 and array.size and np.abs(array).max() < 2**31:
        array = array.astype(np.int32)
    image = nib.Nifti1Image(array.transpose(2, 1, 0), ijk_to_ras)
    image.header.set_xyzt_units("mm")
    image.set_sform(ijk_to_ras, code=1)
    image.set_qform(ijk_to_ras, code=1)
    nib.save(image, str(path))
