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

