"""What a prompt returns, and the prompt checks shared by local and remote sessions (no torch here,
so the server client stays light)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from ..errors import GeometryMismatchError, PromptError
from ..geometry import box_corners, ijk_to_ras_points, ras_box_to_ijk
from ..modelspace.strokes import MAX_STROKE_POINTS, lasso_voxels
from ..modelspace.voxels import continuous_voxel
from ..volume import Volume

Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Result:
    """``region``: the (k, j, i) slices of the volume that were rewritten (None if nothing changed);
    ``score``: predicted IoU; ``member``: the model that answered (a bundle's member name);
    ``latency_ms``: wall time; ``clipped``: the prompt (a box) ran past the image and was clipped to
    it."""

    region: Optional[Region]
    score: float
    member: str
    latency_ms: float
    clipped: bool = False


@dataclass(frozen=True)
class BackgroundStatus:
    """What the background worker (:mod:`.prefetch`) has done for the current target's corrections."""

    ready: int
    """Planned crops whose embeddings are cached."""
    planned: int
    """Crops planned for the target's corrections (within the budget)."""
    bytes: int
    """Bytes of the embeddings kept for the background."""
    budget: int
    done: bool
    """Nothing left to compute (every planned crop ready, or the worker off)."""


def finite_point(ras, what: str) -> np.ndarray:
    """``ras`` as 3 finite RAS mm, else :class:`PromptError` naming ``what``."""
    point = np.asarray(ras, dtype=np.float64)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise PromptError(f"{what} must be 3 finite RAS coordinates, got {ras!r}", field=what)
    return point


def check_box(volume: Volume, corner_a, corner_b) -> tuple[np.ndarray, np.ndarray, bool]:
    """The RAS box with opposite corners ``corner_a`` and ``corner_b``, clipped to the image's RAS
    bounding box (a box drawn in the RAS-aligned slice views of an oblique volume runs past the
    image): (low, high, clipped), ``clipped`` when the box runs past the image anywhere (the model
    sees nothing there). A box that misses the image is a :class:`PromptError`."""
    a, b = finite_point(corner_a, "box corner"), finite_point(corner_b, "box corner")
    low, high = np.minimum(a, b), np.maximum(a, b)
    k, j, i = volume.shape
    edges = ijk_to_ras_points(box_corners((-0.5,) * 3, (i - 0.5, j - 0.5, k - 0.5)), volume.ijk_to_ras)
    inside_low, inside_high = np.maximum(low, edges.min(axis=0)), np.minimum(high, edges.max(axis=0))
    if np.any(inside_low > inside_high):
        raise PromptError(f"box RAS {low.round(2).tolist()} to {high.round(2).tolist()} does not "
                          f"overlap the image (RAS {edges.min(axis=0).round(2).tolist()} to "
                          f"{edges.max(axis=0).round(2).tolist()})", field="box")
    lo_ijk, hi_ijk = ras_box_to_ijk(inside_low, inside_high, volume.ijk_to_ras)
    clipped = bool(np.any(inside_low != low) or np.any(inside_high != high)
                   or np.any(lo_ijk < -0.5) or np.any(hi_ijk > np.asarray(volume.shape[::-1]) - 0.5))
    return inside_low, inside_high, clipped


def check_point(volume: Volume, ras, what: str) -> np.ndarray:
    """``ras`` as 3 finite RAS mm inside ``volume`` (within half a voxel), else :class:`PromptError`."""
    point = finite_point(ras, what)
    ijk = continuous_voxel(point, volume)
    if np.any(ijk < -0.5) or np.any(ijk > np.asarray(volume.shape[::-1]) - 0.5):
        raise PromptError(f"{what} RAS {point.round(2).tolist()} is outside the image "
                          f"(voxel {ijk.round(1).tolist()}, size {volume.shape[::-1]})", field=what)
    return point


def check_stroke(volume: Volume, points, what: str, minimum: int) -> np.ndarray:
    """``points`` as (N, 3) finite RAS mm inside ``volume``, ``minimum`` <= N <=
    :data:`MAX_STROKE_POINTS`, else :class:`PromptError` naming ``what`` (and the first bad point)."""
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 2 or array.shape[1:] != (3,):
        raise PromptError(f"{what} must be a list of RAS points (x, y, z)", field=what)
    if not minimum <= len(array) <= MAX_STROKE_POINTS:
        raise PromptError(f"{what} needs {minimum} to {MAX_STROKE_POINTS} points, got {len(array)}",
                          field=what)
    ijk = continuous_voxel(np.where(np.isfinite(array), array, 0.0), volume)
    bad = ~np.isfinite(array).all(axis=1) | np.any(ijk < -0.5, axis=1) | np.any(
        ijk > np.asarray(volume.shape[::-1]) - 0.5, axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        check_point(volume, array[first], f"{what} point {first}")
    return array


def check_lasso(volume: Volume, contour) -> tuple[np.ndarray, Region, np.ndarray]:
    """A closed RAS curve (N, 3) on one slice of ``volume``: (contour, region, filled) as
    :func:`~ka2er_core.modelspace.strokes.lasso_voxels` gives them, else :class:`PromptError`."""
    contour = check_stroke(volume, contour, "lasso", 3)
    return (contour, *lasso_voxels(contour, volume))


def check_mask(volume: Volume, mask: Union[np.ndarray, Volume]) -> np.ndarray:
    """``mask`` (an array (k, j, i) or a Volume) as uint8 0/1 on ``volume``'s grid, else
    :class:`GeometryMismatchError`."""
    if isinstance(mask, Volume):
        if not mask.grid.same_as(volume.grid):
            raise GeometryMismatchError("mask is on a different grid than the image",
                                        path=mask.path, field="mask")
        mask = mask.array
    if tuple(mask.shape) != volume.shape:
        raise GeometryMismatchError(f"mask shape {tuple(mask.shape)} differs from the image's "
                                    f"{volume.shape} (k, j, i)", field="mask")
    return (np.asarray(mask) != 0).astype(np.uint8)
