"""RAS points as voxels of a volume: the model space's helper for code that meets a volume without a
crop (prompt checks, the classical baseline, the demo's printout). numpy only, so that the server
client, which checks prompts, needs no torch."""

from __future__ import annotations

import numpy as np

from ..geometry import ras_to_ijk


def continuous_voxel(ras, grid) -> np.ndarray:
    """(..., 3) RAS mm -> (..., 3) continuous voxel indices (i, j, k) of ``grid`` (a
    :class:`~ka2er_core.volume.Grid`, a :class:`~ka2er_core.volume.Volume` or anything with an
    ``ijk_to_ras``), voxel centres at integers."""
    return ras_to_ijk(ras, grid.ijk_to_ras)


def voxel_of(ras, grid) -> np.ndarray:
    """The (k, j, i) array index (integers) of the voxel of ``grid`` nearest to each RAS point."""
    return np.round(continuous_voxel(ras, grid)).astype(int)[..., ::-1]
