"""Seeded smooth random fields for deformations and bias fields."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], control_points: int = 5) -> np.ndarray:
    """A smooth random field of ``shape`` in [-1, 1]-ish: cubic interpolation of a coarse normal grid."""
    coarse = rng.normal(size=(control_points,) * len(shape))
    zoom = [n / control_points for n in shape]
    field = ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)
    return field[tuple(slice(0, n) for n in shape)].astype(np.float32)
