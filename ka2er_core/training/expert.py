"""Training a task expert (``ka2er train-expert``): nnU-Net-style patches, Dice + CE, deep supervision.

nnU-Net facts used (Isensee et al., Nature Methods 2021, and its public trainer): the loss is soft
Dice (foreground classes) plus cross-entropy; deep supervision adds the same loss on the decoder's
lower resolutions with weights halving per resolution, normalised to sum to 1; a third of the patches
is forced to contain foreground (a random voxel of a random class present in the case), the others
are drawn uniformly. Spatial and intensity augmentation are left out here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch import nn

from ..data.msd import load_dataset
from ..errors import DatasetError
from ..geometry import resample
from ..modeling.expert import ExpertPlan, TaskExpert
from ..modelspace.preprocessing import image_on_plan_grid
from ..volume import Volume
from .loop import LoopConfig, distributed_context, train_loop
from .planning import fingerprint_cases, load_cases, plan_expert

FOREGROUND_FRACTION = 1 / 3
LOCATIONS_PER_CLASS = 10_000


@dataclass
class PlanGridCase:
    """One training case on the plan grid, padded to at least the patch size.

    ``image`` float32 (k, j, i) normalised; ``classes`` uint8 (k, j, i) class indices (0..N);
    ``locations`` {class: (n, 3) (k, j, i) voxels of that class}, at most ``LOCATIONS_PER_CLASS``.
    """

    image: np.ndarray
    classes: np.ndarray
    locations: dict[int, np.ndarray]


def class_lookup(plan: ExpertPlan) -> np.ndarray:
    """(256,) uint8 table from label value to class index (class c is the c-th label of the plan)."""
    table = np.zeros(256, dtype=np.uint8)
    for index, value in enumerate(plan.labels.values(), start=1):
        table[value] = index
    return table


def prepare_case(image: Volume, label: Volume, plan: ExpertPlan,
                 rng: np.random.Generator) -> PlanGridCase:
    """Resample a case once to the plan grid (image trilinear, labels nearest) and pad it to the patch."""
    grid, array, fill = image_on_plan_grid(image, plan)
    classes = class_lookup(plan)[resample(label.array, label.ijk_to_ras, grid, order=0)]
    padding = [(max(0, p - s) // 2, max(0, p - s) - max(0, p - s) // 2)
               for p, s in zip(plan.patch_size, array.shape)]
    array = np.pad(array, padding, constant_values=fill)
    classes = np.pad(classes, padding)
    locations = {}
    for value in np.unique(classes[classes > 0]):
        voxels = np.argwhere(classes == value)
        if len(voxels) > LOCATIONS_PER_CLASS:
            voxels = voxels[rng.choice(len(voxels), LOCATIONS_PER_CLASS, replace=False)]
        locations[int(value)] = voxels
    return PlanGridCase(array, classes, locations)


class PatchSampler:
    """``(step, rng) -> {"images": (B, 1, *patch) float32, "targets": (B, 1, *patch) int64}``.

    Each patch comes from a random case; with probability ``foreground_fraction`` it is centred on a
    voxel of a random class present in the case (clipped to the case), otherwise placed uniformly.
    """

    def __init__(self, cases: Sequence[PlanGridCase], patch_size: Sequence[int], batch_size: int,
                 foreground_fraction: float = FOREGROUND_FRACTION):
        self.cases = list(cases)
        self.patch = np.asarray(patch_size)
        self.batch_size = batch_size
        self.foreground_fraction = foreground_fraction

    def corner(self, case: PlanGridCase, rng: np.random.Generator) -> np.ndarray:
        """Lowest (k, j, i) voxel of a patch inside ``case``."""
        room = np.asarray(case.image.shape) - self.patch
        if case.locations and rng.random() < self.foreground_fraction:
            voxels = case.locations[list(case.locations)[rng.integers(len(case.locations))]]
            centre = voxels[rng.integers(len(voxels))]
            return np.clip(centre - self.patch // 2, 0, room)
        return np.array([rng.integers(r + 1) for r in room])

    def __call__(self, step: int, rng: np.random.Generator) -> dict:
        images, targets = [], []
        for _ in range(self.batch_size):
            case = self.cases[rng.integers(len(self.cases))]
            lo = self.corner(case, rng)
            window = tuple(slice(a, a + p) for a, p in zip(lo, self.patch))
            images.append(case.image[window])
            targets.append(case.classes[window])
        return {"images": torch.from_numpy(np.stack(images)[:, None]),
                "targets": torch.from_numpy(np.stack(targets)[:, None].astype(np.int64))}


def supervision_weights(outputs: int) -> list[float]:
    """nnU-Net's deep-supervision weights: 1, 1/2, 1/4, ... normalised to sum to 1."""
    weights = np.array([0.5 ** level for level in range(outputs)])
    return (weights / weights.sum()).tolist()


def foreground_dice(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean hard Dice over the foreground classes present in prediction or target (1 if none).

    prediction, target: integer class maps of the same shape.
    """
    scores = []
    for c in range(1, num_classes):
        predicted, true = prediction == c, target == c
        total = predicted.sum() + true.sum()
        if total > 0:
            scores.append(2 * (predicted & true).sum() / total)
    return torch.stack(scores).mean() if scores else torch.ones(())


class ExpertStep(nn.Module):
    """``forward(images, targets) -> (loss, {"dice"})``: images (B, 1, D, H, W) normalised, targets
    (B, 1, D, H, W) class indices; Dice + CE on every deep-supervision output."""

    def __init__(self, model: TaskExpert):
        super().__init__()
        self.model = model
        dice_ce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
        self.loss = DeepSupervisionLoss(dice_ce, weights=supervision_weights(model.supervision_outputs))

    def forward(self, images, targets):
        outputs = self.model(images)  # (B, supervision_outputs, C, D, H, W) in training mode
        loss = self.loss(list(torch.unbind(outputs, dim=1)), targets)
        dice = foreground_dice(outputs[:, 0].detach().argmax(1), targets[:, 0],
                               self.model.plan.num_classes)
        return loss, {"dice": dice}


def train_expert(folder: Union[str, os.PathLike], out: Union[str, os.PathLike], *, steps: int,
                 batch_size: int = 2, size: str = "tiny", lr: float = 3e-3, seed: int = 0,
                 progress=None) -> Path:
    """``ka2er train-expert``: plan, train and write an expert bundle (kind "expert") to ``out``.

    Cases that leave a label unannotated (``annotated_labels``) are left out: an expert's loss would
    read their unannotated labels as background.

    Resumes from ``out/checkpoint``; under ``torchrun`` every rank trains (DDP) and rank 0 writes.
    """
    from ..bundle import Expert, save_bundle

    torch.manual_seed(seed)
    rank, _, _ = distributed_context()
    progress_rank0 = progress if rank == 0 else None
    dataset = load_dataset(folder)
    partial = [case.case_id for case in dataset.cases if case.unannotated_values]
    if partial:  # their unannotated labels would be learnt as background
        if len(partial) == len(dataset.cases):
            raise DatasetError("every training case leaves some label unannotated; an expert needs "
                               "fully labelled cases", path=Path(folder) / "dataset.json",
                               field="annotated_labels")
        dataset = replace(dataset, cases=[c for c in dataset.cases if not c.unannotated_values])
        if progress_rank0:
            progress_rank0(f"left out {len(partial)} partially labelled cases "
                           f"({', '.join(partial[:3])}{', ...' if len(partial) > 3 else ''})")
    loaded = load_cases(dataset, progress_rank0)
    fp = fingerprint_cases(dataset, loaded)
    plan = plan_expert(fp, size)
    if progress_rank0:
        spacing = " x ".join(f"{s:.3g}" for s in plan.spacing)
        progress_rank0(f"plan: spacing {spacing} mm (i, j, k), patch {plan.patch_size} (k, j, i), "
                       f"{len(plan.strides)} stages, filters {plan.filters}, "
                       f"normalisation {plan.normalization['kind']}")
    rng = np.random.default_rng(seed)
    cases = [prepare_case(images[0], label, plan, rng) for images, label in loaded]
    del loaded
    model = TaskExpert(plan)
    loop = LoopConfig(steps=steps, lr=lr, seed=seed, warmup=max(1, min(50, steps // 10)),
                      checkpoint_every=max(10, min(200, steps // 10)))
    summary = train_loop(ExpertStep(model), model, PatchSampler(cases, plan.patch_size, batch_size),
                         loop, Path(out), progress)
    if rank == 0:
        training = {"method": "nnU-Net-style expert: DynUNet, Dice + CE with deep supervision",
                    "dataset": Path(folder).name, "cases": len(cases), "batch_size": batch_size,
                    "size": size, "fingerprint": fp, **summary}
        save_bundle(out, Expert(plan.task, model.cpu().eval()), kind="expert",
                    labels=list(plan.labels), training=training)
    return Path(out)
