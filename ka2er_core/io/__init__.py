"""Reading and writing volumes and segmentations: NRRD, NIfTI and Slicer's ``.seg.nrrd``.

Every reader returns (k, j, i) arrays with an ``ijk_to_ras`` matrix and checks the geometry; every
writer is atomic (temporary file, then rename).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import UnreadableFileError
from ..volume import Grid, Volume, check_finite
from .atomic import atomic_write, full_suffix
from .nifti_format import load_nifti, write_nifti
from .nrrd_format import lps_header, load_nrrd, write_nrrd
from .segmentation import (Segmentation, as_masks, label_map, read_seg_nrrd,
                           write_seg_nrrd)

PathLike = Union[str, os.PathLike]
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".seg.nrrd")


def _suffix(path: Path, allowed: Sequence[str]) -> str:
    suffix = full_suffix(path)
    if suffix not in allowed:
        raise UnreadableFileError(f"unsupported file type {suffix!r}; expected one of "
                                  f"{', '.join(allowed)}", path=path, field="extension")
    return suffix


def check_real(array: np.ndarray, path: Path) -> None:
    """Voxels must be booleans, integers or reals: complex (MR raw data, say) or compound (RGB)
    voxels are refused, naming the file and the type."""
    if array.dtype.kind not in "biuf":
        raise UnreadableFileError(f"{array.dtype} voxels are not supported; expected integer or "
                                  "real intensities (take the magnitude of complex data first)",
                                  path=path, field="dtype")


def load_volume(path: PathLike) -> Volume:
    """Read a 3D volume: NRRD (space LPS/RAS/LAS, gzip or raw), NIfTI, or ``.seg.nrrd`` as a label map.

    Raises a :class:`~ka2er_core.errors.Ka2erError` subclass naming the file and field for unreadable
    or truncated files, non-3D images, complex voxels, NaN/Inf voxels, bad spacing or a singular
    direction matrix.
    """
    path = Path(path)
    suffix = _suffix(path, VOLUME_SUFFIXES)
    if suffix == ".seg.nrrd":
        return read_seg_nrrd(path).to_label_map(path)
    array, ijk_to_ras = load_nifti(path) if suffix.startswith(".nii") else load_nrrd(path)
    check_real(array, path)
    check_finite(array, path=path)
    return Volume(array, ijk_to_ras, {}, str(path))


def load_segmentation(path: PathLike) -> Segmentation:
    """Read a ``.seg.nrrd`` (overlapping segments kept) or a NIfTI/NRRD label map into named masks."""
    path = Path(path)
    if _suffix(path, VOLUME_SUFFIXES) == ".seg.nrrd":
        return read_seg_nrrd(path)
    volume = load_volume(path)
    values = [int(v) for v in np.unique(volume.array) if v != 0]
    masks = {f"Label {v}": (volume.array == v).astype(np.uint8) for v in values}
    return Segmentation(masks, volume.ijk_to_ras, {}, {f"Label {v}": v for v in values})


def save_volume(path: PathLike, volume: Volume) -> Path:
    """Write ``volume`` as NRRD (LPS, gzip) or NIfTI (by extension), atomically. Returns the path."""
    path = Path(path)
    suffix = _suffix(path, (".nrrd", ".nii", ".nii.gz"))
    with atomic_write(path) as tmp:
        if suffix == ".nrrd":
            array = volume.array.astype(np.uint8) if volume.array.dtype == np.bool_ else volume.array
            write_nrrd(tmp, array, {**lps_header(volume.ijk_to_ras), "kinds": ["domain"] * 3})
        else:
            write_nifti(tmp, volume.array, volume.ijk_to_ras)
    return path


def save_segmentation(path: PathLike, segments: Mapping[str, object], reference: Union[Volume, Grid],
                      colors: Optional[Mapping[str, Sequence[float]]] = None) -> Path:
    """Write named masks on ``reference``'s grid, atomically.

    ``segments`` maps names to (k, j, i) masks (nonzero = inside) or Volumes on the reference grid.
    ``.seg.nrrd`` gives a Slicer segmentation (label values 1..N in order, overlapping segments in
    separate layers, ``colors`` as RGB in 0..1); ``.nii``/``.nii.gz``/``.nrrd`` a label map with
    values 1..N (overlaps are an error there).
    """
    path = Path(path)
    suffix = _suffix(path, (".seg.nrrd", ".nii", ".nii.gz", ".nrrd"))
    grid = reference.grid if isinstance(reference, Volume) else reference
    masks = as_masks(segments, grid, path)
    if suffix == ".seg.nrrd":
        with atomic_write(path) as tmp:
            write_seg_nrrd(tmp, masks, grid.ijk_to_ras, colors)
        return path
    values = {name: index + 1 for index, name in enumerate(masks)}
    return save_volume(path, Volume(label_map(masks, values, path), grid.ijk_to_ras, values))


__all__ = ["Segmentation", "load_segmentation", "load_volume", "save_segmentation", "save_volume"]
