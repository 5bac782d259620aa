"""The classical baseline Slicer users have without AI: seeded random walker on the same prompts.

:class:`RandomWalkerSession` has the session methods the protocol uses (``set_image``,
``set_target``, ``add_box``, ``add_point``, ``mask``). A box makes its outside background and a small
ellipsoid at its centre foreground; each click adds a 2-voxel seed ball. The walker runs on the box
(or seeds) plus a margin, subsampled to at most ``max_voxels``.
"""

from __future__ import annotations

import time

import numpy as np
from skimage.segmentation import random_walker

from ..inference.result import Result
from ..modeling.normalization import Normalization
from ..modelspace import continuous_voxel, voxel_of
from ..volume import Volume

FOREGROUND, BACKGROUND = 1, 2


BETA = 20000.0
"""Chosen on training seeds (``ka2er data --train 16``, 2 cases per task, all four sample tasks, mean
Dice after 5 prompts): beta 130 -> 0.641, 1000 -> 0.721, 5000 -> 0.768, 20000 -> 0.777, 80000 -> 0.761."""


class RandomWalkerSession:
    prompt_types = ("point", "box")

    def __init__(self, beta: float = BETA, margin_voxels: int = 6, max_voxels: int = 400_000):
        self.beta, self.margin, self.max_voxels = beta, margin_voxels, max_voxels
        self.targets: dict[str, dict] = {}
        self.target_name = "target"

    def set_image(self, volume: Volume) -> None:
        self.volume = volume
        # The model's own normalisation (a soft-tissue window on CT, z-score on MR), mapped to [0, 1].
        stats = Normalization("auto").statistics(volume.array)
        self.intensity = (Normalization.apply(volume.array, stats) + stats[2]) / (2 * stats[2])
        self.targets.clear()

    def set_target(self, name: str) -> None:
        self.target_name = name

    @property
    def _target(self) -> dict:
        return self.targets.setdefault(self.target_name, {
            "mask": np.zeros(self.volume.shape, np.uint8), "box": None, "points": []})

    @property
    def mask(self) -> np.ndarray:
        return self._target["mask"]

    def add_box(self, corner_a, corner_b) -> Result:
        ijk = continuous_voxel(np.array([corner_a, corner_b]), self.volume)
        self._target["box"] = (np.floor(ijk.min(0)).astype(int)[::-1], np.ceil(ijk.max(0)).astype(int)[::-1])
        return self._run()

    def add_point(self, ras, positive: bool = True) -> Result:
        kji = voxel_of(np.asarray(ras, float), self.volume)
        self._target["points"].append((kji, positive))
        return self._run()

    def _run(self) -> Result:
        start = time.perf_counter()
        target, shape = self._target, np.array(self.volume.shape)
        corners = [p for p, _ in target["points"]]
        if target["box"] is not None:
            corners += list(target["box"])
        lo = np.clip(np.min(corners, axis=0) - self.margin, 0, shape - 1)
        hi = np.clip(np.max(corners, axis=0) + self.margin, 0, shape - 1)
        step = max(1, int(np.ceil((np.prod(hi - lo + 1) / self.max_voxels) ** (1 / 3))))
        region = tuple(slice(a, b + 1, step) for a, b in zip(lo, hi))
        data = self.intensity[region]
        seeds = np.zeros(data.shape, np.int8)
        grid = [np.arange(a, b + 1, step) for a, b in zip(lo, hi)]
        k, j, i = np.meshgrid(*grid, indexing="ij")
        if target["box"] is not None:
            b_lo, b_hi = target["box"]
            inside = (k >= b_lo[0]) & (k <= b_hi[0]) & (j >= b_lo[1]) & (j <= b_hi[1]) \
                & (i >= b_lo[2]) & (i <= b_hi[2])
            seeds[~inside] = BACKGROUND
            centre, radius = (b_lo + b_hi) / 2, np.maximum((b_hi - b_lo) * 0.15, 1)
            core = ((k - centre[0]) / radius[0]) ** 2 + ((j - centre[1]) / radius[1]) ** 2 \
                + ((i - centre[2]) / radius[2]) ** 2 <= 1
            seeds[core] = FOREGROUND
        for point, positive in target["points"]:
            ball = (k - point[0]) ** 2 + (j - point[1]) ** 2 + (i - point[2]) ** 2 <= (2 * step) ** 2
            seeds[ball] = FOREGROUND if positive else BACKGROUND
        if not (seeds == FOREGROUND).any() or not (seeds == BACKGROUND).any():
            labels = np.full(data.shape, FOREGROUND if (seeds == FOREGROUND).any() else BACKGROUND)
        else:
            labels = random_walker(data, seeds, beta=self.beta, mode="cg_j", tol=1e-3)
        coarse = (labels == FOREGROUND).astype(np.uint8)
        full = np.repeat(np.repeat(np.repeat(coarse, step, 0), step, 1), step, 2)
        box = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
        size = tuple(s.stop - s.start for s in box)
        target["mask"][:] = 0
        target["mask"][box] = full[: size[0], : size[1], : size[2]]
        return Result(box, float("nan"), "random walker", (time.perf_counter() - start) * 1000)
