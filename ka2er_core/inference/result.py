"""What a prompt returns, and the prompt checks shared by local and remote sessions (no torch here,
so the server client stays light)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from ..errors import GeometryMismatchError, PromptError
from ..geometry import ras_to_ijk
from ..volume import Volume

Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Result:
    """``region``: the (k, j, i) slices of the volume that were rewritten (None if nothing changed);
    ``score``: predicted IoU; ``expert``: the model that answered; ``latency_ms``: wall time."""

    region: Optional[Region]
    score: float
    expert: str
    latency_ms: float


def check_point(volume: Volume, ras, what: str) -> np.ndarray:
    """``ras`` as 3 finite RAS mm inside ``volume`` (within half a voxel), else :class:`PromptError`."""
    point = np.asarray(ras, dtype=np.float64)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise PromptError(f"{what} must be 3 finite RAS coordinates, got {ras!r}", field=what)
    ijk = ras_to_ijk(point, volume.ijk_to_ras)
    if np.any(ijk < -0.5) or np.any(ijk > np.asarray(volume.shape[::-1]) - 0.5):
        raise PromptError(f"{what} RAS {point.round(2).tolist()} is outside the image "
                          f"(voxel {ijk.round(1).tolist()}, size {volume.shape[::-1]})", field=what)
    return point


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
