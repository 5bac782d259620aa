"""Training the general promptable model: iterative click simulation with the previous mask fed back."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ..errors import DatasetError
from ..modeling import ModelConfig, PromptableSegmenter
from ..modeling.normalization import Normalization, image_modality, subsample
from ..modeling.prompt_encoder import NEGATIVE, PAD, POSITIVE
from ..modeling.protocols import Embedding, PromptableModel
from ..modelspace.clicks import first_prompts, next_click, next_stroke
from ..modelspace.strokes import MAX_STROKE_TOKENS
from .loop import LoopConfig, distributed_context, train_loop
from .losses import dice_score, per_item_dice_bce, weighted_mean
from .samples import CropSample, LabelledImage, make_crop_sample
from .soft_labels import ExpertSoftLabels

STROKE_PROBABILITY = 0.12
"""How often a simulated correction is a scribble or lasso instead of a click (with a stroke seed)."""


@dataclass
class TargetSpec:
    """A segmentation target of a task: its name and the label values whose union it is."""

    task: str
    name: str
    values: tuple[int, ...]
    weight: float = 1.0  # relative chance of being drawn among its task's targets


class PromptableStep(nn.Module):
    """``forward(images, truths, coords, labels, start_masks, extra_clicks, drop_previous,
    stroke_seed) -> (loss, metrics)``.

    images, truths (B, 1, S, S, S); coords (B, N, 3) crop-voxel (i, j, k); labels (B, N); start_masks
    (B, 1, S, S, S) or None (a damaged mask to correct); ``extra_clicks`` no-grad rounds of
    predict-then-click before the trained prediction; ``drop_previous``: the trained prediction
    sees the clicks without the previous mask (the model must not lean on it alone); ``stroke_seed``:
    some corrections are scribbles or lassos (:func:`add_clicks`).
    """

    def __init__(self, model: PromptableModel):
        super().__init__()
        self.model = model

    def forward(self, images, truths, coords, labels, start_masks=None, extra_clicks: int = 0,
                drop_previous: bool = False, stroke_seed: Optional[int] = None):
        embedding = self.model.embed(images)
        coords, labels, previous = simulate_prompts(self.model, embedding, truths, coords, labels,
                                                    start_masks, extra_clicks, stroke_seed)
        if drop_previous:
            previous = None
        loss, dice = prompted_loss(self.model, embedding, coords, labels, previous, truths)
        return loss, {"dice": dice.mean().detach()}


def simulate_prompts(model: PromptableModel, embedding: Embedding, truths, coords, labels,
                     start_masks=None, extra_clicks: int = 0, stroke_seed: Optional[int] = None):
    """The prompts and previous mask the trained prediction sees: the first prompts, then (without
    gradient) rounds of predict-then-click at the largest error; a damaged start mask to correct
    begins with a click on its worst error. With ``stroke_seed``, some of those clicks are
    scribbles or lassos (:func:`add_clicks`). Returns (coords (B, N', 3), labels (B, N'), previous
    (B, 1, S, S, S) or None)."""
    truth_np = truths[:, 0].cpu().numpy() > 0.5
    rng = None if stroke_seed is None else np.random.default_rng(stroke_seed)
    previous = start_masks
    if previous is not None:
        coords, labels = add_clicks(coords, labels, previous[:, 0].cpu().numpy() > 0.5, truth_np, rng)
    for _ in range(extra_clicks):
        with torch.no_grad():
            logits, _ = model.decode(embedding.detach(), coords, labels, previous)
        previous = (logits > 0).float()
        coords, labels = add_clicks(coords, labels, previous[:, 0].cpu().numpy() > 0.5, truth_np, rng)
    return coords, labels, previous


def prompted_loss(model: PromptableModel, embedding: Embedding, coords, labels, previous,
                  truths, weights: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice + BCE of the decoded mask plus the IoU head's error, each item's times its weight (B,)
    (default 1); returns (loss, hard Dice (B,))."""
    logits, iou = model.decode(embedding, coords, labels, previous)
    actual = dice_score(logits > 0, truths > 0.5)
    iou_error = (iou - actual.detach()).pow(2)
    return weighted_mean(per_item_dice_bce(logits, truths) + iou_error, weights), actual


def add_clicks(coords: torch.Tensor, labels: torch.Tensor, prediction: np.ndarray, truth: np.ndarray,
               rng: Optional[np.random.Generator] = None):
    """Append the protocol's next click for each item (coords (B, N, 3), labels (B, N); prediction
    and truth bool (B, S, S, S)); with ``rng``, an item's correction is a scribble or lasso of 2 to
    :data:`MAX_STROKE_TOKENS` points (:func:`next_stroke`) with :data:`STROKE_PROBABILITY`. Items with
    fewer new tokens than others, or a perfect mask, are padded with PAD."""
    new = []  # per item: (points (M, 3) (k, j, i), positive), M = 0 when perfect
    for b in range(prediction.shape[0]):
        if rng is not None and rng.random() < STROKE_PROBABILITY:
            correction = next_stroke(prediction[b], truth[b], rng,
                                     int(rng.integers(2, MAX_STROKE_TOKENS + 1)))
        else:
            click = next_click(prediction[b], truth[b])
            correction = None if click is None else (click[0][None], click[1])
        new.append((np.zeros((0, 3)), True) if correction is None else correction)
    width = max(1, *(len(points) for points, _ in new))
    extra = np.zeros((len(new), width, 3))
    extra_labels = np.full((len(new), width), PAD)
    for b, (points, positive) in enumerate(new):
        extra[b, :len(points)] = points[:, ::-1]
        extra_labels[b, :len(points)] = POSITIVE if positive else NEGATIVE
    return (torch.cat([coords, torch.tensor(extra, dtype=coords.dtype, device=coords.device)], 1),
            torch.cat([labels, torch.tensor(extra_labels, dtype=labels.dtype, device=labels.device)], 1))


def damaged(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible wrong mask to correct: eroded or dilated, with a hole and a spurious blob; or, one
    time in three, the part of the truth inside a smaller centred box (what a zoom-out carries over
    from the smaller crop before it)."""
    if rng.random() < 1 / 3:
        half = np.asarray(truth.shape) * rng.uniform(0.2, 0.4)
        centre = np.asarray(truth.shape) / 2
        box = tuple(slice(int(c - h), int(c + h)) for c, h in zip(centre, half))
        mask = np.zeros_like(truth)
        mask[box] = truth[box]
        return mask
    mask = (ndimage.binary_erosion if rng.random() < 0.5 else ndimage.binary_dilation)(
        truth, iterations=int(rng.integers(1, 4)))
    k, j, i = np.indices(truth.shape)
    for value in (False, True):  # a hole inside, then a blob outside
        region = truth if not value else ~truth
        candidates = np.argwhere(region)
        if len(candidates):
            centre = candidates[rng.integers(len(candidates))]
            radius = rng.uniform(2, 6)
            ball = (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 < radius ** 2
            mask = np.where(ball, value, mask)
    return mask


def collate(samples: Sequence[CropSample], rng: np.random.Generator, max_extra_clicks: int,
            correct_probability: float, drop_previous: float = 0.0) -> dict:
    """Stack crop samples into a batch for :class:`PromptableStep`; with probability
    ``drop_previous`` a batch of click rounds drops the previous mask; its stroke seed makes some
    corrections scribbles or lassos."""
    n = max(len(s.labels) for s in samples)
    coords = np.zeros((len(samples), n, 3), np.float32)
    labels = np.full((len(samples), n), PAD, np.int64)
    for b, s in enumerate(samples):
        coords[b, : len(s.labels)], labels[b, : len(s.labels)] = s.coords, s.labels
    truths = np.stack([s.truth for s in samples])[:, None].astype(np.float32)
    batch = {"images": torch.from_numpy(np.stack([s.image for s in samples])[:, None]),
             "truths": torch.from_numpy(truths),
             "coords": torch.from_numpy(coords), "labels": torch.from_numpy(labels),
             "start_masks": None, "extra_clicks": int(rng.integers(0, max_extra_clicks + 1))}
    if rng.random() < correct_probability:
        starts = np.stack([damaged(s.truth > 0.5, rng) for s in samples])[:, None].astype(np.float32)
        batch["start_masks"] = torch.from_numpy(starts)
        batch["extra_clicks"] = 0
    elif drop_previous > 0 and batch["extra_clicks"] > 0:
        batch["drop_previous"] = bool(rng.random() < drop_previous)
    batch["stroke_seed"] = int(rng.integers(2 ** 31))
    return batch


class CropSampler:
    """Draws batches of crops over images and targets, the way the session will see them.

    A target a case leaves unannotated (partially labelled data) is drawn for it only with
    ``soft_labels`` that cover it; its crop's truth is then the soft label (``CropSample.soft``).
    ``prompt_types``: the prompts the model takes (its ``PROMPT_TYPES``). Without "box" every
    target starts with a click, and a target only a box identifies (a region made of other targets,
    see :func:`~ka2er_core.modelspace.clicks.first_prompts`) is not drawn.
    """

    def __init__(self, items: Sequence[LabelledImage], targets: Sequence[TargetSpec],
                 normalization: Normalization, crop_size: int, base_spacing: float,
                 max_spacing: float, batch_size: int, max_extra_clicks: int = 4,
                 correct_probability: float = 0.25, soft_labels: Optional[ExpertSoftLabels] = None,
                 prompt_types: Sequence[str] = ("point", "box")):
        self.items, self.targets = list(items), list(targets)
        self.normalization = normalization
        self.crop = (crop_size, base_spacing, max_spacing)
        self.batch_size = batch_size
        self.max_extra_clicks = max_extra_clicks
        self.correct_probability = correct_probability
        self.soft_labels = soft_labels
        self.first_kinds = frozenset({"click"} | ({"box"} if "box" in prompt_types else set()))
        self._first: dict[int, dict] = {}  # item index -> target name -> first prompts
        self._draw: dict[str, tuple[list[TargetSpec], np.ndarray]] = {}
        for task in {t.task for t in self.targets}:  # per task: its targets, their probabilities
            choices = [t for t in self.targets if t.task == task]
            weights = np.array([t.weight for t in choices])
            self._draw[task] = choices, weights / weights.sum()
        if not any(self.drawable(item, t) for item in self.items for t in self._draw[item.task][0]
                   if t.weight > 0):
            raise DatasetError("no training case annotates a target that may be drawn (see "
                               "annotated_labels and target_weights)", field="annotated_labels")
        if "box" not in self.first_kinds and not any(
                self.first_prompts(index).get(t.name) for index, item in enumerate(self.items)
                for t in self._draw[item.task][0] if t.weight > 0):
            raise DatasetError("the model takes points only, and a click identifies none of the "
                               "targets that may be drawn (each is a region made of others, which "
                               "only a box names)", field="target_weights")

    def drawable(self, item: LabelledImage, target: TargetSpec) -> bool:
        """Whether ``item`` annotates ``target``, or soft labels fill in what it does not."""
        if not set(target.values) & item.unannotated:
            return True
        return self.soft_labels is not None and self.soft_labels.covers(item, target.values)

    def first_prompts(self, index: int) -> dict:
        if index not in self._first:
            item = self.items[index]
            targets = {t.name: t.values for t in self.targets
                       if t.task == item.task and self.drawable(item, t)}
            label = (self.soft_labels.completed_label(item)
                     if item.unannotated and self.soft_labels is not None else item.label.array)
            self._first[index] = {name: kinds & self.first_kinds
                                  for name, kinds in first_prompts(label, targets).items()
                                  if kinds & self.first_kinds}
        return self._first[index]

    def sample(self, rng: np.random.Generator) -> CropSample:
        while True:
            index = int(rng.integers(len(self.items)))
            item = self.items[index]
            choices, probabilities = self._draw[item.task]
            target = choices[rng.choice(len(choices), p=probabilities)]
            first = self.first_prompts(index).get(target.name)
            if first is None:  # absent, or unannotated and not covered
                continue
            probability = (self.soft_labels.probability(item, target.values)
                           if self.soft_labels is not None else None)
            crop = make_crop_sample(item, target.name, target.values, self.normalization, *self.crop,
                                    rng=rng, first=first, probability=probability)
            if crop is not None:
                return crop

    def draw(self, rng: np.random.Generator) -> tuple[list[CropSample], dict]:
        """A batch and the crop samples it stacks (which task and target each crop shows)."""
        samples = [self.sample(rng) for _ in range(self.batch_size)]
        return samples, collate(samples, rng, self.max_extra_clicks, self.correct_probability)

    def __call__(self, step: int, rng: np.random.Generator) -> dict:
        return self.draw(rng)[1]


def load_training_items(folders: Sequence, normalization: Normalization, progress=None,
                        target_weights: Optional[Mapping[str, float]] = None,
                        ) -> tuple[list[LabelledImage], list[TargetSpec]]:
    """Every labelled training case of the dataset folders (with the label values each leaves
    unannotated), and one target per label or region.

    ``target_weights``: target name -> relative chance of being drawn among its task's targets
    (default 1 for every target); a name no dataset has is an error.
    """
    from ..data.msd import load_dataset

    weights = dict(target_weights or {})
    items, targets = [], []
    for folder in folders:
        dataset = load_dataset(folder)
        for name, value in dataset.labels.items():
            targets.append(TargetSpec(dataset.name, name, value if isinstance(value, tuple) else (value,),
                                      weights.get(name, 1.0)))
        for case in dataset.cases:
            images, label = case.load()
            array = images[0].array
            sample = subsample(array)
            items.append(LabelledImage(images[0], label, normalization.statistics(array, sample),
                                       dataset.name, case.unannotated_values,
                                       image_modality(array, sample)))
            if progress:
                progress(f"loaded {dataset.name}/{case.case_id}")
    unknown = sorted(set(weights) - {t.name for t in targets})
    if unknown:
        raise DatasetError(f"no dataset has the target {unknown[0]!r} (targets: "
                           f"{', '.join(sorted({t.name for t in targets}))})", field="target_weights")
    for name, weight in weights.items():
        if not (math.isfinite(weight) and weight >= 0):
            raise DatasetError(f"{name!r}: expected a finite weight >= 0, got {weight}",
                               field="target_weights")
    for task in {t.task for t in targets}:
        if not any(t.weight > 0 for t in targets if t.task == task):
            raise DatasetError(f"every target of {task} has weight 0", field="target_weights")
    return items, targets


def starting_model(config: Optional[ModelConfig], init: Optional[Path],
                   base_spacing: Optional[float] = None, max_spacing: Optional[float] = None):
    """The promptable model to train, as a :class:`~ka2er_core.bundle.Segmenter`: bundle ``init``'s
    first member to fine-tune (its architecture and normalisation win; its crop spacings unless
    given), or a new model of ``config`` (default: tiny) with "auto" normalisation and spacings 1.5
    and 4.0 mm unless given."""
    from ..bundle import BundleError, Segmenter, load_bundle

    if init is None:
        return Segmenter("general", PromptableSegmenter(config or ModelConfig.tiny()),
                         Normalization("auto"), base_spacing or 1.5, max_spacing or 4.0)
    member = load_bundle(init).default
    if not isinstance(member, Segmenter):
        raise BundleError("not a promptable model: nothing to fine-tune", path=init, field="kind")
    return Segmenter("general", member.model.train(), member.normalization,
                     base_spacing or member.base_spacing, max_spacing or member.max_spacing)


def save_student(out: Path, start, folders: Sequence, targets, cases: int, training: dict) -> None:
    """Write the trained :func:`starting_model` as a ``student`` bundle (rank 0 only), with what it
    was trained on."""
    from ..bundle import save_bundle

    rank, _, _ = distributed_context()
    if rank != 0:
        return
    start.model.cpu().eval()
    training = {"datasets": [Path(f).name for f in folders],
                "targets": [f"{t.task}: {t.name}" for t in targets], "cases": cases, **training}
    save_bundle(out, start, kind="student", labels=sorted({t.name for t in targets}),
                training=training)


def train_promptable(folders: Sequence, out: Path, *, steps: int, batch_size: int = 2,
                     config: Optional[ModelConfig] = None, init: Optional[Path] = None,
                     base_spacing: Optional[float] = None, max_spacing: Optional[float] = None,
                     lr: float = 1e-3, seed: int = 0,
                     target_weights: Optional[Mapping[str, float]] = None, progress=None) -> Path:
    """``ka2er train``: train the general promptable model on dataset folders (from scratch, or
    fine-tuning bundle ``init``: plain multi-task training); write a bundle. Spacings as
    :func:`starting_model`; ``target_weights`` as :func:`load_training_items`."""
    torch.manual_seed(seed)
    start = starting_model(config, init, base_spacing, max_spacing)
    items, targets = load_training_items(folders, start.normalization, progress, target_weights)
    prompt_types = start.model.PROMPT_TYPES
    sampler = CropSampler(items, targets, start.normalization, start.crop_size, start.base_spacing,
                          start.max_spacing, batch_size, prompt_types=prompt_types)
    loop = LoopConfig(steps=steps, lr=lr, seed=seed, checkpoint_every=max(10, min(200, steps // 10)))
    summary = train_loop(PromptableStep(start.model), start.model, sampler, loop, Path(out), progress)
    method = "promptable, iterative click simulation" + (
        "" if "box" in prompt_types else ", click-first prompts (the model takes points only)")
    save_student(out, start, folders, targets, len(items),
                 {"method": method + (f", fine-tuned from {init}" if init else ""),
                  "batch_size": batch_size, **({"target_weights": dict(target_weights)}
                                               if target_weights else {}), **summary})
    return Path(out)
