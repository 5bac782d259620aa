"""Training crops built the way the session builds them (same crop planner, same prompts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..geometry import foreground_bounds, ijk_box_to_ras, ijk_to_ras_points
from ..modeling.normalization import Normalization
from ..modelspace import Box, Crop, Point, plan_crop
from ..modelspace.clicks import component_centre, jittered_box
from ..modelspace.preprocessing import outside_value
from ..volume import Grid, Volume


@dataclass
class LabelledImage:
    """An image, its label map (same grid) and its normalisation statistics; ``unannotated``: the
    label values the case leaves unknown (partially labelled data); ``modality``: "ct" or "mr" as
    :func:`~ka2er_core.modeling.normalization.image_modality` tells ("" if not known)."""

    image: Volume
    label: Volume
    stats: tuple[float, float]
    task: str = ""
    unannotated: frozenset[int] = frozenset()
    modality: str = ""


@dataclass
class CropSample:
    """One training crop: ``image`` (S, S, S) normalised, ``truth`` (S, S, S) bool (float32
    probabilities when ``soft``: a soft label from an expert), axes (k, j, i); first prompt as
    crop-voxel (i, j, k) ``coords`` (N, 3) with prompt-kind ``labels`` (N,); the crop's ``grid`` in
    RAS and the ``source`` image it was cut from (for models that see the same region differently,
    like the amalgamation's experts)."""

    image: np.ndarray
    truth: np.ndarray
    coords: np.ndarray
    labels: np.ndarray
    task: str
    target: str
    grid: Optional[Grid] = None
    source: Optional[LabelledImage] = None
    soft: bool = False


def make_crop_sample(item: LabelledImage, target: str, values: Sequence[int], normalization: Normalization,
                     crop_size: int, base_spacing: float, max_spacing: float,
                     rng: np.random.Generator, box_probability: float = 0.5,
                     first: frozenset = frozenset({"box", "click"}),
                     probability: Optional[np.ndarray] = None) -> Optional[CropSample]:
    """A crop around one target (the union of label ``values``), or None if the target is absent.

    ``probability``: the target's soft truth (k, j, i) on the image's grid, instead of the label map
    (prompts and crop follow where it is > 0.5; the crop's truth is it, resampled trilinearly).

    ``first``: the first prompts that identify the target (see
    :func:`~ka2er_core.training.clicks.first_prompts`). When both do, with ``box_probability`` the
    first prompt is a jittered box and the crop is planned around it (as the session does for a box);
    otherwise it is a click at the centre of the largest component and
    the crop is either planned at the base spacing around the click or zoomed out to the whole
    object (the two regimes of the session's zoom-out).
    """
    volume = item.image
    truth_full = np.isin(item.label.array, values) if probability is None else probability > 0.5
    if not truth_full.any():
        return None
    use_box = "box" in first and ("click" not in first or rng.random() < box_probability)
    if use_box:
        lo, hi = jittered_box(truth_full, rng)
        if rng.random() < 0.2:  # a 2D box on one slice through the object
            axis = rng.integers(3)
            lo[axis] = hi[axis] = round(rng.uniform(lo[axis] + 0.3 * (hi[axis] - lo[axis]),
                                                    hi[axis] - 0.3 * (hi[axis] - lo[axis])))
        box_low, box_high = ijk_box_to_ras(lo[::-1], hi[::-1], volume.ijk_to_ras)
        crop = plan_crop(box_low, box_high, crop_size, base_spacing, max_spacing)
    else:
        centre, _ = component_centre(truth_full)
        click = ijk_to_ras_points(centre[::-1].astype(float), volume.ijk_to_ras)
        if rng.random() < 0.5:
            crop = plan_crop(click, click, crop_size, base_spacing, max_spacing)
        else:
            lo, hi = foreground_bounds(truth_full)
            low, high = ijk_box_to_ras(lo[::-1], hi[::-1], volume.ijk_to_ras)
            crop = plan_crop(np.minimum(low, click), np.maximum(high, click), crop_size,
                             base_spacing, max_spacing)
    # Scale jitter: the same object seen at slightly different zooms.
    jitter = np.exp(rng.uniform(-0.1, 0.1))
    matrix = crop.ijk_to_ras.copy()
    centre_ras = ijk_to_ras_points(np.full(3, (crop_size - 1) / 2), matrix)
    matrix[:3, :3] *= jitter
    matrix[:3, 3] = centre_ras - matrix[:3, :3] @ np.full(3, (crop_size - 1) / 2)
    crop = Crop(Grid(crop.grid.shape, matrix))

    image = crop.sample(volume, normalization, item.stats, outside_value(volume.array))
    image = image * np.exp(rng.uniform(-0.1, 0.1)) + rng.uniform(-0.1, 0.1)  # intensity jitter
    if probability is None:
        truth = crop.resample(truth_full.astype(np.uint8), volume.grid, order=0) > 0
    else:
        truth = crop.resample(probability, volume.grid, order=1, fill=0.0).astype(np.float32)
    if not (truth > 0.5).any():
        return None
    coords, labels = crop.encode([Box(box_low, box_high) if use_box else Point(click)])
    return CropSample(image.astype(np.float32), truth, coords.astype(np.float32), np.array(labels),
                      item.task, target, crop.grid, item, soft=probability is not None)
