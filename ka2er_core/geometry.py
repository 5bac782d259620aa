"""Coordinate frames and resampling.

Frames: RAS and LPS are world frames in mm (Slicer uses RAS in the scene and LPS in files); IJK is the
continuous voxel index (i, j, k) with voxel centres at integers; arrays are indexed (k, j, i).
The *canonical* grid is axis-aligned in RAS: i runs to R, j to A, k to S.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from .volume import Grid

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""4x4 matrix taking RAS to LPS (and, being its own inverse, LPS to RAS)."""


def ras_to_lps(points: np.ndarray) -> np.ndarray:
    """(..., 3) RAS mm -> (..., 3) LPS mm."""
    return np.asarray(points, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])


lps_to_ras = ras_to_lps


def ras_to_ijk(points: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """(..., 3) RAS mm -> (..., 3) continuous voxel indices (i, j, k)."""
    points = np.asarray(points, dtype=np.float64)
    inverse = np.linalg.inv(ijk_to_ras)
    return points @ inverse[:3, :3].T + inverse[:3, 3]


def ijk_to_ras_points(ijk: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """(..., 3) voxel indices (i, j, k) -> (..., 3) RAS mm."""
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]


def box_corners(corner_a: Sequence[float], corner_b: Sequence[float]) -> np.ndarray:
    """(8, 3) corners of the axis-aligned box spanned by two opposite corners (any order)."""
    a, b = np.asarray(corner_a, dtype=np.float64), np.asarray(corner_b, dtype=np.float64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def ijk_box_to_ras(lo_ijk, hi_ijk, ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RAS bounds (low, high) enclosing the voxel-index box [lo, hi] given in (i, j, k)."""
    corners = ijk_to_ras_points(box_corners(lo_ijk, hi_ijk), ijk_to_ras)
    return corners.min(axis=0), corners.max(axis=0)


def foreground_bounds(mask: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Inclusive (k, j, i) index bounds (lo, hi) of the nonzero voxels of a 3D array; None if empty."""
    lo, hi = [], []
    for axis in range(3):
        nonzero = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if nonzero.size == 0:
            return None
        lo.append(nonzero[0])
        hi.append(nonzero[-1])
    return np.array(lo), np.array(hi)


def ras_box_to_ijk(corner_a, corner_b, ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Continuous (i, j, k) bounds (lo, hi) of a RAS box given by two opposite corners.

    For oblique grids the RAS box is not aligned with the voxel axes; the bounds enclose all eight
    of its corners. A box one slice thick (equal coordinate on one RAS axis) is legal.
    """
    ijk = ras_to_ijk(box_corners(corner_a, corner_b), ijk_to_ras)
    return ijk.min(axis=0), ijk.max(axis=0)


def orientation_code(ijk_to_ras: np.ndarray) -> str:
    """Three letters naming where the i, j and k axes point, e.g. ``"RAS"`` or ``"LPS"``.

    The convention of nibabel's ``aff2axcodes``: each voxel axis gets the world axis it is most
    parallel to, strongest pairing first so that no world axis is used twice (oblique grids get
    their dominant directions).
    """
    letters = (("L", "R"), ("P", "A"), ("I", "S"))
    cosines = np.abs(ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0))
    code = [""] * 3
    for _ in range(3):
        world, axis = np.unravel_index(np.argmax(cosines), cosines.shape)
        code[axis] = letters[world][int(ijk_to_ras[world, axis] > 0)]
        cosines[world, :] = -1
        cosines[:, axis] = -1
    return "".join(code)


def is_oblique(ijk_to_ras: np.ndarray, tol: float = 1e-4) -> bool:
    """True when some voxel axis is not parallel to a RAS axis (beyond ``tol`` in cosine)."""
    direction = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    return bool(np.any(np.abs(np.abs(direction).max(axis=0) - 1.0) > tol))


def centred_matrix(direction: np.ndarray, spacing: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """ijk_to_ras of a grid of ``shape`` (k, j, i) whose axes i, j, k run along the columns of
    ``direction`` with ``spacing`` (mm along i, j, k), centred on RAS 0."""
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.asarray(spacing, dtype=np.float64)
    matrix[:3, 3] = -matrix[:3, :3] @ ((np.asarray(shape[::-1], dtype=np.float64) - 1) / 2)
    return matrix


def canonical_grid(grid: Grid, spacing: Sequence[float]) -> Grid:
    """Axis-aligned RAS grid at ``spacing`` (mm along R, A, S) covering every voxel centre of ``grid``."""
    spacing = np.asarray(spacing, dtype=np.float64)
    k, j, i = grid.shape
    corners_ijk = box_corners((0, 0, 0), (i - 1, j - 1, k - 1))
    corners = ijk_to_ras_points(corners_ijk, grid.ijk_to_ras)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    size_ijk = np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1
    return Grid(tuple(int(n) for n in size_ijk[::-1]), axis_aligned_matrix(lo, spacing))


def crop_grid(center_ras: Sequence[float], shape: Sequence[int], spacing: Sequence[float]) -> Grid:
    """Axis-aligned RAS grid of ``shape`` (k, j, i) at ``spacing`` (mm along R, A, S) centred on a point."""
    spacing = np.asarray(spacing, dtype=np.float64)
    size_ijk = np.asarray(shape[::-1], dtype=np.float64)
    origin = np.asarray(center_ras, dtype=np.float64) - (size_ijk - 1) / 2 * spacing
    return Grid(tuple(int(n) for n in shape), axis_aligned_matrix(origin, spacing))


def axis_aligned_matrix(origin_ras: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """ijk_to_ras of a canonical grid: diagonal spacing, given origin."""
    matrix = np.diag([*spacing, 1.0])
    matrix[:3, 3] = origin_ras
    return matrix


def resample(array: np.ndarray, ijk_to_ras: np.ndarray, target: Grid, *, order: int = 1,
             fill: float = 0.0, dtype=None) -> np.ndarray:
    """Sample ``array`` (k, j, i, on ``ijk_to_ras``) at the voxel centres of ``target``.

    ``order`` 1 is trilinear (images), 0 nearest neighbour (masks, label maps). Only the target's
    voxels are computed, so resampling a small crop of a large volume is cheap. Points outside the
    source get ``fill``. Returns a (k, j, i) array of ``target.shape`` in ``dtype`` (default: the
    source's dtype for order 0, float32 otherwise).
    """
    if dtype is None:
        dtype = array.dtype if order == 0 else np.float32
    target_to_source = np.linalg.inv(ijk_to_ras) @ target.ijk_to_ras  # target ijk -> source ijk
    # scipy indexes in array order (k, j, i): reverse both the rows and the columns.
    matrix = target_to_source[:3, :3][::-1, ::-1]
    offset = target_to_source[:3, 3][::-1]
    # Straight from the source's dtype into the output's: no float copy of a large int16 volume.
    return ndimage.affine_transform(array, matrix, offset=offset, output_shape=tuple(target.shape),
                                    output=np.dtype(dtype), order=order, mode="constant", cval=fill,
                                    prefilter=False)
