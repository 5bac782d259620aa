"""The interactive session: RAS clicks and boxes in, masks on the volume's own grid out.

The image embedding of a crop is computed once and cached (shared by every target); a click inside
the cached crop runs only the prompt encoder and mask decoder, and only the voxels whose answer can
have changed are re-rendered and pasted into the mask.

With a moe bundle's gate, each prompt is routed: the gate reads the general model's embedding of the
crop and the prompts, and the member it selects among those allowed on the image's modality answers
the whole prompt (zoom-outs and corrections included), computing its own embedding of a crop only
when selected for it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
from scipy import ndimage

from ..bundle import Bundle, BundleError, Segmenter, load_bundle
from ..errors import PromptError
from ..geometry import (crop_grid, foreground_bounds, ijk_box_to_ras, ijk_to_ras_points, ras_to_ijk,
                        resample)
from ..modeling.gate import route
from ..modeling.normalization import image_modality, subsample
from ..modeling.prompt_encoder import (BOX_HIGH, BOX_LOW, FLAT_BOX_HIGH, FLAT_BOX_LOW, NEGATIVE,
                                       POSITIVE)
from ..volume import Grid, Volume
from .crops import (ZOOM_STEP, changed_cells, covers, plan_crop, region_slices, sample_logits,
                    touched_faces)
from .result import Region, Result, check_mask, check_point

MAX_ZOOM_OUTS = 4
CORRECTION_RADIUS = 0.25
"""A click on an existing mask edits it within this fraction of the crop size around the click;
the model's answer elsewhere is not pasted (a correction, not a new segmentation)."""
EMBEDDING_CACHE_SIZE = 4
REFINE_OVERLAP = 8
"""Crop voxels by which neighbouring refinement tiles overlap."""
MIN_TILE_VOXELS = 64
"""A refinement tile holding fewer voxels of the coarse answer is skipped."""


@dataclass(frozen=True)
class Prompt:
    """A point (``low`` only) or a box (``low``/``high`` corners), RAS mm."""

    low: np.ndarray
    high: Optional[np.ndarray] = None
    positive: bool = True


@dataclass
class CropState:
    grid: Grid
    logits: np.ndarray  # (S, S, S) last prediction on this crop, float32


@dataclass
class UndoStep:
    pasted: list[tuple[Region, np.ndarray]]  # each rewritten region with its previous content
    prompts: list[Prompt]
    crop: Optional[CropState]
    bounds: Optional[tuple[np.ndarray, np.ndarray]]
    member: Optional[str]


@dataclass
class Render:
    """One piece of an answer rendered on the volume's grid, not yet written: ``rendered`` (the
    mask) and ``reached`` (the voxels it may change) over ``region`` (None: nothing changed), and
    the crop's ``logits`` as they stand once it is written."""

    logits: np.ndarray
    region: Optional[Region] = None
    rendered: Optional[np.ndarray] = None
    reached: Optional[np.ndarray] = None


@dataclass
class Target:
    """One segment being edited: its mask (uint8, (k, j, i)), prompts and history."""

    mask: np.ndarray
    prompts: list[Prompt] = field(default_factory=list)
    history: list[UndoStep] = field(default_factory=list)
    crop: Optional[CropState] = None
    bounds: Optional[tuple[np.ndarray, np.ndarray]] = None  # RAS box enclosing the mask
    member: Optional[str] = None
    """The member routed to for the target's last new segmentation (first prompt or box, no member
    pinned); it also answers the corrections (None: none yet, e.g. after ``set_mask``)."""


def pick_device(device: Union[str, torch.device]) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class InteractiveSession:
    """Prompt-based segmentation of one volume, several targets (segments) at a time.

    ``model`` is a :class:`~ka2er_core.bundle.Bundle` (default: the shipped moe bundle). With a
    gate (a moe bundle) and no pinned member, the gate routes each target: its first prompt (and any
    later box) goes to the member the gate selects, which then answers the target's corrective
    clicks too, so a mask is corrected by the model that made it.
    """

    def __init__(self, model: Optional[Bundle] = None, device: Union[str, torch.device] = "auto",
                 refine: bool = False):
        self.device = pick_device(device)
        self.refine = refine
        """After a zoom-out, look again at the base spacing: tiles over the coarse answer (sharper
        borders of large objects; one crop embedding per tile, seconds on a CPU)."""
        self.bundle = model if model is not None else load_bundle()
        if not isinstance(self.bundle.default, Segmenter):
            raise BundleError(f"a bundle of kind {self.bundle.kind!r} has no promptable model; "
                              "segment with it without prompts (ka2er segment)", path=self.bundle.path)
        self._ready: set[str] = set()  # members moved to the device
        self.segmenter: Segmenter = self._member(self.members[0])
        self.pinned: Optional[str] = None
        """The member answering every prompt (None: the gate decides, or the default member)."""
        if self.bundle.gate is not None:
            self.bundle.gate.to(self.device)
        self.volume: Optional[Volume] = None
        self.targets: dict[str, Target] = {}
        self.target_name = "Segment_1"
        self._embeddings: OrderedDict = OrderedDict()
        self.embeddings_computed = 0
        """How many crop embeddings this session has computed (cache misses)."""

    # ---- image and targets ----

    def set_image(self, volume: Volume) -> None:
        """Use ``volume`` (not copied); clears targets and cached embeddings."""
        self.volume = volume
        sample = subsample(volume.array)
        self._stats = self.segmenter.normalization.statistics(volume.array, sample)
        gate = self.bundle.gate  # which of its members may answer on this image's modality
        self._eligible = (None if gate is None else
                          gate.eligible(image_modality(volume.array, sample)).to(self.device))
        self._fill = float(np.min(volume.array[::4, ::4, ::4]))
        self.targets.clear()
        self._embeddings.clear()

    @property
    def members(self) -> list[str]:
        """Names of the bundle's models (one for a student bundle; general plus experts for MoE)."""
        return list(self.bundle.members)

    def pin(self, member: Optional[str]) -> None:
        """Let ``member`` answer every prompt, bypassing a gate (None: the gate, or the bundle's
        default, answers again); embeddings stay cached."""
        if member is not None and member not in self.bundle.members:
            raise PromptError(f"unknown member {member!r}; the bundle has {self.members}",
                              field="member")
        self.pinned = member
        self.segmenter = self._member(member if member is not None else self.members[0])
        if self.volume is not None:
            self._stats = self.segmenter.normalization.statistics(self.volume.array)

    def set_target(self, name: str) -> None:
        """Make ``name`` the current target (created empty on first use); embeddings stay cached."""
        self.target_name = name

    @property
    def target(self) -> Target:
        volume = self._require_image()
        if self.target_name not in self.targets:
            self.targets[self.target_name] = Target(np.zeros(volume.shape, dtype=np.uint8))
        return self.targets[self.target_name]

    @property
    def mask(self) -> np.ndarray:
        """The current target's mask, uint8 (k, j, i) on the volume's grid."""
        return self.target.mask

    @property
    def undo_depth(self) -> int:
        """How many prompts of the current target :meth:`undo` can take back."""
        return len(self.target.history) if self.volume is not None else 0

    @property
    def memory_bytes(self) -> int:
        """Bytes this session holds beyond the model: the image, every target's mask, undo copies and
        last crop logits, and the cached embeddings."""
        total = 0 if self.volume is None else self.volume.array.nbytes
        for target in self.targets.values():
            total += target.mask.nbytes + sum(old.nbytes for step in target.history
                                              for _, old in step.pasted)
            total += 0 if target.crop is None else target.crop.logits.nbytes
        return total + sum(tensor_bytes(e) for e in self._embeddings.values())

    # ---- prompts ----

    def add_point(self, ras: Sequence[float], positive: bool = True) -> Result:
        point = self._check_point(ras, "point")
        return self._prompt(Prompt(point, None, bool(positive)))

    def add_box(self, corner_a: Sequence[float], corner_b: Sequence[float]) -> Result:
        a, b = self._check_point(corner_a, "box corner"), self._check_point(corner_b, "box corner")
        return self._prompt(Prompt(np.minimum(a, b), np.maximum(a, b), True))

    def set_mask(self, mask: Union[np.ndarray, Volume]) -> None:
        """Start from an existing mask (k, j, i): it becomes the previous-mask prompt and the undo base."""
        target = Target(check_mask(self._require_image(), mask))
        target.bounds = self._mask_bounds(target.mask, (slice(None),) * 3)
        self.targets[self.target_name] = target

    def undo(self) -> Optional[Region]:
        """Undo the last prompt of the current target; returns the restored region."""
        target = self.target
        if not target.history:
            return None
        step = target.history.pop()
        for region, previous in reversed(step.pasted):
            target.mask[region] = previous
        target.prompts, target.crop, target.bounds = step.prompts, step.crop, step.bounds
        target.member = step.member
        return union(region for region, _ in step.pasted)

    def reset(self) -> None:
        """Clear the current target's mask, prompts and history."""
        self.targets.pop(self.target_name, None)

    # ---- internals ----

    def _require_image(self) -> Volume:
        if self.volume is None:
            raise PromptError("no image: call set_image first", field="image")
        return self.volume

    def _check_point(self, ras, what: str) -> np.ndarray:
        return check_point(self._require_image(), ras, what)

    def _mask_bounds(self, mask: np.ndarray, region: Region):
        """RAS box enclosing the foreground of ``mask[region]`` (None if empty)."""
        bounds = foreground_bounds(mask[region])
        if bounds is None:
            return None
        start = np.array([s.start or 0 for s in region])
        lo, hi = (start + b for b in bounds)
        return ijk_box_to_ras(lo[::-1], hi[::-1], self.volume.ijk_to_ras)

    def _roi(self, target: Target, prompts: list[Prompt]):
        points = [p.low for p in prompts] + [p.high for p in prompts if p.high is not None]
        if target.bounds is not None:
            points += list(target.bounds)
        points = np.array(points)
        return points.min(axis=0), points.max(axis=0)

    def _member(self, name: str) -> Segmenter:
        """Member ``name``, loaded (a moe bundle reads weights on first use) and on the device."""
        member = self.bundle.members[name]
        if name not in self._ready:
            member.model.to(self.device)
            self._ready.add(name)
        return member

    def _route(self, prompts: list[Prompt], crop: Grid) -> None:
        """With a gate and no pinned member, make the member the gate selects (from the general
        model's embedding of ``crop`` and the prompts) the one that answers this prompt."""
        gate = self.bundle.gate
        if gate is None or self.pinned is not None:
            return
        general = self._member(gate.members[0])
        coords, labels = self._encode_prompts(prompts, crop)
        with torch.inference_mode():
            logits = gate(gate.inputs(general.model, self._embedding(crop, general), coords, labels))
        chosen = int(route(torch.softmax(logits[0], -1), gate.threshold, self._eligible))
        self.segmenter = self._member(gate.members[chosen])

    def _embedding(self, crop: Grid, member: Optional[Segmenter] = None):
        """``member``'s (default: the answering member's) embedding of ``crop``, cached."""
        member = member or self.segmenter
        key = (member.name, tuple(np.round(crop.ijk_to_ras, 4).ravel()))
        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            return self._embeddings[key]
        volume = self.volume
        image = resample(volume.array, volume.ijk_to_ras, crop, order=1, fill=self._fill)
        image = member.normalization.apply(image, self._stats)
        tensor = torch.from_numpy(image)[None, None].to(self.device)
        with torch.inference_mode():
            embedding = member.model.embed(tensor)
        self.embeddings_computed += 1
        self._embeddings[key] = embedding
        while len(self._embeddings) > EMBEDDING_CACHE_SIZE:
            self._embeddings.popitem(last=False)
        return embedding

    def _prior(self, target: Target, crop: Grid) -> np.ndarray:
        """The current mask as crop logits (+1 inside, -1 outside) on ``crop``."""
        if target.crop is not None and target.crop.grid.same_as(crop):
            return target.crop.logits
        if target.bounds is None:
            return np.full(crop.shape, -1.0, dtype=np.float32)
        inside = resample(target.mask, self.volume.ijk_to_ras, crop, order=0)
        return np.where(inside > 0, 1.0, -1.0).astype(np.float32)

    def _encode_prompts(self, prompts: list[Prompt], crop: Grid):
        coords, labels = [], []
        for prompt in prompts:
            if prompt.high is None:
                coords.append(ras_to_ijk(prompt.low, crop.ijk_to_ras))
                labels.append(POSITIVE if prompt.positive else NEGATIVE)
            else:
                lo = ras_to_ijk(prompt.low, crop.ijk_to_ras)
                hi = ras_to_ijk(prompt.high, crop.ijk_to_ras)
                flat = np.any(np.abs(hi - lo) < 1.0)
                coords += [np.minimum(lo, hi), np.maximum(lo, hi)]
                labels += [FLAT_BOX_LOW, FLAT_BOX_HIGH] if flat else [BOX_LOW, BOX_HIGH]
        coords = torch.tensor(np.array(coords), dtype=torch.float32, device=self.device)[None]
        labels = torch.tensor(labels, dtype=torch.long, device=self.device)[None]
        return coords, labels

    def _decode(self, prompts: list[Prompt], crop: Grid, prior: np.ndarray):
        embedding = self._embedding(crop)
        coords, labels = self._encode_prompts(prompts, crop)
        has_mask = bool((prior > 0).any())
        mask = (torch.from_numpy((prior > 0).astype(np.float32))[None, None].to(self.device)
                if has_mask else None)
        with torch.inference_mode():
            logits, iou = self.segmenter.model.decode(embedding, coords, labels, mask)
        return logits[0, 0].float().cpu().numpy(), float(iou[0])

    def _choose_crop(self, target: Target, low, high) -> Grid:
        s = self.segmenter
        needed = plan_crop(low, high, s.crop_size, s.base_spacing, s.max_spacing)
        if target.crop is not None:
            current = target.crop.grid
            if covers(current, low, high) and current.spacing[0] <= needed.spacing[0] * ZOOM_STEP ** 2:
                return current
        return needed

    def _prompt(self, prompt: Prompt) -> Result:
        start = time.perf_counter()
        target = self.target
        prompts = target.prompts + [prompt]
        if prompt.high is None and target.bounds is not None:
            return self._correct(target, prompts, start)
        low, high = self._roi(target, prompts)
        crop = first_crop = self._choose_crop(target, low, high)
        self._route(prompts, crop)
        prior = self._prior(target, crop)
        logits, score = self._decode(prompts, crop, prior)
        s = self.segmenter
        for _ in range(MAX_ZOOM_OUTS):  # the object runs past the crop: zoom out until it fits
            faces = touched_faces(logits > 0)
            if not faces or crop.spacing[0] >= s.max_spacing:
                break
            grown_low, grown_high = self._grow(crop, logits > 0, faces)
            low, high = np.minimum(low, grown_low), np.maximum(high, grown_high)
            bigger = plan_crop(low, high, s.crop_size, s.base_spacing, s.max_spacing)
            if bigger.spacing[0] <= crop.spacing[0]:
                bigger = plan_crop(low, high, s.crop_size, min(crop.spacing[0] * ZOOM_STEP ** 2,
                                                               s.max_spacing), s.max_spacing)
            carried = resample(logits, crop.ijk_to_ras, bigger, order=1, fill=-1.0)
            crop = bigger
            logits, score = self._decode(prompts, crop, carried)
        old = prior if crop is first_crop else self._prior(target, crop)
        pieces = [(crop, logits, old)]
        if self.refine and crop.spacing[0] > s.base_spacing * ZOOM_STEP:
            pieces += self._tiles(prompts, crop, logits)
        return self._paste(target, prompts, pieces, score, start)

    def _correct(self, target: Target, prompts: list[Prompt], start: float) -> Result:
        """A click on an existing mask: look closely around it (a crop at the base spacing, the mask
        as the dense prompt) and edit the mask near the click only."""
        click = prompts[-1].low
        s = self.segmenter
        crop = None
        if target.crop is not None and target.crop.grid.spacing[0] <= s.base_spacing * ZOOM_STEP:
            margin = s.crop_size * CORRECTION_RADIUS
            if covers(target.crop.grid, click, click, margin_voxels=margin):
                crop = target.crop.grid
        if crop is None:
            crop = plan_crop(click, click, s.crop_size, s.base_spacing, s.max_spacing)
        inside = prompts_inside(prompts, crop)
        if self.pinned is None and target.member is not None:
            self.segmenter = self._member(target.member)
        else:
            self._route(inside, crop)
        prior = self._prior(target, crop)
        logits, score = self._decode(inside, crop, prior)
        focus = ras_to_ijk(click, crop.ijk_to_ras)
        return self._paste(target, prompts, [(crop, logits, prior)], score, start, focus)

    def _tiles(self, prompts: list[Prompt], coarse: Grid, logits: np.ndarray):
        """Base-spacing tiles over the foreground of a coarse answer (``logits`` on ``coarse``), each
        decoded with the coarse answer as its mask prompt, the point prompts inside it and a positive
        point at its deepest voxel of the coarse answer: [(tile, tile logits, coarse logits on the
        tile)], to paste over the coarse answer."""
        s = self.segmenter
        bounds = foreground_bounds(logits > 0)
        if bounds is None:
            return []
        low, high = ijk_box_to_ras(bounds[0][::-1] - 1.0, bounds[1][::-1] + 1.0,  # a coarse voxel
                                   coarse.ijk_to_ras)                        # of doubt each side
        side = (s.crop_size - 1) * s.base_spacing
        stride = side - REFINE_OVERLAP * s.base_spacing
        centres = []
        for lo, hi in zip(low, high):
            count = max(1, math.ceil((hi - lo - side) / stride) + 1)
            centres.append(np.linspace(lo + side / 2, hi - side / 2, count) if count > 1
                           else [(lo + hi) / 2])
        pieces = []
        for centre in itertools.product(*centres):
            tile = crop_grid(np.array(centre), (s.crop_size,) * 3, (s.base_spacing,) * 3)
            prior = resample(logits, coarse.ijk_to_ras, tile, order=1, fill=-1.0)
            seed = prior > 0
            if np.count_nonzero(seed) < MIN_TILE_VOXELS:
                continue
            depth = ndimage.distance_transform_edt(np.pad(seed, 1))[1:-1, 1:-1, 1:-1]
            deepest = np.array(np.unravel_index(int(np.argmax(depth)), depth.shape), float)
            points = [p for p in prompts_inside(prompts, tile) if p.high is None]
            points.append(Prompt(ijk_to_ras_points(deepest[::-1], tile.ijk_to_ras)))
            tile_logits, _ = self._decode(points, tile, prior)
            pieces.append((tile, tile_logits, prior))
        return pieces

    @staticmethod
    def _grow(crop: Grid, inside: np.ndarray, faces) -> tuple[np.ndarray, np.ndarray]:
        """RAS box of the crop's foreground, extended by half a crop past each touched face."""
        lo, hi = (b[::-1].astype(float) for b in foreground_bounds(inside))  # (i, j, k)
        half = crop.shape[0] / 2
        for axis, side in faces:
            if side < 0:
                lo[axis] -= half
            else:
                hi[axis] += half
        return ijk_box_to_ras(lo, hi, crop.ijk_to_ras)

    def _paste(self, target, prompts, pieces, score, start, focus=None) -> Result:
        """Paste each (crop, logits, old) piece's changed cells into the mask, in order, as one undo
        step; the first piece's crop and logits are remembered as the target's last answer. All
        pieces are rendered before the mask is touched: a failure while rendering any of them (a
        refinement tile, say) leaves the mask, its history and the target as they were."""
        renders = [self._render(crop, logits, old, focus) for crop, logits, old in pieces]
        step = UndoStep([], target.prompts, target.crop, target.bounds, target.member)
        for render in renders:
            self._commit(target, step, render)
        target.history.append(step)
        target.prompts = prompts
        target.crop = CropState(pieces[0][0], renders[0].logits)
        if self.pinned is None:
            target.member = self.segmenter.name
        return Result(union(region for region, _ in step.pasted), score, self.segmenter.name,
                      (time.perf_counter() - start) * 1000)

    def _render(self, crop, logits, old, focus) -> Render:
        """The cells of ``crop`` where ``logits`` and ``old`` differ, rendered on the volume's grid
        (nothing is written), and the logits as the crop will hold them once pasted."""
        changed = changed_cells(logits, old, focus=focus, radius=CORRECTION_RADIUS * crop.shape[0])
        region = None if changed is None else region_slices(crop, self.volume.grid, *changed[1])
        if region is None:
            return Render(logits)
        cells = changed[0]
        rendered, reached = sample_logits(torch.from_numpy(logits), crop, self.volume.grid,
                                          region, cells)
        if focus is not None:  # what was not pasted stays as it was in the crop's memory too
            block = crop.shape[0] // cells.shape[0]
            pasted = cells.repeat(block, 0).repeat(block, 1).repeat(block, 2)
            logits = np.where(pasted, logits, old)
        return Render(logits, region, rendered, reached)

    def _commit(self, target: Target, step: UndoStep, render: Render) -> None:
        """Write a rendered piece into the mask where the crop reaches (its previous content into
        ``step``) and grow the target's bounds."""
        if render.region is None:
            return
        region = render.region
        previous = target.mask[region].copy()
        # only the voxels the crop reaches change; the rest keep their value
        target.mask[region] = np.where(render.reached, render.rendered, previous)
        step.pasted.append((region, previous))
        grown = self._mask_bounds(target.mask, region)
        if grown is not None:
            target.bounds = grown if target.bounds is None else (
                np.minimum(target.bounds[0], grown[0]), np.maximum(target.bounds[1], grown[1]))


def prompts_inside(prompts: list[Prompt], crop: Grid) -> list[Prompt]:
    """The prompts whose point (or both box corners) lie inside ``crop``."""
    last = np.asarray(crop.shape[::-1]) - 1
    return [p for p in prompts if all(
        np.all((c >= 0) & (c <= last)) for c in
        [ras_to_ijk(x, crop.ijk_to_ras) for x in (p.low, p.high) if x is not None])]


def tensor_bytes(value) -> int:
    """Bytes of the tensors in ``value`` (a tensor, a sequence of them, or an object holding them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return sum(tensor_bytes(v) for v in vars(value).values()) if hasattr(value, "__dict__") else 0


def union(regions) -> Optional[Region]:
    """The smallest (k, j, i) slices containing every region (None for none)."""
    regions = list(regions)
    if not regions:
        return None
    return tuple(slice(min(r[a].start for r in regions), max(r[a].stop for r in regions))
                 for a in range(3))
