"""Preprocessing outside the networks (MONAI's split): what the image looks like where the model's grid
leaves the volume, and a volume on an expert plan's grid, normalised."""

from __future__ import annotations

import numpy as np

from ..geometry import canonical_grid, resample
from ..modeling.expert import ExpertPlan
from ..modeling.normalization import Normalization
from ..volume import Grid, Volume


def outside_value(array: np.ndarray) -> float:
    """The intensity given to voxels outside the image (its minimum: air in CT, background in MR);
    the one fill rule of crops, training samples and sliding windows."""
    return float(np.min(array))


def image_on_plan_grid(volume: Volume, plan: ExpertPlan) -> tuple[Grid, np.ndarray, float]:
    """``volume`` resampled (trilinear) to the plan's canonical grid covering it, and normalised.

    The grid is ``canonical_grid`` grown by one voxel on every side, so that every voxel centre of
    ``volume`` lies strictly inside it and probabilities sampled back (trilinear) never fall off an
    edge by round-off. Returns the grid, the float32 (k, j, i) array, and the normalised value of
    voxels outside the volume (its minimum intensity), which is also what patches are padded with.
    """
    covering = canonical_grid(volume.grid, plan.spacing)
    matrix = covering.ijk_to_ras.copy()
    matrix[:3, 3] -= plan.spacing
    grid = Grid(tuple(n + 2 for n in covering.shape), matrix)
    normalization = Normalization(**plan.normalization)
    stats = normalization.statistics(volume.array)
    fill = outside_value(volume.array)
    array = resample(volume.array, volume.ijk_to_ras, grid, order=1, fill=fill)
    normalised_fill = float(Normalization.apply(np.float32(fill), stats))
    return grid, Normalization.apply(array, stats), normalised_fill
