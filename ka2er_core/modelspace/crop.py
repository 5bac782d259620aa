"""Where the model looks: a :class:`Crop`, and the planner that places it.

A crop is an axis-aligned RAS grid of ``crop_size``^3 voxels; its spacing grows with the object so
that a whole brain or liver fits (zoom out), from the bundle's base spacing up to a maximum. Spacings
are quantised to powers of ``ZOOM_STEP`` so that nearby prompts reuse a cached crop. The crop is the
one place where RAS prompts become crop-voxel coordinates (:meth:`Crop.encode`) and where the volume
is sampled for the model (:meth:`Crop.sample`, one fill rule for voxels outside the image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from ..geometry import crop_grid, ras_to_ijk, resample
from ..modeling.normalization import Normalization
from ..modeling.prompt_encoder import (BOX_HIGH, BOX_LOW, FLAT_BOX_HIGH, FLAT_BOX_LOW, NEGATIVE,
                                       POSITIVE)
from ..volume import Grid, Volume
from .prompts import Box, Lasso, Point, Prompt, Scribble
from .strokes import evenly_chosen, polyline_samples

ZOOM_STEP = 1.25
MARGIN = 1.2  # the crop spans the region of interest times this factor


def quantise_spacing(spacing: float, base: float, maximum: float) -> float:
    """Smallest ``base * ZOOM_STEP**n`` >= ``spacing`` (clipped to [base, maximum])."""
    if spacing <= base:
        return base
    n = math.ceil(math.log(spacing / base, ZOOM_STEP) - 1e-9)
    return min(base * ZOOM_STEP ** n, maximum)


@dataclass(frozen=True)
class Crop:
    """A model-space crop: ``grid`` (axis-aligned RAS, isotropic, ``crop_size``^3 voxels)."""

    grid: Grid

    @property
    def spacing(self) -> float:
        return float(self.grid.spacing[0])

    @property
    def size(self) -> int:
        return int(self.grid.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.grid.shape

    @property
    def ijk_to_ras(self) -> np.ndarray:
        return self.grid.ijk_to_ras

    def same_as(self, other: "Crop") -> bool:
        return self.grid.same_as(other.grid)

    def to_crop(self, ras) -> np.ndarray:
        """RAS mm (..., 3) -> continuous crop-voxel (i, j, k)."""
        return ras_to_ijk(np.asarray(ras, dtype=np.float64), self.grid.ijk_to_ras)

    def contains(self, low_ras, high_ras, margin_voxels: float = 2) -> bool:
        """True when the RAS box lies inside the crop with ``margin_voxels`` to spare on every side."""
        lo, hi = self.to_crop(low_ras), self.to_crop(high_ras)
        size = np.asarray(self.grid.shape[::-1])
        return bool(np.all(np.minimum(lo, hi) >= margin_voxels)
                    and np.all(np.maximum(lo, hi) <= size - 1 - margin_voxels))

    def inside(self, ijk: np.ndarray) -> np.ndarray:
        """Which crop-voxel (i, j, k) positions (..., 3) lie inside the crop: bool (...)."""
        return np.all((ijk >= 0) & (ijk <= np.asarray(self.grid.shape[::-1]) - 1), axis=-1)

    def holds(self, prompt: Prompt) -> bool:
        """Whether the point (or both box corners, or any point of a scribble or lasso) lies inside
        the crop."""
        inside = self.inside(self.to_crop(np.array(prompt.corners)))
        return bool(inside.all() if isinstance(prompt, Box) else inside.any())

    def stroke_tokens(self, prompt: Union[Scribble, Lasso]) -> np.ndarray:
        """Crop-voxel (i, j, k) point tokens (M, 3), M <= MAX_STROKE_TOKENS, of a scribble (evenly
        spaced along its part inside the crop) or a lasso (its seeds inside the crop)."""
        if isinstance(prompt, Scribble):
            samples = polyline_samples(self.to_crop(prompt.points))
            return evenly_chosen(samples[self.inside(samples)])
        seeds = self.to_crop(prompt.seeds)
        return seeds[self.inside(seeds)]

    def encode(self, prompts: Sequence[Prompt]) -> tuple[np.ndarray, list[int]]:
        """Crop-voxel (i, j, k) coordinates (N, 3) and prompt-kind labels (N,) of the prompts: a
        point is one token, a box two (its low and high corners); a box less than one crop voxel
        thick along an axis is a 2D box; a scribble or lasso is a few point tokens
        (:meth:`stroke_tokens`)."""
        coords, labels = [], []
        for prompt in prompts:
            if isinstance(prompt, Point):
                coords.append(self.to_crop(prompt.ras))
                labels.append(POSITIVE if prompt.positive else NEGATIVE)
            elif isinstance(prompt, (Scribble, Lasso)):
                tokens = self.stroke_tokens(prompt)
                coords += list(tokens)
                labels += [POSITIVE if prompt.positive else NEGATIVE] * len(tokens)
            else:
                lo, hi = self.to_crop(prompt.low), self.to_crop(prompt.high)
                flat = np.any(np.abs(hi - lo) < 1.0)
                coords += [np.minimum(lo, hi), np.maximum(lo, hi)]
                labels += [FLAT_BOX_LOW, FLAT_BOX_HIGH] if flat else [BOX_LOW, BOX_HIGH]
        return np.array(coords), labels

    def sample(self, volume: Volume, normalization: Normalization, stats, fill: float) -> np.ndarray:
        """The volume seen through the crop (trilinear; ``fill`` outside the image, see
        :func:`~ka2er_core.modelspace.preprocessing.outside_value`), normalised: float32 (k, j, i)."""
        image = resample(volume.array, volume.ijk_to_ras, self.grid, order=1, fill=fill)
        return normalization.apply(image, stats)

    def resample(self, array: np.ndarray, source: Grid, *, order: int, fill: float = 0.0) -> np.ndarray:
        """``array`` on grid ``source`` (a volume's or another crop's) sampled on this crop."""
        return resample(array, source.ijk_to_ras, self.grid, order=order, fill=fill)


def plan_crop(low_ras: np.ndarray, high_ras: np.ndarray, crop_size: int, base_spacing: float,
              max_spacing: float) -> Crop:
    """An isotropic crop covering the RAS box [low, high] with a margin, at a quantised spacing."""
    extent = float(np.max(high_ras - low_ras))
    spacing = quantise_spacing(extent * MARGIN / (crop_size - 1), base_spacing, max_spacing)
    centre = (np.asarray(low_ras) + np.asarray(high_ras)) / 2
    # Snap the centre to the spacing so that close prompts give the same crop.
    centre = np.round(centre / (spacing * 4)) * spacing * 4
    return centred_crop(centre, crop_size, spacing)


def centred_crop(centre_ras, crop_size: int, spacing: float) -> Crop:
    """The crop of ``crop_size``^3 voxels at ``spacing`` centred on a RAS point."""
    return Crop(crop_grid(centre_ras, (crop_size,) * 3, (spacing,) * 3))
