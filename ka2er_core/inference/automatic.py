"""Automatic segmentation with a task expert: no prompts, a label map on the volume's own grid.

As nnU-Net predicts (Isensee et al., Nature Methods 2021): sliding windows of the training patch size
overlapping by half, each weighted by a Gaussian (sigma 1/8 of the patch) that trusts its centre most.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional, Union

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from ..bundle import Expert
from ..geometry import resample
from ..modeling.expert import TaskExpert
from ..modelspace.preprocessing import image_on_plan_grid
from ..volume import Grid, Volume
from .session import pick_device

OVERLAP = 0.5


def window_count(shape, patch_size, overlap: float = OVERLAP) -> int:
    """Windows ``sliding_window_inference`` runs over an image of ``shape`` (k, j, i)."""
    count = 1
    for size, patch in zip(shape, patch_size):
        step = max(1, int(patch * (1 - overlap)))
        count *= 1 if size <= patch else math.ceil((size - patch) / step) + 1
    return count


def plan_grid_probabilities(model: TaskExpert, volume: Volume,
                            progress: Optional[Callable[[str], None]] = None
                            ) -> tuple[Grid, np.ndarray]:
    """Softmax probabilities (num_classes, k, j, i) float32 of ``model`` (in eval mode, on its own
    device) over ``volume`` resampled to the plan's canonical grid, from Gaussian-weighted sliding
    windows; and that grid."""
    plan = model.plan
    device = next(model.parameters()).device
    grid, array, fill = image_on_plan_grid(volume, plan)
    total = window_count(grid.shape, plan.patch_size)
    if progress:
        spacing = " x ".join(f"{s:.3g}" for s in plan.spacing)
        progress(f"plan grid {grid.shape} (k, j, i) at {spacing} mm: {total} windows")
    done = 0

    def predict(patches: torch.Tensor) -> torch.Tensor:
        nonlocal done
        done += patches.shape[0]
        if progress and (done % max(1, total // 10) == 0 or done == total):
            progress(f"window {done}/{total}")
        return model(patches)

    image = torch.from_numpy(array)[None, None].to(device)
    with torch.inference_mode():
        logits = sliding_window_inference(image, plan.patch_size, 1, predict, overlap=OVERLAP,
                                          mode="gaussian", cval=fill)
        return grid, torch.softmax(logits[0].float(), dim=0).cpu().numpy()


def segment_automatic(expert: Union[Expert, TaskExpert], volume: Volume,
                      device: Union[str, torch.device] = "cpu",
                      progress: Optional[Callable[[str], None]] = None) -> Volume:
    """Segment ``volume`` with ``expert`` (put on ``device`` in eval mode) -> uint8 label map.

    The image is resampled to the plan's canonical grid and normalised; softmax probabilities
    (num_classes, k, j, i) from Gaussian-weighted sliding windows are resampled (trilinear) to the
    volume's own (k, j, i) grid, class by class, and the most probable class wins. The result holds
    the plan's label values and has ``labels`` = ``plan.labels``; any orientation (oblique, flipped)
    works.
    """
    model = expert.model if isinstance(expert, Expert) else expert
    plan = model.plan
    model.to(pick_device(device)).eval()
    start = time.perf_counter()
    grid, probabilities = plan_grid_probabilities(model, volume, progress)
    best = resample(probabilities[0], grid.ijk_to_ras, volume.grid, order=1, fill=1.0)
    classes = np.zeros(volume.shape, dtype=np.uint8)
    for c in range(1, plan.num_classes):
        probability = resample(probabilities[c], grid.ijk_to_ras, volume.grid, order=1, fill=0.0)
        better = probability > best
        classes[better] = c
        np.maximum(best, probability, out=best)
    values = np.array([0, *plan.labels.values()], dtype=np.uint8)
    if progress:
        progress(f"segmented in {time.perf_counter() - start:.1f} s")
    return volume.with_array(values[classes], dict(plan.labels))
