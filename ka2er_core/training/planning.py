"""nnU-Net-like planning of a task expert from its dataset's fingerprint.

Facts of nnU-Net (Isensee et al., Nature Methods 2021, and its public v1/v2 planners) used here, in
our own implementation:

- The fingerprint holds each case's spacing and shape and intensities sampled from foreground voxels
  (10,000 per case); CT is normalised with the 0.5 and 99.5 percentiles of those foreground
  intensities over the whole training set, every other modality per image (z-score).
- The target spacing is the median spacing of the training cases.
- The patch starts from the median image shape at the target spacing and is shrunk until the network
  fits the memory budget, aiming at a field of view that is isotropic in millimetres (v2 starts from a
  patch proportional to 1/spacing, clipped to the median shape).
- An axis is pooled (stride 2) while its feature map is at least 8 voxels, so it ends at about 4, and
  only while its spacing is less than twice the finest spacing among the poolable axes; at most 5
  poolings per axis (v1). Each axis of the patch is a multiple of its total stride.
- Convolutions have kernel size 1 along an axis whose spacing is at least twice the finest, until
  pooling of the finer axes brings it within a factor 2; from then on 3.
- Feature maps: 32 in the first stage, doubling per stage, at most 320 in 3D.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from ..data.msd import Dataset, load_dataset
from ..errors import DatasetError
from ..geometry import orientation_code
from ..modeling.expert import ExpertPlan
from ..modeling.normalization import Normalization
from ..volume import Volume

PATCH_VOXELS = {"tiny": 48 ** 3, "full": 128 ** 3}
"""Voxel budget of a training patch: ``tiny`` trains on a 2-core CPU, ``full`` is nnU-Net's usual
3D patch size on a GPU."""
FILTERS = {"tiny": (8, 64), "full": (32, 320)}
"""(first stage, cap) of the feature maps per stage, doubling in between."""
MIN_FEATURE_MAP = 4
MAX_POOLINGS_PER_AXIS = 5
ANISOTROPY_RATIO = 2.0
FOREGROUND_SAMPLES_PER_CASE = 10_000
RAS_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}

LoadedCase = tuple[list[Volume], Volume]


def canonical_spacing_and_shape(image: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Spacing (mm along R, A, S) and shape (along S, A, R, i.e. canonical (k, j, i)) of a volume.

    Each voxel axis counts for the RAS axis it is most parallel to (``orientation_code``), so a
    sagittal or oblique acquisition gets the spacing it has, not the one of its voxel order.
    """
    spacing, shape = np.empty(3), np.empty(3)
    for axis, letter in enumerate(orientation_code(image.ijk_to_ras)):
        spacing[RAS_AXIS[letter]] = image.spacing[axis]
        shape[RAS_AXIS[letter]] = image.shape[2 - axis]
    return spacing, shape[::-1]


def modality_of(channel_name: str) -> str:
    """Modality of a channel: "CT" when it is named CT (nnU-Net's rule for CT normalisation), else
    "MR"."""
    return "CT" if channel_name.strip().upper() == "CT" else "MR"


def fingerprint_cases(dataset: Dataset, cases: Sequence[LoadedCase]) -> dict:
    """The fingerprint of loaded cases ((images, label) from ``Case.load``) of ``dataset``.

    JSON-able: ``task``, ``channel``, ``modality`` ("CT" or "MR"), ``labels`` (plain labels; regions
    left out: an expert predicts exclusive classes), ``cases``, per-case ``spacings`` (mm along R, A, S)
    and ``shapes`` (canonical (k, j, i)), their medians ``spacing`` and ``shape`` (the latter at the
    median spacing), and ``foreground_intensity`` (percentiles 0.5, 50, 99.5, mean, std).
    """
    if len(dataset.channel_names) != 1:
        raise DatasetError(f"an expert takes one channel, the dataset has {len(dataset.channel_names)}"
                           f" ({dataset.channel_names}); split the task by channel",
                           path=dataset.root / "dataset.json", field="channel_names")
    labels = {name: value for name, value in dataset.labels.items() if isinstance(value, int)}
    if not labels:
        raise DatasetError("no plain labels to train an expert on", path=dataset.root / "dataset.json",
                           field="labels")
    rng = np.random.default_rng(0)
    spacings, shapes, samples = [], [], []
    for images, label in cases:
        spacing, shape = canonical_spacing_and_shape(images[0])
        spacings.append(spacing)
        shapes.append(shape)
        foreground = images[0].array[label.array > 0]
        if foreground.size:
            count = min(FOREGROUND_SAMPLES_PER_CASE, foreground.size)
            samples.append(rng.choice(foreground, count, replace=False).astype(np.float64))
    if not samples:
        raise DatasetError("no foreground voxels in any label map", path=dataset.root / "labelsTr")
    median_spacing = np.median(spacings, axis=0)
    sizes_at_median = [shape * spacing[::-1] / median_spacing[::-1]
                       for shape, spacing in zip(shapes, spacings)]
    intensities = np.concatenate(samples)
    p05, p50, p995 = np.percentile(intensities, [0.5, 50, 99.5])
    return {
        "task": dataset.name,
        "channel": dataset.channel_names[0],
        "modality": modality_of(dataset.channel_names[0]),
        "labels": labels,
        "cases": len(cases),
        "spacings": [s.tolist() for s in spacings],
        "shapes": [s.astype(int).tolist() for s in shapes],
        "spacing": median_spacing.tolist(),
        "shape": np.median(sizes_at_median, axis=0).tolist(),
        "foreground_intensity": {"p0.5": float(p05), "p50": float(p50), "p99.5": float(p995),
                                 "mean": float(intensities.mean()), "std": float(intensities.std())},
    }


def load_cases(dataset: Dataset, progress=None) -> list[LoadedCase]:
    """Every training case of ``dataset`` read into memory (images, label)."""
    cases = []
    for case in dataset.cases:
        cases.append(case.load())
        if progress:
            progress(f"loaded {dataset.name}/{case.case_id}")
    return cases


def fingerprint(folder: Union[str, os.PathLike]) -> dict:
    """Read every training case of a dataset folder and return its fingerprint
    (see :func:`fingerprint_cases`)."""
    dataset = load_dataset(folder)
    return fingerprint_cases(dataset, load_cases(dataset))


def topology(patch: np.ndarray, spacing: np.ndarray) -> tuple[list[tuple], list[tuple]]:
    """Kernel sizes and strides per stage, (k, j, i), for a patch (k, j, i) at ``spacing`` (k, j, i)."""
    size, current = patch.astype(float), spacing.astype(float)
    poolings = np.zeros(3, dtype=int)
    kernel = np.ones(3, dtype=int)
    kernels, strides = [], [(1, 1, 1)]
    while True:
        kernel[current / current.min() < ANISOTROPY_RATIO] = 3  # once 3, stays 3
        kernels.append(tuple(int(k) for k in kernel))
        poolable = (size >= 2 * MIN_FEATURE_MAP) & (poolings < MAX_POOLINGS_PER_AXIS)
        if not poolable.any():
            return kernels, strides
        poolable &= current / current[poolable].min() < ANISOTROPY_RATIO
        stride = np.where(poolable, 2, 1)
        strides.append(tuple(int(s) for s in stride))
        poolings += poolable
        size, current = size / stride, current * stride


def isotropic_patch(median_shape: np.ndarray, spacing: np.ndarray, budget: int) -> np.ndarray:
    """Largest patch (k, j, i) of at most ``budget`` voxels, isotropic in mm, clipped to the median
    shape; the room left by clipped axes goes to the others."""
    patch = np.zeros(3)
    free = np.ones(3, dtype=bool)
    while free.any():
        fixed = np.prod(patch[~free])
        side_mm = (budget / fixed * np.prod(spacing[free])) ** (1 / free.sum())
        patch[free] = side_mm / spacing[free]
        clipped = free & (patch > median_shape)
        if not clipped.any():
            break
        patch[clipped] = median_shape[clipped]
        free &= ~clipped
    return patch


def plan_expert(folder_or_fingerprint: Union[str, os.PathLike, dict], size: str = "tiny") -> ExpertPlan:
    """An :class:`ExpertPlan` from a dataset folder or its :func:`fingerprint`.

    ``size`` "tiny" (CPU: patch of at most 48^3 voxels, 8 to 64 feature maps) or "full" (GPU: 128^3,
    32 to 320 as in nnU-Net). Spacing: the median; patch, kernels and strides as in the module notes.
    """
    if size not in PATCH_VOXELS:
        raise ValueError(f"size must be one of {sorted(PATCH_VOXELS)}, got {size!r}")
    fp = folder_or_fingerprint
    if not isinstance(fp, dict):
        fp = fingerprint(Path(fp))
    spacing_kji = np.asarray(fp["spacing"], dtype=float)[::-1]
    median_shape = np.maximum(np.asarray(fp["shape"], dtype=float), 1)
    patch = np.floor(isotropic_patch(median_shape, spacing_kji, PATCH_VOXELS[size]))
    patch = np.maximum(patch, 1)
    kernels, strides = topology(patch, spacing_kji)
    if len(strides) < 3:
        raise DatasetError(f"images of median shape {median_shape.astype(int).tolist()} (k, j, i) are "
                           "too small for a U-Net: need at least two poolings (8 voxels on an axis)",
                           field="shape")
    total = np.prod(strides, axis=0)
    patch = (patch // total) * total
    first, cap = FILTERS[size]
    filters = tuple(min(first * 2 ** stage, cap) for stage in range(len(strides)))
    intensity = fp["foreground_intensity"]
    if fp["modality"] == "CT":
        low, high = intensity["p0.5"], intensity["p99.5"]
        normalization = Normalization("ct", low=low, high=max(high, low + 1.0))
    else:
        normalization = Normalization("mr")
    return ExpertPlan(task=fp["task"], labels=dict(fp["labels"]), spacing=tuple(fp["spacing"]),
                      patch_size=tuple(int(p) for p in patch), kernel_sizes=tuple(kernels),
                      strides=tuple(strides), filters=filters,
                      normalization=normalization.to_dict())
