"""The interactive session: RAS clicks, boxes, scribbles and lassos in, masks on the volume's own
grid out.

The session decides where the model looks (a crop around the prompts, zoomed out until the object
fits, or a close look around a correcting click) and which member answers (:class:`Router`); the
model space (:mod:`ka2er_core.modelspace`) turns prompts into tokens and answers back into the mask;
:class:`Targets` keeps masks and undo; :class:`EmbeddingCache` computes each crop's image embedding
once, so that a click inside a cached crop runs only the prompt encoder and the mask decoder; after
each prompt, :class:`Prefetcher` embeds the crops of the target's next corrections in the background.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..bundle import Bundle, BundleError, Segmenter, load_bundle
from ..bundle.registry import prompt_types
from ..errors import PromptError
from ..geometry import foreground_bounds, ijk_box_to_ras
from ..modelspace import ZOOM_STEP, Box, Crop, Point, Prompt, plan_crop
from ..modelspace.lattice import Lattice
from ..modelspace.paste import Render, render, touched_faces
from ..modelspace.tiles import refinement_tiles
from ..volume import Grid, Volume
from .models import ImageModels
from .prefetch import BACKGROUND_BYTES, Prefetcher
from .result import BackgroundStatus, Region, Result, check_box, check_point
from .strokes import drawn_pieces, make_lasso, make_scribble
from .targets import Answer, Target, Targets

MAX_ZOOM_OUTS = 4
POINTS_ONLY = "this model takes points only (it was never trained on boxes): click inside the object"
CORRECTION_RADIUS = 0.25
"""A click on an existing mask edits it within this fraction of the crop size around the click;
the model's answer elsewhere is not pasted (a correction, not a new segmentation)."""


def pick_device(device: Union[str, torch.device]) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class InteractiveSession:
    """Prompt-based segmentation of one volume, several targets (segments) at a time.

    ``model`` is a :class:`~ka2er_core.bundle.Bundle` (default: the shipped moe bundle). With a
    gate and no pinned member, the gate routes each target's first prompt (and any later box); that
    member answers the target's corrections while they change the mask (:meth:`_correctors`).
    ``background`` (the server and the Slicer module turn it on): after each prompt, embed the crops
    of the target's next corrections on a low-priority thread (:mod:`.prefetch`), keeping up to
    ``background_bytes``; corrections then use lattice crops (:func:`correction_crop`).
    """

    def __init__(self, model: Optional[Bundle] = None, device: Union[str, torch.device] = "auto",
                 refine: bool = False, overlap: bool = True, background: bool = False,
                 background_bytes: int = BACKGROUND_BYTES):
        self.device = pick_device(device)
        self.overlap = overlap
        """False: other targets' voxels are background to each prompt and never overwritten."""
        self.refine = refine
        """After a zoom-out, look again at the base spacing: tiles over the coarse answer (sharper
        borders of large objects; one crop embedding per tile, seconds on a CPU)."""
        self.bundle = model if model is not None else load_bundle()
        if not isinstance(self.bundle.default, Segmenter):
            raise BundleError(f"a bundle of kind {self.bundle.kind!r} has no promptable model; "
                              "segment with it without prompts (ka2er segment)", path=self.bundle.path)
        self.models = ImageModels(self.bundle, self.device)
        self.router = self.models.router
        self.prompt_types = prompt_types(self.bundle)  # "point", "box" if every member takes it, ...
        self.pinned: Optional[str] = None
        """The member answering every prompt (None: the gate decides, or the default member)."""
        self.volume: Optional[Volume] = None
        self.targets = Targets(None)
        self.target_name = "Segment_1"
        self.embeddings = self.models.embeddings
        self.prefetcher = Prefetcher(self.models, background_bytes, background)

    # ---- image and targets ----

    def set_image(self, volume: Volume) -> None:
        """Use ``volume`` (not copied); clears targets and cached embeddings, stops the background."""
        self.prefetcher.cancel()
        self.volume = volume
        self.models.set_image(volume)
        self.targets = Targets(volume)

    def close(self) -> None:
        """Stop the background and drop the cached embeddings (the session is done with)."""
        self.prefetcher.cancel()
        self.embeddings.clear()

    @property
    def members(self) -> list[str]:
        """Names of the bundle's models (one for a student bundle; general plus members for MoE)."""
        return list(self.bundle.members)

    def pin(self, member: Optional[str]) -> None:
        """Let ``member`` answer every prompt, bypassing a gate (None: the gate, or the bundle's
        default, answers again); embeddings stay cached."""
        if member is not None and member not in self.bundle.members:
            raise PromptError(f"unknown member {member!r}; the bundle has {self.members}",
                              field="member")
        self.pinned = member

    def set_target(self, name: str) -> None:
        """Make ``name`` the current target (created empty on first use); embeddings stay cached,
        and the background turns to another target's corrections."""
        changed, self.target_name = name != self.target_name, name
        if changed and name in self.targets and self.targets[name].bounds is not None:
            self._prefetch(self.target)

    @property
    def target(self) -> Target:
        self._require_image()
        return self.targets.get_or_create(self.target_name)

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
        """Bytes held beyond the model: image, masks, undo copies, crop logits, all embeddings kept."""
        image = 0 if self.volume is None else self.volume.array.nbytes
        return image + self.targets.memory_bytes + self.embeddings.memory_bytes

    @property
    def background(self) -> BackgroundStatus:
        """How far the background embeddings of the current target's corrections are."""
        return self.prefetcher.status

    # ---- prompts: each returns what changed ----

    def add_point(self, ras: Sequence[float], positive: bool = True) -> Result:
        return self._prompt(Point(self._check_point(ras, "point"), bool(positive)))

    def add_box(self, corner_a: Sequence[float], corner_b: Sequence[float]) -> Result:
        """A box (2D when one slice thick); one running past the image is clipped to it and the
        result says so."""
        if "box" not in self.prompt_types:
            raise PromptError(POINTS_ONLY, field="box")
        low, high, clipped = check_box(self._require_image(), corner_a, corner_b)
        return replace(self._prompt(Box(low, high)), clipped=clipped)

    def add_scribble(self, points_ras: Sequence[Sequence[float]], positive: bool = True) -> Result:
        """A polyline (a Markups curve), (N, 3) RAS mm, on the target or (negative) off it."""
        return self._prompt(make_scribble(self._require_image(), points_ras, positive))

    def add_lasso(self, points_ras: Sequence[Sequence[float]], positive: bool = True) -> Result:
        """A closed curve on one slice, (N, 3) RAS mm: its enclosed voxels are in the target
        (negative: out of it) and the model follows it in 3D."""
        return self._prompt(make_lasso(self._require_image(), points_ras, positive))

    def set_mask(self, mask: Union[np.ndarray, Volume]) -> Optional[Region]:
        """Start from an existing mask (k, j, i): it becomes the previous-mask prompt and the undo
        base; returns the region where it differs from the mask it replaces."""
        self._require_image()
        region = self.targets.set_mask(self.target_name, mask)
        if self.target.bounds is not None:
            self._prefetch(self.target)
        return region

    def undo(self) -> Optional[Region]:
        """Undo the last prompt of the current target; returns the restored region."""
        self._require_image()
        return self.targets.undo(self.target_name)

    def reset(self) -> Optional[Region]:
        """Clear the current target's mask, prompts and history; returns the region it covered."""
        return None if self.volume is None else self.targets.reset(self.target_name)

    # ---- internals ----

    def _require_image(self) -> Volume:
        if self.volume is None:
            raise PromptError("no image: call set_image first", field="image")
        return self.volume

    def _check_point(self, ras, what: str) -> np.ndarray:
        return check_point(self._require_image(), ras, what)

    def _member(self, name: str) -> Segmenter:
        return self.models.member(name)

    def _planner(self, target: Target) -> Segmenter:
        """The member whose crop geometry plans the next crop: the pinned one, else the one that
        answers the target, else the bundle's default."""
        return self._member(self.pinned or target.member or self.router.default)

    def _route(self, prompts: list[Prompt], crop: Crop) -> Segmenter:
        """The member that answers ``prompts`` on ``crop``: the pinned one, else the router's."""
        return self._member(self.pinned) if self.pinned is not None else self.models.route(prompts, crop)

    def _prior(self, target: Target, crop: Crop) -> np.ndarray:
        """The current mask as crop logits (+1 inside, -1 outside) on ``crop``."""
        if target.answer is not None and target.answer.crop.same_as(crop):
            return target.answer.logits
        if target.bounds is None:
            return np.full(crop.grid.shape, -1.0, dtype=np.float32)
        inside = crop.resample(target.mask, self.volume.grid, order=0)
        return np.where(inside > 0, 1.0, -1.0).astype(np.float32)

    def _prompt(self, prompt: Prompt) -> Result:
        """Answer ``prompt`` (the background waiting), then prepare the next corrections around it."""
        with self.prefetcher.paused():
            result = self._answer(prompt)
        self._prefetch(self.target, np.mean(prompt.corners, axis=0))
        return result

    def _prefetch(self, target: Target, near=None) -> None:
        """Background embeddings for ``target``'s corrections, nearest ``near`` (RAS; default: the
        mask's centre) first."""
        near = np.mean(target.bounds, axis=0) if near is None else near
        members = self.models.correctors(self._planner(target), pinned=self.pinned is not None)
        self.prefetcher.follow(members, target.mask, near)

    def _answer(self, prompt: Prompt) -> Result:
        start = time.perf_counter()
        target = self.target
        prompts = target.prompts + [prompt]
        if isinstance(prompt, Point) and target.bounds is not None:
            return self._correct(target, prompts, start)
        points = [c for p in prompts for c in p.corners] + list(target.bounds or ())
        low, high = np.min(points, axis=0), np.max(points, axis=0)
        crop = first_crop = choose_crop(target.answer, self._planner(target), low, high)
        member = self._route(prompts, crop)
        prior = self._prior(target, crop)
        logits, score = self.models.decode(member, prompts, crop, prior)
        for _ in range(MAX_ZOOM_OUTS):  # the object runs past the crop: zoom out until it fits
            faces = touched_faces(logits > 0)
            if not faces or crop.spacing >= member.max_spacing:
                break
            grown_low, grown_high = grow(crop, logits > 0, faces)
            low, high = np.minimum(low, grown_low), np.maximum(high, grown_high)
            bigger = plan_crop(low, high, member.crop_size, member.base_spacing, member.max_spacing)
            if bigger.spacing <= crop.spacing:
                bigger = plan_crop(low, high, member.crop_size, min(crop.spacing * ZOOM_STEP ** 2,
                                                                    member.max_spacing),
                                   member.max_spacing)
            carried = bigger.resample(logits, crop.grid, order=1, fill=-1.0)
            crop = bigger
            logits, score = self.models.decode(member, prompts, crop, carried)
        old = prior if crop is first_crop else self._prior(target, crop)
        pieces = [(crop, logits, old)]
        if self.refine and crop.spacing > member.base_spacing * ZOOM_STEP:
            pieces += [(tile, self.models.decode(member, points, tile, coarse)[0], coarse)  # base-spacing tiles
                       for tile, coarse, points in refinement_tiles(crop, logits, prompts,
                                                                    member.crop_size, member.base_spacing)]
        renders = [render(crop, logits, old, self.volume.grid) for crop, logits, old in pieces]
        return self._commit(target, member, prompts, renders, score, start)

    def _correct(self, target: Target, prompts: list[Prompt], start: float) -> Result:
        """A click on an existing mask: a close look around it (base spacing, the mask as the dense
        prompt, :func:`correction_crop`), pasted near the click only."""
        click = prompts[-1].ras
        crop = correction_crop(target.answer, self._planner(target), click, self.volume.grid,
                               lattice=self.prefetcher.enabled)
        inside = [p for p in prompts if crop.holds(p)]
        prior, focus = self._prior(target, crop), crop.to_crop(click)
        for member in self._correctors(target, inside, crop):
            logits, score = self.models.decode(member, inside, crop, prior)
            piece = render(crop, logits, prior, self.volume.grid, focus, CORRECTION_RADIUS * crop.size)
            if changes(piece, target.mask):
                break
        return self._commit(target, member, prompts, [piece], score, start)

    def _correctors(self, target: Target, prompts: list[Prompt], crop: Crop):
        """Who answers a correction, in turn until one changes the mask near the click: the target's
        member, the gate's choice, the general model (no member locks its answer in); or the pinned one."""
        if self.pinned is not None or target.member is None:
            yield self._route(prompts, crop)
            return
        yield self._member(target.member)
        for name in dict.fromkeys((self._route(prompts, crop).name, self.router.general)):
            if name != target.member:
                yield self._member(name)

    def _commit(self, target, member, prompts, renders, score, start) -> Result:
        """Write the rendered pieces into the mask in order as one undo step (rendering wrote
        nothing, so a failure before this leaves everything as it was), then what a lasso drew; the
        first piece's crop and logits are remembered as the target's last answer."""
        renders = renders + drawn_pieces(prompts[-1], renders[0])
        answer = Answer(renders[0].crop, renders[0].logits)
        region = self.targets.commit(target, prompts, renders, answer,
                                     None if self.pinned is not None else member.name, self.overlap)
        return Result(region, score, member.name, (time.perf_counter() - start) * 1000)


def changes(piece: Render, mask: np.ndarray) -> bool:
    """Whether writing the rendered ``piece`` would change ``mask`` (uint8, (k, j, i))."""
    if piece.region is None:
        return False
    return bool((piece.reached & (piece.rendered != (mask[piece.region] > 0))).any())


def correction_crop(answer: Optional[Answer], planner: Segmenter, click, grid: Grid, lattice: bool) -> Crop:
    """The crop a correcting click is answered in: the last answer's while it holds the click at the
    base spacing; else with ``lattice`` (background embeddings on) the lattice crop nearest the click,
    which the background may have embedded already (:class:`Lattice`: the click lies up to a quarter
    crop off its centre), else a crop centred on the click (where the model answers best: on
    held-out phantoms 0.847 vs 0.829 mean Dice after 5 prompts, but every new crop costs an
    embedding on the click)."""
    if answer is not None and answer.crop.spacing <= planner.base_spacing * ZOOM_STEP:
        if answer.crop.contains(click, click, planner.crop_size * CORRECTION_RADIUS):
            return answer.crop
    if lattice:
        return Lattice(grid, planner.crop_size, planner.base_spacing).nearest(click)
    return plan_crop(click, click, planner.crop_size, planner.base_spacing, planner.max_spacing)


def choose_crop(answer: Optional[Answer], member: Segmenter, low, high) -> Crop:
    """The crop for prompts spanning the RAS box [low, high]: the last answer's crop while it holds
    them and is not much finer than needed (its embedding is cached), else a new one."""
    needed = plan_crop(low, high, member.crop_size, member.base_spacing, member.max_spacing)
    if answer is not None:
        if answer.crop.contains(low, high) and answer.crop.spacing <= needed.spacing * ZOOM_STEP ** 2:
            return answer.crop
    return needed


def grow(crop: Crop, inside: np.ndarray, faces) -> tuple[np.ndarray, np.ndarray]:
    """RAS box of the crop's foreground, extended by half a crop past each touched face."""
    lo, hi = (b[::-1].astype(float) for b in foreground_bounds(inside))  # (i, j, k)
    half = crop.size / 2
    for axis, side in faces:
        if side < 0:
            lo[axis] -= half
        else:
            hi[axis] += half
    return ijk_box_to_ras(lo, hi, crop.ijk_to_ras)
