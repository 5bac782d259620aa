"""KA2ER training: a promptable student learns from frozen task experts through the amalgamation layer.

Every crop is seen by the student and by every expert (all tasks' images go to all experts). The
student's amalgamated stages (its :class:`~ka2er_core.modeling.protocols.EmbeddingLayout`'s
``amalgamated``) and the experts' encoder stages meet in the
:class:`~ka2er_core.modeling.amalgamation.AmalgamationLayer`, whose output, the gold amalgamated
features, replaces those stages before the student makes its embedding and decodes. The Swin student
amalgamates its three coarsest backbone stages (1/8, 1/16, 1/32 of the crop), each with the experts'
nearest stage; a ViT student (an imported SAM-Med3D) its one token grid, onto which every stage of
every expert is resampled (:func:`~ka2er_core.modeling.amalgamation.expert_sources`). Loss =
prompted segmentation on the gold features + the same on the student's own features + a
distillation term pulling the student's projected features to the gold ones; optionally, on
partially labelled data, soft-label distillation: crops of targets a case leaves unannotated, with
the expert's soft label of them as truth (:mod:`~ka2er_core.training.soft_labels`), their
segmentation losses weighted by ``soft_label_weight``. Only the student and the layer train; the
saved bundle holds the student alone, which runs in
:class:`~ka2er_core.inference.InteractiveSession` with no expert loaded. A points-only student is
trained on click-first prompts only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import crop_grid, resample
from ..modeling import ModelConfig
from ..modeling.amalgamation import AmalgamationLayer, expert_sources
from ..modeling.expert import TaskExpert
from ..modeling.normalization import Normalization
from ..modeling.protocols import PromptableModel
from ..volume import Grid
from .loop import LoopConfig, train_loop
from .promptable import (CropSampler, collate, load_training_items, prompted_loss, save_student,
                         simulate_prompts, starting_model)
from .samples import CropSample
from .soft_labels import ExpertSoftLabels

class AmalgamatedStudent(nn.Module):
    """What trains and is checkpointed: the promptable student and the amalgamation layer."""

    def __init__(self, student: PromptableModel, layer: AmalgamationLayer):
        super().__init__()
        self.student, self.layer = student, layer


class AmalgamationStep(nn.Module):
    """``forward(images, expert_images, expert_ratios, truths, coords, labels, start_masks,
    extra_clicks, soft)``.

    images, truths (B, 1, S, S, S) the student's crops (truths in [0, 1]: soft labels are fine);
    ``expert_images[e][b]`` (1, 1, D, H, W) the region around the same centre, normalised and sampled
    for expert e (sizes may differ per item); ``expert_ratios[e][b]`` (i, j, k) the crop's extent over
    that region's; ``soft`` (B,) bool: items whose truth is an expert's soft label, weighted
    ``soft_label_weight`` in the segmentation losses (None: no such items); the rest as
    :class:`~ka2er_core.training.promptable.PromptableStep`.
    """

    def __init__(self, trainable: AmalgamatedStudent, experts: Sequence[TaskExpert],
                 distill_weight: float = 1.0, soft_label_weight: float = 1.0):
        super().__init__()
        self.trainable = trainable
        self.experts = nn.ModuleList(experts).requires_grad_(False).eval()
        self.scales, self.sources = student_scales(trainable.student, experts)
        self.pool = len(self.scales) == 1  # every expert stage onto one grid: finer ones pooled
        self.distill_weight = distill_weight
        self.soft_label_weight = soft_label_weight

    def train(self, mode: bool = True):
        super().train(mode)
        self.experts.eval()  # frozen: no dropout, no running statistics updates
        return self

    def expert_features(self, expert_images, expert_ratios, student_stages) -> list[list[torch.Tensor]]:
        """Per source (see :func:`student_scales`), its expert's stage for each amalgamated scale,
        sampled on the student's grid of that scale: [source][s] (B, C, Ds, Hs, Ws). Items run one
        by one (their expert grids differ)."""
        sizes = [student_stages[s].shape[2:] for s in self.scales]
        with torch.no_grad():
            per_expert = [[expert.features(image) for image in images]
                          for expert, images in zip(self.experts, expert_images)]
            return [[torch.cat([on_student_grid(item[stage], size, ratio, self.pool)
                                for item, ratio in zip(per_expert[e], expert_ratios[e])])
                     for stage, size in zip(stages, sizes)]
                    for e, stages in self.sources]

    def forward(self, images, expert_images, expert_ratios, truths, coords, labels,
                start_masks=None, extra_clicks: int = 0, soft=None, stroke_seed=None):
        student, layer = self.trainable.student, self.trainable.layer
        stages = student.stages(images)
        amalgamated = layer([stages[s] for s in self.scales],
                            self.expert_features(expert_images, expert_ratios, stages))
        gold_stages = list(stages)
        for s, gold in zip(self.scales, amalgamated.gold):
            gold_stages[s] = gold
        own = student.embed_from_stages(images, stages)
        gold = student.embed_from_stages(images, gold_stages)
        coords, labels, previous = simulate_prompts(student, own, truths, coords, labels,
                                                    start_masks, extra_clicks, stroke_seed)
        label_weights = None if soft is None else \
            torch.where(soft, self.soft_label_weight, 1.0).to(truths.device)
        gold_loss, gold_dice = prompted_loss(student, gold, coords, labels, previous, truths,
                                             label_weights)
        own_loss, own_dice = prompted_loss(student, own, coords, labels, previous, truths,
                                           label_weights)
        distill = layer.distillation_loss(amalgamated)
        weights = torch.cat([w.mean(dim=(0, 1))[None] for w in amalgamated.expert_weights]).mean(0)
        metrics = {"dice": own_dice.mean().detach(), "dice_gold": gold_dice.mean().detach(),
                   "distill": distill.detach(), "task_agnostic_weight": weights[-1].detach()}
        if soft is not None:
            metrics["soft_items"] = soft.float().mean()
        return gold_loss + own_loss + self.distill_weight * distill, metrics


def student_scales(student: PromptableModel, experts: Sequence[TaskExpert]
                   ) -> tuple[tuple[int, ...], list[tuple[int, list[int]]]]:
    """The student's amalgamated stages and the layer's sources: (expert index, its stage per
    amalgamated scale), as :func:`~ka2er_core.modeling.amalgamation.expert_sources` matches them."""
    layout = student.layout
    factors = [layout.stage_factors[s] for s in layout.amalgamated]
    return layout.amalgamated, expert_sources(factors, [e.plan.stage_factors for e in experts])


def on_student_grid(feature: torch.Tensor, size: Sequence[int], ratio: Sequence[float],
                    pool: bool = False) -> torch.Tensor:
    """Sample an expert feature map (1, C, D', H', W') whose grid shares the crop's centre and spans
    1 / ``ratio`` (i, j, k) of the crop's extent, at the voxel centres of the student's (D, H, W) grid.
    ``pool``: first average the map down to about the student grid's cell size where it is finer
    (an expert's full-resolution stage on a ViT's token grid), so that sampling does not alias."""
    if pool:
        cells = [math.ceil(n / float(r)) for n, r in zip(size, list(ratio)[::-1])]  # (D, H, W)
        pooled = [min(have, want) for have, want in zip(feature.shape[2:], cells)]
        if pooled != list(feature.shape[2:]):
            feature = F.adaptive_avg_pool3d(feature, pooled)
    theta = torch.zeros(1, 3, 4, dtype=feature.dtype, device=feature.device)
    theta[0, :, :3] = torch.diag(torch.as_tensor(ratio, dtype=feature.dtype))  # x, y, z = i, j, k
    grid = F.affine_grid(theta, (1, feature.shape[1], *size), align_corners=False)
    return F.grid_sample(feature, grid, mode="bilinear", align_corners=False)


def expert_grid(crop: Grid, plan) -> Grid:
    """The crop's region for an expert: same centre and extent, axis-aligned, at the expert's spacing
    or the crop's if coarser, each axis a multiple of the expert's total stride."""
    crop_spacing = crop.spacing
    spacing = np.maximum(np.asarray(plan.spacing, dtype=float), crop_spacing)  # (i, j, k)
    extent = np.asarray(crop.shape[::-1]) * crop_spacing
    stride = np.asarray(plan.stage_factors[-1][::-1])  # (i, j, k)
    size = np.maximum(np.ceil(extent / spacing / stride), 1).astype(int) * stride
    centre = crop.ijk_to_ras[:3, :3] @ ((np.asarray(crop.shape[::-1]) - 1) / 2) + crop.ijk_to_ras[:3, 3]
    return crop_grid(centre, tuple(int(n) for n in size[::-1]), spacing)


class ExpertView:
    """The image of a crop as one expert sees it (its grid, its normalisation); statistics per
    source image are computed once."""

    def __init__(self, expert: TaskExpert):
        self.plan = expert.plan
        self.normalization = Normalization(**expert.plan.normalization)
        self._stats: dict[int, tuple] = {}

    def __call__(self, sample: CropSample) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (1, 1, D, H, W) for the expert, crop extent / its extent along (i, j, k))."""
        source = sample.source
        key = id(source)
        if key not in self._stats:
            self._stats[key] = self.normalization.statistics(source.image.array)
        grid = expert_grid(sample.grid, self.plan)
        array = resample(source.image.array, source.image.ijk_to_ras, grid, order=1,
                         fill=float(source.image.array.min()))
        ratio = (np.asarray(sample.grid.shape[::-1]) * sample.grid.spacing
                 / (np.asarray(grid.shape[::-1]) * grid.spacing))
        return (torch.from_numpy(self.normalization.apply(array, self._stats[key]))[None, None],
                torch.from_numpy(ratio.astype(np.float32)))


class AmalgamationSampler:
    """The promptable crops of :class:`CropSampler`, each also cut out for every expert; when the
    crops' sampler has soft labels, which items' truths are soft labels."""

    def __init__(self, crops: CropSampler, experts: Sequence[TaskExpert]):
        self.crops = crops
        self.views = [ExpertView(expert) for expert in experts]

    def __call__(self, step: int, rng: np.random.Generator) -> dict:
        samples = [self.crops.sample(rng) for _ in range(self.crops.batch_size)]
        batch = collate(samples, rng, self.crops.max_extra_clicks, self.crops.correct_probability)
        views = [[view(sample) for sample in samples] for view in self.views]
        batch["expert_images"] = [[image for image, _ in per_expert] for per_expert in views]
        batch["expert_ratios"] = [[ratio for _, ratio in per_expert] for per_expert in views]
        if self.crops.soft_labels is not None:
            batch["soft"] = torch.tensor([sample.soft for sample in samples])
        return batch


def amalgamate(folders: Sequence, expert_paths: Sequence, out: Path, *, steps: int,
               batch_size: int = 2, config: Optional[ModelConfig] = None,
               init: Optional[Path] = None, base_spacing: Optional[float] = None,
               max_spacing: Optional[float] = None,
               hidden: int = 64, heads: int = 4, distill_weight: float = 1.0, lr: float = 1e-3,
               seed: int = 0, target_weights: Optional[Mapping[str, float]] = None,
               soft_label_weight: float = 0.0, progress=None) -> Path:
    """``ka2er amalgamate``: train a KA2ER student (from scratch, or from bundle ``init``) with the
    frozen experts of ``expert_paths``; write the student alone as a bundle. ``target_weights`` as
    :func:`~ka2er_core.training.promptable.load_training_items`. ``soft_label_weight`` > 0 also
    trains on the targets partially labelled cases leave unannotated, with their task expert's soft
    labels, at that loss weight (0: such targets are not drawn for those cases)."""
    from ..bundle import load_expert

    if not (math.isfinite(soft_label_weight) and soft_label_weight >= 0):
        raise ValueError(f"soft_label_weight: expected a finite weight >= 0, got {soft_label_weight}")
    torch.manual_seed(seed)
    experts = [load_expert(path) for path in expert_paths]
    start = starting_model(config, init, base_spacing, max_spacing)
    model, normalization = start.model, start.normalization
    items, targets = load_training_items(folders, normalization, progress, target_weights)
    scales, sources = student_scales(model, experts)
    student_channels = [model.layout.stage_channels[s] for s in scales]
    expert_channels = [[experts[e].plan.filters[stage] for stage in stages] for e, stages in sources]
    trainable = AmalgamatedStudent(model, AmalgamationLayer(student_channels, expert_channels,
                                                            hidden=hidden, heads=heads))
    soft_labels = ExpertSoftLabels(experts) if soft_label_weight > 0 else None
    crops = CropSampler(items, targets, normalization, start.crop_size, start.base_spacing,
                        start.max_spacing, batch_size, soft_labels=soft_labels,
                        prompt_types=model.PROMPT_TYPES)
    if progress and soft_labels is not None:
        partial = [item for item in items if item.unannotated]
        covered = sum(all(soft_labels.covers(item, t.values) for t in targets if t.task == item.task)
                      for item in partial)
        progress(f"soft labels (weight {soft_label_weight:g}): {len(partial)} partially labelled "
                 f"cases, {covered} of them covered by their task's expert")
    loop = LoopConfig(steps=steps, lr=lr, seed=seed, checkpoint_every=max(10, min(200, steps // 10)))
    summary = train_loop(AmalgamationStep(trainable, experts, distill_weight, soft_label_weight),
                         trainable, AmalgamationSampler(crops, experts), loop, Path(out), progress)
    save_student(out, start, folders, targets, len(items),
                 {"method": "KA2ER amalgamation: gold-feature and own-feature segmentation, "
                            "feature distillation" + (", expert soft labels" if soft_labels else "")
                            + (f", from {init}" if init else "")
                            + ("" if "box" in model.PROMPT_TYPES else ", click-first prompts"),
                  "amalgamated_scales": len(scales), "amalgamation_sources": len(sources),
                  "experts": [f"{e.plan.task} ({Path(p).name})" for e, p in zip(experts, expert_paths)],
                  "distill_weight": distill_weight, "soft_label_weight": soft_label_weight,
                  "batch_size": batch_size, **summary})
    return Path(out)
