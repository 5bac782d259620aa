"""Correction crops on a lattice, so that the crop a click will need is known before the click.

At a member's base spacing, crops of ``crop_size``^3 voxels are centred on a RAS lattice of stride
half a crop, anchored at the volume's centre (fixed per image and member). A correcting click uses
the lattice crop whose centre is nearest: the click then lies within a quarter crop of the centre
along each axis. The background worker (:mod:`ka2er_core.inference.prefetch`) embeds the crops a
mask's corrections will land in (:func:`surface_crops`) before the clicks come.
"""

from __future__ import annotations

import numpy as np

from ..geometry import foreground_bounds, ijk_to_ras_points
from ..volume import Grid
from .crop import Crop, centred_crop

SURFACE_SAMPLES = 2 ** 18
"""Voxels of the mask's bounding box read (evenly strided) to find the cells its surface crosses."""


class Lattice:
    """Crop centres ``anchor + n * stride`` (n integer, per axis) for crops of ``crop_size`` voxels
    at ``spacing`` mm on the volume of ``grid``."""

    def __init__(self, grid: Grid, crop_size: int, spacing: float):
        self.crop_size, self.spacing = crop_size, spacing
        self.stride = crop_size // 2 * spacing
        self.anchor = ijk_to_ras_points((np.asarray(grid.shape[::-1], float) - 1) / 2, grid.ijk_to_ras)

    def cell(self, ras) -> np.ndarray:
        """Lattice index (..., 3) of the centre nearest each RAS point (..., 3)."""
        return np.round((np.asarray(ras, dtype=np.float64) - self.anchor) / self.stride)

    def crop(self, index) -> Crop:
        """The crop centred on lattice point ``index``."""
        return centred_crop(self.anchor + np.asarray(index, dtype=np.float64) * self.stride,
                            self.crop_size, self.spacing)

    def nearest(self, ras) -> Crop:
        """The crop a click at ``ras`` is answered in."""
        return self.crop(self.cell(ras))

    def surface_crops(self, mask: np.ndarray, grid: Grid, near) -> list[Crop]:
        """The crops whose cells hold both voxels of ``mask`` ((k, j, i) on ``grid``) and voxels
        outside it, where corrections land, nearest ``near`` (RAS) first; none for an empty mask."""
        bounds = foreground_bounds(mask)
        if bounds is None:
            return []
        low, high = bounds
        step = max(1, int(round((np.prod(high - low + 1.0) / SURFACE_SAMPLES) ** (1 / 3))))
        box = tuple(slice(max(lo - step, 0), hi + step + 1, step) for lo, hi in zip(low, high))
        inside = mask[box] > 0
        kji = np.stack(np.meshgrid(*(np.arange(s.start, min(s.stop, n), step) for s, n in
                                     zip(box, mask.shape)), indexing="ij"), -1).reshape(-1, 3)
        cells = self.cell(ijk_to_ras_points(kji[:, ::-1], grid.ijk_to_ras)).astype(np.int64)
        first = cells.min(axis=0)
        span = tuple(cells.max(axis=0) - first + 1)
        keys = np.ravel_multi_index(tuple((cells - first).T), span)  # one integer per cell
        flat = inside.ravel()
        surface = np.intersect1d(keys[flat], keys[~flat])
        indices = np.stack(np.unravel_index(surface, span), axis=-1) + first
        distances = np.linalg.norm(self.anchor + indices * self.stride - np.asarray(near), axis=-1)
        return [self.crop(indices[i]) for i in np.argsort(distances, kind="stable")]
