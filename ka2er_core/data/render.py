"""Images rendered from label maps, SynthSeg-style: every contrast, resolution and artefact at random.

Each label gets a random mean and spread (labels of one ``tissue`` class may share them, so that some
borders are invisible, as between two parcels of one cortex); voxels are drawn from that mixture,
textured, blurred (partial volume), multiplied by a bias field, gamma-adjusted and made noisy, and,
for thick slices, averaged along one axis. Output units are MR-like (positive, arbitrary) or CT-like
(HU with air at -1000), so that an image meets the model through the same normalisation as a real one.
MONAI's random transforms do the artefacts; what MONAI lacks (the label-to-intensity mixture, the
per-label texture) is here.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from monai.transforms import (GaussianSmooth, RandAdjustContrast, RandBiasField, RandGaussianNoise,
                              RandRicianNoise)

from .shapes import Canvas


def _seeded(transform, rng: np.random.Generator):
    transform.set_random_state(seed=int(rng.integers(2**31)))
    return transform


def label_means(values: Sequence[int], rng: np.random.Generator,
                tissue: Optional[Mapping[int, int]] = None, share: float = 0.5) -> dict[int, float]:
    """A mean intensity in [0, 1] per label value. Labels mapped to one ``tissue`` class share their
    class's mean (plus a small offset) with probability ``share`` per class, else get their own."""
    tissue = dict(tissue or {})
    class_means = {c: rng.uniform() for c in set(tissue.values())}
    shared = {c: rng.random() < share for c in class_means}
    means = {}
    for value in values:
        c = tissue.get(value)
        if c is not None and shared[c]:
            means[value] = float(np.clip(class_means[c] + rng.normal(0, 0.02), 0, 1))
        else:
            means[value] = float(rng.uniform())
    return means


def render(label: np.ndarray, spacing: Sequence[float], rng: np.random.Generator,
           tissue: Optional[Mapping[int, int]] = None, modality: str = "mr",
           air: Sequence[int] = ()) -> np.ndarray:
    """A float32 image (k, j, i) of ``label`` (k, j, i) on a grid of ``spacing`` (mm along k, j, i).

    ``tissue``: label value -> tissue class (see :func:`label_means`); ``modality`` "mr" (positive
    arbitrary units; labels in ``air`` at 0, as outside a skull-stripped brain) or "ct" (HU from
    about -150 to 450, labels in ``air`` at -1000).
    """
    values = [int(v) for v in np.unique(label)]
    means = label_means(values, rng, tissue)
    spreads = {v: rng.uniform(0.005, 0.08) for v in values}
    lookup_size = max(values) + 1
    mean_lut = np.zeros(lookup_size, np.float32)
    spread_lut = np.zeros(lookup_size, np.float32)
    for v in values:
        mean_lut[v], spread_lut[v] = means[v], spreads[v]
    for v in air:  # dark before the artefacts, so that the tissues' contrast keeps its range
        mean_lut[v] = spread_lut[v] = 0.0
    canvas = Canvas(label.shape, spacing)
    # Texture: each label's spread modulated by a smooth field, plus white noise within the label.
    texture = canvas.field(rng, int(rng.integers(4, 12))) * rng.uniform(0, 1.5)
    image = mean_lut[label] + spread_lut[label] * (texture + rng.standard_normal(label.shape,
                                                                                 np.float32))
    tensor = torch.from_numpy(image.astype(np.float32))[None]
    sigma = rng.uniform(0, 1.2, 3) / np.maximum(np.asarray(spacing) / np.min(spacing), 1)
    if sigma.max() > 0.2:  # partial volume
        tensor = GaussianSmooth(sigma=tuple(float(s) if s > 0.2 else 0.0 for s in sigma))(tensor)
    tensor = _seeded(RandBiasField(degree=3, coeff_range=(0.0, 0.4), prob=0.8), rng)(tensor)
    tensor = tensor.clamp(min=0)
    tensor = tensor / tensor.max().clamp(min=1e-6)
    tensor = _seeded(RandAdjustContrast(prob=0.7, gamma=(0.6, 1.6)), rng)(tensor)
    # Noise relative to the typical intensity (SNR 12 and up), not to the brightest label.
    typical = float(tensor.median().clamp(min=0.05))
    noise = RandRicianNoise if modality == "mr" else RandGaussianNoise
    tensor = _seeded(noise(prob=0.9, std=float(rng.uniform(0.0, 0.08)) * typical), rng)(tensor)
    image = np.asarray(tensor[0], dtype=np.float32)
    if modality == "ct":  # mostly within a soft-tissue window, some labels bone- or fat-like
        image = image * rng.uniform(200, 600) - rng.uniform(50, 150)
        for value in air:
            image[label == value] = -1000 + rng.normal(0, 20, int((label == value).sum()))
        return image.astype(np.float32)
    image = image * 1000
    for value in air:
        image[label == value] = 0.0
    return image.astype(np.float32)


def thick_slices(image: np.ndarray, labels: Mapping[str, np.ndarray], spacing: Sequence[float],
                 axis: int, factor: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """A thick-slice acquisition along ``axis`` (k, j, i): ``factor`` slices averaged into one (the
    image), the middle one kept (each label map); returns image, label maps and the new spacing."""
    count = image.shape[axis] // factor
    spacing = np.asarray(spacing, dtype=np.float64).copy()
    if count < 2:
        return image, dict(labels), spacing
    take = [slice(None)] * 3
    take[axis] = slice(0, count * factor)
    shape = list(image[tuple(take)].shape)
    shape[axis:axis + 1] = [count, factor]
    thick = image[tuple(take)].reshape(shape).mean(axis=axis + 1)
    middle = [slice(None)] * 3
    middle[axis] = slice(factor // 2, count * factor, factor)
    spacing[axis] *= factor
    return (thick.astype(np.float32),
            {name: np.ascontiguousarray(label[tuple(middle)]) for name, label in labels.items()}, spacing)
