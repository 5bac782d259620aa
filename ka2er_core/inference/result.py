"""What a prompt returns, and the prompt checks shared by local and remote sessions (no torch here,
so the server client stays light)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import PromptError
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
