"""Intensity normalisation recorded in a bundle: a CT window or an MR percentile z-score."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """``kind`` "ct": clip to [``low``, ``high``] HU and map to [-1, 1]. ``kind`` "mr": z-score with
    the mean and std of foreground voxels (above the 20th percentile), clipped to +-``clip`` sd.
    """

    kind: str = "mr"
    low: float = -160.0
    high: float = 240.0
    clip: float = 5.0

    def __post_init__(self):
        if self.kind not in ("ct", "mr"):
            raise ValueError(f"normalization kind must be 'ct' or 'mr', got {self.kind!r}")

    def statistics(self, array: np.ndarray) -> tuple[float, float]:
        """(offset, scale) for this image; computed once per image on a subsample (every 3rd voxel)."""
        if self.kind == "ct":
            return (self.low + self.high) / 2, (self.high - self.low) / 2
        sample = np.asarray(array[::3, ::3, ::3], dtype=np.float32).ravel()
        foreground = sample[sample > np.percentile(sample, 20)]
        if foreground.size < 10:
            foreground = sample
        return float(foreground.mean()), float(foreground.std() + 1e-6)

    def apply(self, values: np.ndarray, stats: tuple[float, float]) -> np.ndarray:
        offset, scale = stats
        limit = 1.0 if self.kind == "ct" else self.clip
        return np.clip((values.astype(np.float32) - offset) / scale, -limit, limit)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
