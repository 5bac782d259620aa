"""The targets (segments) of a session: each one's mask, prompts and undo history.

Every change returns the (k, j, i) region of the volume it rewrote (None: nothing changed), so that
a viewer redraws only that; undo restores exactly what a change overwrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

import numpy as np

from ..geometry import foreground_bounds, ijk_box_to_ras
from ..modelspace import Crop, Prompt
from ..modelspace.paste import Render
from ..volume import Volume
from .result import Region, check_mask


@dataclass
class Answer:
    """The last answer on a crop: its logits (S, S, S) float32, as the crop holds them once pasted."""

    crop: Crop
    logits: np.ndarray


@dataclass
class UndoStep:
    pasted: list[tuple[Region, np.ndarray]]  # each rewritten region with its previous content
    prompts: list[Prompt]
    answer: Optional[Answer]
    bounds: Optional[tuple[np.ndarray, np.ndarray]]
    member: Optional[str]


@dataclass
class Target:
    """One segment being edited: its mask (uint8, (k, j, i)), prompts and history."""

    mask: np.ndarray
    prompts: list[Prompt] = field(default_factory=list)
    history: list[UndoStep] = field(default_factory=list)
    answer: Optional[Answer] = None
    bounds: Optional[tuple[np.ndarray, np.ndarray]] = None  # RAS box enclosing the mask
    member: Optional[str] = None
    """The member routed to for the target's last new segmentation (first prompt or box, no member
    pinned); it also answers the corrections (None: none yet, e.g. after ``set_mask``)."""


class Targets(dict):
    """Name -> :class:`Target` on one volume; a target is created empty on first use."""

    def __init__(self, volume: Volume):
        super().__init__()
        self.volume = volume

    def get_or_create(self, name: str) -> Target:
        if name not in self:
            self[name] = Target(np.zeros(self.volume.shape, dtype=np.uint8))
        return self[name]

    def set_mask(self, name: str, mask: Union[np.ndarray, Volume]) -> Optional[Region]:
        """Replace ``name``'s mask (it becomes the previous-mask prompt and the undo base)."""
        target = Target(check_mask(self.volume, mask))
        target.bounds = self.mask_bounds(target.mask, (slice(None),) * 3)
        old = self.get(name)
        self[name] = target
        return changed_region(None if old is None else old.mask, target.mask)

    def reset(self, name: str) -> Optional[Region]:
        """Forget ``name``'s mask, prompts and history; returns the region its mask covered."""
        old = self.pop(name, None)
        return None if old is None else changed_region(old.mask, None)

    def undo(self, name: str) -> Optional[Region]:
        """Take back ``name``'s last prompt; returns the restored region (None: nothing to undo)."""
        target = self.get(name)
        if target is None or not target.history:
            return None
        step = target.history.pop()
        for region, previous in reversed(step.pasted):
            target.mask[region] = previous
        target.prompts, target.answer, target.bounds = step.prompts, step.answer, step.bounds
        target.member = step.member
        return union(region for region, _ in step.pasted)

    def commit(self, target: Target, prompts: list[Prompt], renders: list[Render], answer: Answer,
               member: Optional[str], overlap: bool = True) -> Optional[Region]:
        """Write rendered pieces into ``target``'s mask, in order, as one undo step; ``answer`` is
        remembered as its last, ``member`` (if not None) as the one that answers it. Without
        ``overlap``, voxels of the other targets stay out of this one (they are background)."""
        step = UndoStep([], target.prompts, target.answer, target.bounds, target.member)
        for render in renders:
            if render.region is None:
                continue
            previous = target.mask[render.region].copy()
            # only the voxels the crop reaches change; the rest keep their value
            rendered = render.rendered if overlap else render.rendered & ~self.others(target, render.region)
            target.mask[render.region] = np.where(render.reached, rendered, previous)
            step.pasted.append((render.region, previous))
            grown = self.mask_bounds(target.mask, render.region)
            if grown is not None:
                target.bounds = grown if target.bounds is None else (
                    np.minimum(target.bounds[0], grown[0]), np.maximum(target.bounds[1], grown[1]))
        target.history.append(step)
        target.prompts, target.answer = prompts, answer
        if member is not None:
            target.member = member
        return union(region for region, _ in step.pasted)

    def others(self, target: Target, region: Region) -> np.ndarray:
        """Where any target but ``target`` is set in ``region`` (bool)."""
        taken = np.zeros(target.mask[region].shape, dtype=bool)
        for other in self.values():
            if other is not target:
                taken |= other.mask[region] > 0
        return taken

    def mask_bounds(self, mask: np.ndarray, region: Region):
        """RAS box enclosing the foreground of ``mask[region]`` (None if empty)."""
        bounds = foreground_bounds(mask[region])
        if bounds is None:
            return None
        start = np.array([s.start or 0 for s in region])
        lo, hi = (start + b for b in bounds)
        return ijk_box_to_ras(lo[::-1], hi[::-1], self.volume.ijk_to_ras)

    @property
    def memory_bytes(self) -> int:
        """Every target's mask, undo copies and the crop logits of its answers (current and kept
        for undo), each counted once."""
        total, logits = 0, {}
        for target in self.values():
            total += target.mask.nbytes + sum(old.nbytes for step in target.history
                                              for _, old in step.pasted)
            for answer in [target.answer] + [step.answer for step in target.history]:
                if answer is not None:
                    logits[id(answer.logits)] = answer.logits.nbytes
        return total + sum(logits.values())


def changed_region(old: Optional[np.ndarray], new: Optional[np.ndarray]) -> Optional[Region]:
    """The smallest (k, j, i) slices holding every voxel where two masks differ (None for a missing
    mask: all zeros)."""
    if old is None and new is None:
        return None
    difference = (old > 0) if new is None else (new > 0) if old is None else (old > 0) != (new > 0)
    bounds = foreground_bounds(difference)
    if bounds is None:
        return None
    return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(*bounds))


def union(regions: Iterable[Region]) -> Optional[Region]:
    """The smallest (k, j, i) slices containing every region (None for none)."""
    regions = list(regions)
    if not regions:
        return None
    return tuple(slice(min(r[a].start for r in regions), max(r[a].stop for r in regions))
                 for a in range(3))
