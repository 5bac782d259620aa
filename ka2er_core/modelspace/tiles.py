"""Refinement tiles: base-spacing crops over a zoomed-out answer, for sharper borders of large objects."""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import ndimage

from ..geometry import foreground_bounds, ijk_box_to_ras, ijk_to_ras_points
from .crop import Crop, centred_crop
from .prompts import Point, Prompt

REFINE_OVERLAP = 8
"""Crop voxels by which neighbouring refinement tiles overlap."""
MIN_TILE_VOXELS = 64
"""A refinement tile holding fewer voxels of the coarse answer is skipped."""


def refinement_tiles(coarse: Crop, logits: np.ndarray, prompts: list[Prompt], crop_size: int,
                     base_spacing: float) -> list[tuple[Crop, np.ndarray, list[Point]]]:
    """Tiles at ``base_spacing`` over the foreground of a coarse answer (``logits`` on ``coarse``),
    each with the coarse answer resampled on it (its mask prompt) and its points: the point prompts
    inside it and a positive point at its deepest voxel of the coarse answer."""
    bounds = foreground_bounds(logits > 0)
    if bounds is None:
        return []
    low, high = ijk_box_to_ras(bounds[0][::-1] - 1.0, bounds[1][::-1] + 1.0,  # a coarse voxel
                               coarse.ijk_to_ras)                        # of doubt each side
    side = (crop_size - 1) * base_spacing
    stride = side - REFINE_OVERLAP * base_spacing
    centres = []
    for lo, hi in zip(low, high):
        count = max(1, math.ceil((hi - lo - side) / stride) + 1)
        centres.append(np.linspace(lo + side / 2, hi - side / 2, count) if count > 1
                       else [(lo + hi) / 2])
    tiles = []
    for centre in itertools.product(*centres):
        tile = centred_crop(np.array(centre), crop_size, base_spacing)
        prior = tile.resample(logits, coarse.grid, order=1, fill=-1.0)
        seed = prior > 0
        if np.count_nonzero(seed) < MIN_TILE_VOXELS:
            continue
        depth = ndimage.distance_transform_edt(np.pad(seed, 1))[1:-1, 1:-1, 1:-1]
        deepest = np.array(np.unravel_index(int(np.argmax(depth)), depth.shape), float)
        points = [p for p in prompts if isinstance(p, Point) and tile.holds(p)]
        points.append(Point(ijk_to_ras_points(deepest[::-1], tile.ijk_to_ras)))
        tiles.append((tile, prior, points))
    return tiles
