"""Intensity normalisation recorded in a bundle: a CT window or an MR percentile z-score."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

MODALITIES = ("ct", "mr")


def subsample(array: np.ndarray) -> np.ndarray:
    """Every 3rd voxel along each axis, float32, flat: what image statistics are computed on."""
    return np.asarray(array[::3, ::3, ::3], dtype=np.float32).ravel()


def image_modality(array: np.ndarray, sample: Optional[np.ndarray] = None) -> str:
    """"ct" for an image in HU (1st percentile of its :func:`subsample`, or of ``sample`` if
    given, below -500, where air is), else "mr": the rule of the "auto" normalisation, also the
    one a moe gate's members are kept to."""
    sample = subsample(array) if sample is None else sample
    return "ct" if np.percentile(sample, 1) < -500 else "mr"


@dataclass(frozen=True)
class Normalization:
    """``kind`` "ct": clip to [``low``, ``high``] HU and map to [-1, 1]. ``kind`` "mr": z-score with
    the mean and std of foreground voxels (above the 20th percentile), clipped to +-``clip`` sd.
    ``kind`` "auto" (one model for CT and MR): "ct" or "mr" as :func:`image_modality` tells.
    """

    kind: str = "auto"
    low: float = -160.0
    high: float = 240.0
    clip: float = 5.0

    def __post_init__(self):
        if self.kind not in ("ct", "mr", "auto"):
            raise ValueError(f"normalization kind must be 'ct', 'mr' or 'auto', got {self.kind!r}")

    def statistics(self, array: np.ndarray, sample: Optional[np.ndarray] = None
                   ) -> tuple[float, float, float]:
        """(offset, scale, clip) for this image, computed once on its :func:`subsample` (or
        ``sample``, if given)."""
        sample = subsample(array) if sample is None else sample
        kind = image_modality(array, sample) if self.kind == "auto" else self.kind
        if kind == "ct":
            return (self.low + self.high) / 2, (self.high - self.low) / 2, 1.0
        foreground = sample[sample > np.percentile(sample, 20)]
        if foreground.size < 10:
            foreground = sample
        return float(foreground.mean()), float(foreground.std() + 1e-6), self.clip

    @staticmethod
    def apply(values: np.ndarray, stats: tuple[float, float, float]) -> np.ndarray:
        """Normalise ``values`` with an image's statistics -> float32."""
        offset, scale, limit = stats
        return np.clip((values.astype(np.float32) - offset) / scale, -limit, limit)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
