"""Scribbles and lassos on a volume's voxels (numpy only, so the server client checks them too):
point tokens spaced along a polyline, and the voxels a closed curve on one slice encloses."""

from __future__ import annotations

import numpy as np

from ..errors import PromptError
from .voxels import continuous_voxel

MAX_STROKE_POINTS = 500
"""Points a scribble or lasso may have (a Markups curve has a few dozen control points; 500 points
fit in a server request)."""
MAX_STROKE_TOKENS = 8
"""Point tokens one scribble or lasso becomes (the model was trained on a handful of clicks)."""
LASSO_FLATNESS = 1.5
"""How far (voxels) a lasso's points may spread along the voxel axis across its slice: one drawn in
Slicer's RAS-aligned slice views of an oblique volume is not exactly on a voxel slice."""


def polyline_samples(points: np.ndarray, step: float = 0.5) -> np.ndarray:
    """Points (M, 3) along the polyline through ``points`` (N, 3), at most ``step`` apart (in the
    points' units), both ends included."""
    points = np.asarray(points, dtype=np.float64)
    samples = [points[:1]]
    for start, stop in zip(points[:-1], points[1:]):
        count = max(1, int(np.ceil(np.linalg.norm(stop - start) / step)))
        samples.append(start + np.linspace(0, 1, count + 1)[1:, None] * (stop - start))
    return np.concatenate(samples)


def evenly_chosen(samples: np.ndarray, count: int = MAX_STROKE_TOKENS) -> np.ndarray:
    """At most ``count`` of ``samples`` (M, ...) evenly spaced by index, both ends included."""
    if len(samples) <= count:
        return samples
    return samples[np.round(np.linspace(0, len(samples) - 1, count)).astype(int)]


def fill_polygon(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Which pixel centres of a (rows, columns) grid lie inside ``polygon`` (N, 2) (row, column)
    coordinates, closed automatically (even-odd rule): bool ``shape``."""
    rows, columns = np.indices(shape, dtype=np.float64)
    inside = np.zeros(shape, dtype=bool)
    a = np.asarray(polygon, dtype=np.float64)
    b = np.roll(a, -1, axis=0)
    for (r0, c0), (r1, c1) in zip(a, b):
        crosses = (r0 > rows) != (r1 > rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            column = c0 + (rows - r0) * (c1 - c0) / (r1 - r0)
        inside ^= crosses & (columns < column)
    return inside


def lasso_voxels(contour: np.ndarray, grid) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """The voxels of ``grid`` (a Volume or Grid: ``shape`` (k, j, i) and ``ijk_to_ras``) that the
    closed RAS curve ``contour`` (N, 3) encloses on its slice: (k, j, i) slices one voxel thick along
    the slice's axis, and bool of their shape. The slice is across the voxel axis along which the
    points spread least (at most :data:`LASSO_FLATNESS` voxels); the polygon is projected on it.
    A curve that is not flat, encloses no area or no voxel centre is a :class:`PromptError`."""
    ijk = continuous_voxel(contour, grid)
    spread = np.ptp(ijk, axis=0)
    axis = int(np.argmin(spread))
    if spread[axis] > LASSO_FLATNESS:
        raise PromptError(f"a lasso must lie on one slice: its points spread over {spread.min():.1f} "
                          f"voxels along every voxel axis (at most {LASSO_FLATNESS} across the slice)",
                          field="lasso")
    size = np.asarray(grid.shape[::-1])  # (i, j, k)
    index = int(np.clip(np.round(ijk[:, axis].mean()), 0, size[axis] - 1))
    plane = [a for a in range(3) if a != axis][::-1]  # (row, column) axes in (k, j, i) order
    polygon = ijk[:, plane]
    rows, columns = polygon.T
    area = abs(np.dot(rows, np.roll(columns, -1)) - np.dot(columns, np.roll(rows, -1))) / 2
    if area < 1e-3:
        raise PromptError("the lasso's points lie on a line: it encloses no area", field="lasso")
    low = np.clip(np.floor(polygon.min(axis=0)).astype(int), 0, size[plane] - 1)
    high = np.clip(np.ceil(polygon.max(axis=0)).astype(int), 0, size[plane] - 1)
    inside = fill_polygon(polygon - low, tuple(high - low + 1))
    if not inside.any():
        raise PromptError("the lasso encloses no voxel centre: draw it around the region",
                          field="lasso")
    starts, stops = np.zeros(3, int), np.zeros(3, int)  # (i, j, k)
    starts[axis], stops[axis] = index, index + 1
    starts[plane], stops[plane] = low, high + 1
    region = tuple(slice(int(a), int(b)) for a, b in zip(starts[::-1], stops[::-1]))
    return region, np.expand_dims(inside, axis=2 - axis)
