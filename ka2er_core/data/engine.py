"""The data engine of the generalist model: seeded scenes of (image, label map, targets), on the fly.

A scene is an image on a grid (oblique, anisotropic, thick-sliced at random) with a label map and the
targets a user might prompt in it. Sources:

- ``shapes``: procedural label maps (:mod:`.shapes`) rendered SynthSeg-style (:mod:`.render`);
- ``mni-parcels``: MNI152 pseudo-subjects' tissues, each split into random parcels (Voronoi cells),
  rendered SynthSeg-style; parcels of a tissue often share its intensity, so their borders are
  invisible and only the prompt tells them apart;
- ``mni-real``: MNI152 pseudo-subjects as they are (real texture) with SLIC supervoxels, merged
  neighbouring supervoxels and the tissues as targets;
- ``phantoms``: the CT and MR phantoms' organs, as generated or re-rendered.

Targets: one label, a union (a tissue of parcels, a shell with its content, the brain), or one
connected component of a label. A union starts with a box only (a click would name the smallest
structure under it); the others with a box or a click. Families and sources can be held out
(``EngineConfig``) so that evaluation sees something training never did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..geometry import centred_matrix
from ..volume import Volume
from .mni import TRAIN_SEEDS, mni_subject
from .phantoms import ct_phantom, mr_phantom
from .render import render, thick_slices
from .shapes import GENERATORS, shape_scene

SOURCES = {"shapes": 0.45, "mni-parcels": 0.25, "mni-real": 0.15, "phantoms": 0.15}
"""Default share of scenes per source."""
HELD_OUT_FAMILIES = ("branching",)
"""Shape families the shipped generalist never trains on (its held-out synthetic check)."""
MIN_TARGET_VOXELS = 50


@dataclass(frozen=True)
class SceneTarget:
    """A target of a scene: the union of ``values`` in the scene's label map ``labels``; with
    ``component``, only the largest connected component of that union. ``first``: the first prompts
    that identify it."""

    kind: str
    values: tuple[int, ...]
    first: frozenset = frozenset({"box", "click"})
    component: bool = False
    labels: str = "label"

    def mask(self, scene: "Scene") -> np.ndarray:
        mask = np.isin(scene.labels[self.labels], self.values)
        if self.component:
            components, count = ndimage.label(mask)
            if count > 1:
                sizes = np.bincount(components.ravel())[1:]
                mask = components == int(np.argmax(sizes)) + 1
        return mask


@dataclass
class Scene:
    """An image, its label maps by name (each (k, j, i) on the image's grid), the targets in them,
    the source that made it and its modality ("mr" or "ct")."""

    image: Volume
    labels: dict[str, np.ndarray]
    targets: list[SceneTarget]
    source: str
    modality: str


@dataclass(frozen=True)
class EngineConfig:
    sources: dict = field(default_factory=lambda: dict(SOURCES))
    families: tuple[str, ...] = tuple(f for f in GENERATORS if f not in HELD_OUT_FAMILIES)
    ct_share: float = 0.25        # rendered scenes in HU rather than MR units
    oblique_share: float = 0.5
    thick_share: float = 0.35     # scenes acquired with thick slices along one axis
    masked_share: float = 0.35    # MR scenes whose outside (label 0) is zero, as skull-stripped
    reuse: int = 12               # scenes drawn from one cached MNI pseudo-subject before a new one
    mni_seeds: range = TRAIN_SEEDS


def _grid_matrix(spacing: np.ndarray, shape: Sequence[int], oblique: bool,
                 rng: np.random.Generator) -> np.ndarray:
    """ijk_to_ras for ``spacing`` (mm along k, j, i): a random rotation (or a random axis-aligned
    orientation with flips), centred on RAS 0."""
    if oblique:
        direction = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
    else:
        direction = np.eye(3)[rng.permutation(3)] * rng.choice((-1, 1), 3)
    return centred_matrix(direction, np.asarray(spacing)[::-1], shape)


def acquire(image: np.ndarray, labels: dict[str, np.ndarray], spacing: np.ndarray,
            rng: np.random.Generator, oblique_share: float = 0.5,
            thick_share: float = 0.35) -> tuple[Volume, dict[str, np.ndarray]]:
    """A rendered canvas (``spacing`` mm along k, j, i) as a volume: thick slices along a random axis
    (with probability ``thick_share``), on an oblique (``oblique_share``) or axis-aligned grid.
    Returns the volume and the label maps on its grid."""
    if rng.random() < thick_share:
        axis = int(rng.integers(3))
        factor = int(max(2, round(rng.uniform(2.0, 6.0) / spacing[axis])))
        image, labels, spacing = thick_slices(image, labels, spacing, axis, factor)
    matrix = _grid_matrix(spacing, image.shape, rng.random() < oblique_share, rng)
    return Volume(np.ascontiguousarray(image, dtype=np.float32), matrix), labels


def _voronoi_parcels(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices 1..count over ``mask`` (0 outside): the nearest of ``count`` random seeds in it."""
    points = np.argwhere(mask)
    seeds = points[rng.choice(len(points), size=min(count, len(points)), replace=False)]
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(seeds.T)] = np.arange(1, len(seeds) + 1)
    _, nearest = ndimage.distance_transform_edt(markers == 0, return_indices=True)
    parcels = markers[tuple(nearest)]
    return np.where(mask, parcels, 0)


def _adjacent(label: np.ndarray, value: int) -> set[int]:
    """Label values that touch ``value`` (6-connectivity)."""
    ring = ndimage.binary_dilation(label == value) & (label != value)
    return set(int(v) for v in np.unique(label[ring]))


class DataEngine:
    """Draws :class:`Scene` s. Keeps a few MNI pseudo-subjects (and their supervoxels) cached, each
    used for ``config.reuse`` scenes: making one takes seconds."""

    def __init__(self, config: EngineConfig = EngineConfig()):
        self.config = config
        self._makers = {"shapes": self._shapes, "mni-parcels": self._mni_parcels,
                        "mni-real": self._mni_real, "phantoms": self._phantoms}
        unknown = sorted(set(config.sources) - set(self._makers))
        if unknown:
            raise ValueError(f"unknown scene sources {unknown}; known: {sorted(self._makers)}")
        names = list(config.sources)
        weights = np.array([config.sources[n] for n in names], dtype=np.float64)
        self._sources = names, weights / weights.sum()
        self._mni: dict[str, tuple] = {}  # sequence -> (subject, uses left, supervoxels or None)

    def scene(self, rng: np.random.Generator) -> Scene:
        names, weights = self._sources
        source = names[int(rng.choice(len(names), p=weights))]
        scene = self._makers[source](rng)
        scene.targets = [t for t in scene.targets if int(t.mask(scene).sum()) >= MIN_TARGET_VOXELS]
        return scene if scene.targets else self.scene(rng)

    # ---- acquisition: the rendered canvas becomes a volume ----

    def _acquire(self, image: np.ndarray, labels: dict[str, np.ndarray], spacing: np.ndarray,
                 rng: np.random.Generator) -> tuple[Volume, dict[str, np.ndarray]]:
        return acquire(image, labels, spacing, rng, self.config.oblique_share, self.config.thick_share)

    def _modality(self, rng: np.random.Generator) -> str:
        return "ct" if rng.random() < self.config.ct_share else "mr"

    def _outside(self, modality: str, rng: np.random.Generator) -> list[int]:
        """Label 0 (outside the body or brain) as air: always in CT; in MR a third of the time,
        as a skull-stripped or masked image has it (zeros), else rendered like any label."""
        return [0] if modality == "ct" or rng.random() < self.config.masked_share else []

    # ---- sources ----

    def _shapes(self, rng: np.random.Generator) -> Scene:
        spacing = np.full(3, float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))))
        shape = tuple(int(n) for n in rng.integers(48, 97, 3))
        scene = shape_scene(rng, shape, spacing, self.config.families)
        modality = self._modality(rng)
        # Background regions form one tissue class (often one intensity); in CT the first is air.
        tissue = {v: 0 for v in scene.background}
        air = scene.background[:1] if modality == "ct" and len(scene.background) > 1 else []
        image = render(scene.label, spacing, rng, tissue, modality, air)
        volume, labels = self._acquire(image, {"label": scene.label}, spacing, rng)
        label = labels["label"]
        objects = [int(v) for v in np.unique(label) if v not in scene.background]
        targets = [SceneTarget("shape", (v,)) for v in objects]
        targets += [SceneTarget("shape component", (v,), component=True) for v in objects]
        targets += [SceneTarget("shape union", u, frozenset({"box"})) for u in scene.unions]
        targets += [SceneTarget("background region", (v,)) for v in scene.background
                    if len(scene.background) > 1 and rng.random() < 0.3]
        return Scene(volume, labels, targets, "shapes", modality)

    def _mni_subject(self, sequence: str, rng: np.random.Generator, supervoxels: bool):
        subject, uses, segments = self._mni.get(sequence, (None, 0, None))
        if uses <= 0:
            seeds = self.config.mni_seeds
            subject = mni_subject(int(seeds[int(rng.integers(len(seeds)))]), sequence=sequence)
            uses, segments = self.config.reuse, None
        if supervoxels and segments is None:
            from skimage.segmentation import slic

            segments = slic(subject.image.array.astype(np.float64), n_segments=int(rng.integers(80, 400)),
                            compactness=float(rng.uniform(0.05, 0.3)), channel_axis=None,
                            mask=subject.label.array > 0, start_label=1).astype(np.int32)
        self._mni[sequence] = (subject, uses - 1, segments)
        return subject, segments

    @staticmethod
    def _brain_spacing(subject, rng: np.random.Generator) -> np.ndarray:
        """The pseudo-subject's spacing (mm along k, j, i) times a random factor: brains of other
        sizes (a child's, a primate's) seen at other resolutions."""
        return subject.image.spacing[::-1].astype(np.float64) * float(np.exp(rng.uniform(np.log(0.3),
                                                                                           np.log(1.2))))

    def _sub_box(self, shape: Sequence[int], rng: np.random.Generator) -> tuple[slice, ...]:
        """A random sub-box of at least half of each axis (or all of it)."""
        if rng.random() < 0.4:
            return tuple(slice(0, n) for n in shape)
        sizes = [int(rng.integers(n // 2, n + 1)) for n in shape]
        starts = [int(rng.integers(0, n - s + 1)) for n, s in zip(shape, sizes)]
        return tuple(slice(a, a + s) for a, s in zip(starts, sizes))

    def _mni_parcels(self, rng: np.random.Generator) -> Scene:
        subject, _ = self._mni_subject("t1", rng, supervoxels=False)
        box = self._sub_box(subject.label.shape, rng)
        tissues = subject.label.array[box]
        spacing = self._brain_spacing(subject, rng)
        label = np.zeros(tissues.shape, np.uint16)
        tissue_of, unions, value = {0: 0}, [], 0
        for tissue in (1, 2, 3):
            present = tissues == tissue
            if present.sum() < MIN_TARGET_VOXELS:
                continue
            parcels = _voronoi_parcels(present, int(rng.integers(1, 7)), rng)
            values = []
            for index in range(1, int(parcels.max()) + 1):
                value += 1
                label[parcels == index] = value
                tissue_of[value] = tissue
                values.append(value)
            unions.append(tuple(values))
        modality = self._modality(rng)
        image = render(label, spacing, rng, tissue_of, modality, air=self._outside(modality, rng))
        volume, labels = self._acquire(image, {"label": label}, spacing, rng)
        present = set(int(v) for v in np.unique(labels["label"])) - {0}
        targets = [SceneTarget("parcel", (v,), frozenset({"box"})) for v in present]
        targets += [SceneTarget("tissue", tuple(v for v in u if v in present), frozenset({"box"}))
                    for u in unions if len(u) > 1]
        targets += [SceneTarget("brain", tuple(sorted(present)), frozenset({"box"}))]
        return Scene(volume, labels, targets, "mni-parcels", modality)

    def _mni_real(self, rng: np.random.Generator) -> Scene:
        sequence = "t1" if rng.random() < 0.6 else "t2like"
        subject, segments = self._mni_subject(sequence, rng, supervoxels=True)
        box = self._sub_box(segments.shape, rng)
        spacing = self._brain_spacing(subject, rng)
        volume, labels = self._acquire(subject.image.array[box],
                                       {"label": segments[box], "tissue": subject.label.array[box]},
                                       spacing, rng)
        label = labels["label"]
        present = [int(v) for v in np.unique(label) if v > 0]
        chosen = [int(v) for v in rng.choice(present, size=min(6, len(present)), replace=False)]
        targets = [SceneTarget("supervoxel", (v,), frozenset({"box"})) for v in chosen]
        for v in chosen[:3]:
            neighbours = rng.permutation(sorted(_adjacent(label, v) - {0}))[: int(rng.integers(1, 5))]
            targets.append(SceneTarget("merged supervoxels", tuple(sorted({v, *map(int, neighbours)})),
                                       frozenset({"box"})))
        targets += [SceneTarget("tissue", (t,), frozenset({"click"}), labels="tissue") for t in (1, 2, 3)]
        targets.append(SceneTarget("brain", (1, 2, 3), frozenset({"box"}), labels="tissue"))
        return Scene(volume, labels, targets, "mni-real", "mr")

    def _phantoms(self, rng: np.random.Generator) -> Scene:
        make = ct_phantom if rng.random() < 0.5 else mr_phantom
        shape = tuple(int(n) for n in rng.integers((24, 48, 48), (64, 112, 112)))
        spacing = tuple(float(s) for s in rng.uniform((0.7, 0.7, 1.0), (3.5, 3.5, 6.0)))
        subject = make(int(rng.integers(TRAIN_SEEDS.stop)), shape=shape, spacing=spacing,
                       oblique=bool(rng.random() < self.config.oblique_share))
        label = subject.label.array
        image, modality = subject.image, subject.modality.lower()
        if rng.random() < 0.5:  # the same anatomy in a contrast no phantom has
            modality = self._modality(rng)
            image = Volume(render(label, subject.image.spacing[::-1], rng, None, modality,
                                  air=self._outside(modality, rng)), subject.image.ijk_to_ras)
        values = [int(v) for v in np.unique(label) if v > 0]
        targets = [SceneTarget("organ", (v,)) for v in values]
        return Scene(image, {"label": label}, targets, "phantoms", modality)
