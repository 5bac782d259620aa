"""``ka2er train-gate``: the gate of a SAM-Med3D-MoE bundle, every member frozen.

Crops with first prompts (``prompts="first"``, the default: the session routes a target once, at
its first prompt or box) or with first prompts, simulated clicks and damaged masks to correct as for
the general model's training (``prompts="all"``) go to every member; each member's Dice is the
evidence, and the gate learns ``softmax(Dice / temperature)`` by cross-entropy. Running the
members is the whole cost and the gate is tiny, so each scored batch is kept and replayed: a fresh
batch every ``reuse`` steps, a random draw of kept crops in between.
The last training case of each task is held out of gate training; on crops drawn from those cases
the selection threshold is chosen (top-1 member when its probability reaches it, else the general
model) by mean Dice, and stored in the moe bundle. Each task member may answer only on the image
modalities of the tasks it was fine-tuned on (its bundle's ``training.datasets``), in validation
as in the session.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..bundle import BundleError, Segmenter, load_bundle, save_moe_bundle
from ..bundle.schema import GATE_WEIGHTS, check_shared_settings
from ..bundle.store import member_entry
from ..errors import DatasetError
from ..modeling.gate import Gate, route
from ..modeling.protocols import PromptableModel, common_prompt_types
from .loop import LoopConfig, distributed_context, train_loop
from .losses import dice_score
from .promptable import CropSampler, load_training_items, simulate_prompts
from .samples import LabelledImage

THRESHOLDS = tuple(i / 20 for i in range(22))
"""Candidate selection thresholds; 1.05 is never reached: the general model always answers."""
PROMPT_SETS = {"first": {"max_extra_clicks": 0, "correct_probability": 0.0}, "all": {}}
"""The prompts of scored crops as CropSampler settings: none of its simulated clicks or damaged masks
to correct ("first"), or its defaults, those of the general model's training ("all")."""
FORGETTING_LIMIT = 0.005
"""Routing may lower no target's mean validation Dice by more than this (SAM-Med3D-MoE: the general
tasks are not forgotten)."""


class GateLoss(nn.Module):
    """``forward(features, dice) -> (loss, metrics)``: features (B, F) from
    :meth:`~ka2er_core.modeling.gate.Gate.inputs`, dice (B, M) of every member. Metrics: mean Dice of
    the general model, of the gate's top-1 member and of the best member."""

    def __init__(self, gate: Gate, temperature: float):
        super().__init__()
        self.gate = gate
        self.temperature = temperature

    def forward(self, features, dice):
        logits = self.gate(features)
        loss = F.cross_entropy(logits, torch.softmax(dice / self.temperature, dim=1))
        chosen = dice.gather(1, logits.argmax(1, keepdim=True))
        return loss, {"dice_general": dice[:, 0].mean(), "dice_gate": chosen.mean(),
                      "dice_best": dice.max(1).values.mean()}


@torch.no_grad()
def score_members(members: Sequence[PromptableModel], gate: Gate, batch: dict,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate features (B, F) and every member's Dice (B, M) on a :class:`~.promptable.CropSampler`
    batch. The general model (first) simulates the clicks every member then answers."""
    images, truths = batch["images"].to(device), batch["truths"].to(device)
    starts = batch["start_masks"]
    embeddings = [member.embed(images) for member in members]
    coords, labels, previous = simulate_prompts(
        members[0], embeddings[0], truths, batch["coords"].to(device), batch["labels"].to(device),
        None if starts is None else starts.to(device), batch["extra_clicks"])
    dice = torch.stack([dice_score(member.decode(embedding, coords, labels, previous)[0] > 0,
                                   truths > 0.5)
                        for member, embedding in zip(members, embeddings)], dim=1)
    return gate.inputs(members[0], embeddings[0], coords, labels), dice


class ScoredCrops:
    """Batch function for :class:`GateLoss`: every ``reuse`` steps a fresh batch of ``sampler``,
    scored by every (frozen) member and kept; in between, a random draw of the kept crops."""

    def __init__(self, sampler: CropSampler, members: Sequence[PromptableModel], gate: Gate,
                 reuse: int, device: torch.device):
        self.sampler, self.gate, self.reuse, self.device = sampler, gate, reuse, device
        self.members = [member.to(device).eval().requires_grad_(False) for member in members]
        self.features: list[torch.Tensor] = []
        self.dice: list[torch.Tensor] = []
        self.targets: list[str] = []  # "task: target" of each kept crop
        self.modalities: list[str] = []  # its image's modality

    def __call__(self, step: int, rng: np.random.Generator) -> dict:
        if not self.features or step % self.reuse == 0:
            samples, batch = self.sampler.draw(rng)
            features, dice = score_members(self.members, self.gate, batch, self.device)
            self.features.append(features)
            self.dice.append(dice)
            self.targets += [f"{sample.task}: {sample.target}" for sample in samples]
            self.modalities += [sample.source.modality for sample in samples]
            return {"features": features, "dice": dice}
        kept = torch.cat(self.features), torch.cat(self.dice)
        draw = torch.from_numpy(rng.integers(len(kept[0]), size=self.sampler.batch_size))
        return {"features": kept[0][draw], "dice": kept[1][draw]}


def hold_out_last_case(items: Sequence[LabelledImage]) -> tuple[list, list]:
    """(training, validation): the last case of each task is validation; every task needs two."""
    last = {item.task: item for item in items}
    training = [item for item in items if last[item.task] is not item]
    short = sorted(set(last) - {item.task for item in training})
    if short:
        raise DatasetError(f"task {short[0]!r} has one training case; the gate needs two per task "
                           "(it trains on all but the last, which chooses the selection threshold)")
    return training, list(last.values())


@torch.no_grad()
def choose_threshold(gate: Gate, scored: ScoredCrops, crops: int, seed: int) -> tuple[float, dict]:
    """The threshold of :data:`THRESHOLDS` with the best mean Dice of the routed member over
    ``crops`` validation crops (drawn by ``scored``) among those under which no target's mean Dice
    falls more than :data:`FORGETTING_LIMIT` below the general model's (no forgetting); the
    highest of equals. A member that helps one target of many raises the mean by little, so any
    gain counts. Returns it and a summary (mean Dice of the general model, routed and best member;
    share routed to task members; the largest fall of a target's mean Dice)."""
    rng = np.random.default_rng([seed, 1])
    while sum(len(d) for d in scored.dice) < crops:
        scored(0, rng)
    probabilities = torch.softmax(gate(torch.cat(scored.features)[:crops]), dim=1)
    eligible = torch.stack([gate.eligible(modality) for modality in scored.modalities[:crops]])
    dice = torch.cat(scored.dice)[:crops]
    names = np.array(scored.targets[:crops])
    groups = [torch.from_numpy(np.flatnonzero(names == name)) for name in np.unique(names)]
    choices = [route(probabilities, threshold, eligible) for threshold in THRESHOLDS]
    routed = [dice.gather(1, chosen[:, None])[:, 0] for chosen in choices]
    means = [float(r.mean()) for r in routed]
    falls = [max(float(dice[group, 0].mean() - r[group].mean()) for group in groups) for r in routed]
    allowed = [i for i, fall in enumerate(falls) if fall <= FORGETTING_LIMIT]
    top = max(means[i] for i in allowed)
    best = max(i for i in allowed if means[i] == top)
    return THRESHOLDS[best], {"crops": len(dice), "threshold": THRESHOLDS[best],
                              "dice_general": float(dice[:, 0].mean()), "dice_routed": means[best],
                              "dice_best_member": float(dice.max(1).values.mean()),
                              "routed_to_task_members": float((choices[best] > 0).float().mean()),
                              "largest_target_fall": falls[best]}


def scored_crops(segmenters: Sequence[Segmenter], gate: Gate, cases: Sequence[LabelledImage],
                 targets: Sequence, prompts: str, batch_size: int, reuse: int,
                 device: torch.device) -> ScoredCrops:
    """Crops of ``cases`` with ``prompts`` (a :data:`PROMPT_SETS` name), scored by every member;
    first prompts of the kinds every member takes (clicks only when one takes points only)."""
    head = segmenters[0]
    sampler = CropSampler(cases, targets, head.normalization, head.crop_size, head.base_spacing,
                          head.max_spacing, batch_size, **PROMPT_SETS[prompts],
                          prompt_types=common_prompt_types(m.model for m in segmenters))
    return ScoredCrops(sampler, [m.model for m in segmenters], gate, reuse, device)


def select_threshold(gate: Gate, segmenters: Sequence[Segmenter],
                     validation: Sequence[LabelledImage], targets: Sequence, prompts: str,
                     batch_size: int, crops: int, seed: int, device: torch.device,
                     progress=None) -> tuple[float, dict]:
    """:func:`choose_threshold` on ``crops`` crops of the ``validation`` cases (every target drawn
    equally often within its task), scored by the members; the gate is not changed."""
    threshold, selection = choose_threshold(
        gate, scored_crops(segmenters, gate, validation, targets, prompts, batch_size, 1, device),
        crops, seed)
    if progress:
        progress(f"threshold {threshold:.2f}: mean Dice {selection['dice_routed']:.4f} routed, "
                 f"{selection['dice_general']:.4f} general alone ({selection['crops']} crops)")
    return threshold, selection


def moe_members(general: Path, members: Sequence[Path]
                ) -> tuple[list[Segmenter], set[str], dict[str, list[str]]]:
    """The general model (named "general") and each task member (named after its bundle folder),
    checked to be promptable fine-tunes sharing the general model's settings; their labels; and
    each task member's training datasets (from its bundle's ``training.datasets``)."""
    named = {"general": general}
    for path in members:
        if path.name in named or path.name == GATE_WEIGHTS:
            raise BundleError(f"member name {path.name!r} is taken: the general model is "
                              f"'general', members are named after their folders and "
                              f"{GATE_WEIGHTS!r} is reserved", path=path)
        named[path.name] = path
    loaded, labels, datasets = [], set(), {}
    for name, path in named.items():
        bundle = load_bundle(path)
        if not isinstance(bundle.default, Segmenter):
            raise BundleError("not a promptable model (ka2er train or ka2er finetune write those)",
                              path=path, field="kind")
        loaded.append(replace(bundle.default, name=name))
        labels.update(bundle.meta.get("labels", []))
        if name != "general":
            datasets[name] = list(bundle.meta.get("training", {}).get("datasets", []))
    check_shared_settings({m.name: member_entry(m, "") for m in loaded}, None)
    return loaded, labels, datasets


def member_modalities(datasets: Mapping[str, Sequence[str]], items: Sequence[LabelledImage],
                      progress=None) -> dict[str, list[str]]:
    """Task member -> the modalities of the training images of the datasets it was fine-tuned on
    (``datasets``, as :func:`moe_members` reads them); a member none of whose datasets is among
    ``items`` is left out: it may answer on any modality."""
    modalities = {}
    for name, tasks in datasets.items():
        seen = {item.modality for item in items if item.task in tasks}
        if seen:
            modalities[name] = sorted(seen)
        elif progress:
            progress(f"{name}: none of its training datasets {list(tasks)} is given; "
                     "it may answer on any modality")
    return modalities


def train_gate(general: Path, members: Sequence[Path], folders: Sequence, out: Path, *,
               steps: int, batch_size: int = 2, reuse: int = 4, lr: float = 3e-3,
               temperature: float = 0.02, hidden: int = 128, validation_crops: int = 32,
               seed: int = 0, target_weights: Optional[Mapping[str, float]] = None,
               prompts: str = "first", half_members: bool = False, progress=None) -> Path:
    """``ka2er train-gate``: train the gate over the frozen general model and task members on the
    dataset folders' training cases, choose the threshold on held-out ones, write a moe bundle.
    ``target_weights`` (as :func:`~.promptable.load_training_items`) steer the training crops only;
    the threshold is chosen on crops of every target drawn equally often within each task.
    ``prompts``: "first" (crops carry first prompts only) or "all" (also corrective rounds).
    ``half_members``: the bundle stores the task members' weights in float16 (half the size)."""
    if prompts not in PROMPT_SETS:
        raise ValueError(f"prompts must be one of {sorted(PROMPT_SETS)}, not {prompts!r}")
    torch.manual_seed(seed)
    segmenters, labels, datasets = moe_members(Path(general), [Path(m) for m in members])
    head = segmenters[0]
    items, weighted = load_training_items(folders, head.normalization, progress, target_weights)
    training, validation = hold_out_last_case(items)
    rank, _, device = distributed_context()
    gate = Gate.for_model([m.name for m in segmenters], head.model, hidden,
                          modalities=member_modalities(datasets, items, progress))

    loop = LoopConfig(steps=steps, lr=lr, seed=seed, warmup=steps // 10,
                      checkpoint_every=max(10, min(200, steps // 10)))
    training_crops = scored_crops(segmenters, gate, training, weighted, prompts, batch_size, reuse,
                                  device)
    summary = train_loop(GateLoss(gate, temperature), gate, training_crops, loop, Path(out),
                         progress)
    targets = [replace(t, weight=1.0) for t in weighted]
    gate.threshold, selection = select_threshold(gate, segmenters, validation, targets, prompts,
                                                 batch_size, validation_crops, seed, device,
                                                 progress)
    if rank == 0:
        training_meta = {"method": "SAM-Med3D-MoE gate over frozen members, soft Dice targets",
                         "members": {"general": str(general),
                                     **{Path(m).name: str(m) for m in members}},
                         "datasets": [Path(f).name for f in folders], "temperature": temperature,
                         "batch_size": batch_size, "reuse": reuse, "prompts": prompts,
                         **({"member_weights": "float16"} if half_members else {}),
                         "cases": len(training),
                         **({"target_weights": dict(target_weights)} if target_weights else {}),
                         "validation_cases": len(validation), **summary}
        save_moe_bundle(out, segmenters, gate.eval(), labels=sorted(labels | {t.name for t in targets}),
                        training=training_meta, metrics={"gate_selection": selection},
                        member_dtype=torch.float16 if half_members else None)
    return Path(out)
