"""Procedural label maps: shapes a user might prompt, at many sizes, painted over a structured background.

Every generator works in millimetres on a grid of ``shape`` (k, j, i) and ``spacing`` (mm along k, j, i),
returns a boolean (k, j, i) mask and is seeded only by the ``rng`` it is given. A scene paints a
few background regions (the tissue a structure sits in) and then objects, each over the ones before
(so objects touch, overlap and nest).

Families: ``blob`` (thresholded smooth noise in an envelope: irregular, often several components),
``ellipsoid`` (with a wobbly surface), ``tube`` (a smooth curve of constant radius), ``branching``
(a tree of tubes that thin out), ``sheet`` (a bent slab one to a few mm thick), ``shell`` (a hollow
ellipsoid; its content is a label of its own) and ``nested`` (an object with another inside it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .fields import smooth_field


@dataclass
class ShapeScene:
    """A label map (uint16, (k, j, i); 0 is never used: the background regions are labels too) and
    the label values of its ``background`` regions; ``unions``: groups of labels that make one
    structure together (a shell and its content, an object and what is nested in it)."""

    label: np.ndarray
    background: list[int]
    unions: list[tuple[int, ...]] = field(default_factory=list)


class Canvas:
    """Millimetre coordinates of a grid's voxels, centred on the grid's middle, and its extent."""

    def __init__(self, shape: Sequence[int], spacing: Sequence[float]):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = np.asarray(spacing, dtype=np.float32)
        self.extent = np.asarray(self.shape) * self.spacing  # mm along k, j, i
        axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(self.shape, self.spacing)]
        self.mm = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (k, j, i, 3)

    def random_point(self, rng: np.random.Generator, inset: float = 0.35) -> np.ndarray:
        """A point within ``inset`` of the extent around the centre."""
        return rng.uniform(-inset, inset, 3) * self.extent

    def size(self, rng: np.random.Generator, smallest: float = 4.0, largest: float = 0.5) -> float:
        """A characteristic radius in mm, log-uniform from ``smallest`` mm to ``largest`` of the
        smallest extent (a few voxels to most of the field of view)."""
        top = max(smallest * 1.5, largest * float(self.extent.min()))
        return float(np.exp(rng.uniform(np.log(smallest), np.log(top))))

    def field(self, rng: np.random.Generator, control_points: int) -> np.ndarray:
        """A smooth random field (about unit variance): cubic on a grid 4x coarser, then trilinear."""
        coarse = smooth_field(rng, tuple(-(-n // 4) for n in self.shape), control_points)
        return torch.nn.functional.interpolate(torch.from_numpy(coarse)[None, None], size=self.shape,
                                               mode="trilinear", align_corners=True)[0, 0].numpy()

    def rasterise(self, points_mm: np.ndarray) -> np.ndarray:
        """Boolean grid with the voxels nearest the given mm points set."""
        index = np.round(points_mm / self.spacing + (np.asarray(self.shape) - 1) / 2).astype(int)
        inside = np.all((index >= 0) & (index < np.asarray(self.shape)), axis=1)
        grid = np.zeros(self.shape, bool)
        grid[tuple(index[inside].T)] = True
        return grid

    def distance_to(self, seeds: np.ndarray) -> np.ndarray:
        """Distance in mm from every voxel to the nearest seed voxel."""
        if not seeds.any():
            return np.full(self.shape, np.inf, np.float32)
        return ndimage.distance_transform_edt(~seeds, sampling=self.spacing).astype(np.float32)


def _local(canvas: Canvas, centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Voxel coordinates in a randomly rotated frame around ``centre`` (k, j, i, 3)."""
    rotation = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix().astype(np.float32)
    return (canvas.mm - centre) @ rotation


def ellipsoid(canvas: Canvas, rng: np.random.Generator, centre=None, radius=None,
              wobble: float = 0.25) -> np.ndarray:
    centre = canvas.random_point(rng) if centre is None else centre
    radius = canvas.size(rng) if radius is None else radius
    axes = radius * np.exp(rng.uniform(-0.5, 0.5, 3)).astype(np.float32)
    level = np.sum((_local(canvas, centre, rng) / axes) ** 2, axis=-1)
    return level <= 1 + wobble * rng.uniform() * canvas.field(rng, int(rng.integers(3, 7)))


def blob(canvas: Canvas, rng: np.random.Generator, centre=None, radius=None) -> np.ndarray:
    centre = canvas.random_point(rng) if centre is None else centre
    radius = canvas.size(rng, smallest=5.0) if radius is None else radius
    envelope = np.sqrt(np.sum((_local(canvas, centre, rng) / radius) ** 2, axis=-1))
    score = canvas.field(rng, int(rng.integers(4, 12))) - 1.5 * envelope
    inside = score[envelope < 1]
    if not inside.size:  # the envelope misses every voxel centre: a one-voxel blob at the centre
        return canvas.rasterise(np.asarray(centre)[None])
    return score >= np.quantile(inside, 1 - rng.uniform(0.3, 0.8))  # fills 30-80 % of its envelope


def _curve(canvas: Canvas, rng: np.random.Generator, start: np.ndarray, length: float) -> np.ndarray:
    """Points (N, 3) mm along a smooth random curve from ``start``, about ``length`` mm long."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    knots = [start]
    for _ in range(4):
        direction = direction + rng.normal(scale=0.6, size=3)
        direction /= np.linalg.norm(direction)
        knots.append(knots[-1] + direction * length / 4)
    knots = np.asarray(knots)
    steps = max(8, int(length / (0.5 * float(canvas.spacing.min()))))
    t = np.linspace(0, len(knots) - 1, steps)
    # Catmull-Rom through the knots (ends repeated): smooth, passes through every knot.
    padded = np.vstack([knots[:1], knots, knots[-1:]])
    index = np.minimum(t.astype(int), len(knots) - 2)
    u = (t - index)[:, None]
    p0, p1, p2, p3 = (padded[index + offset] for offset in range(4))
    return 0.5 * (2 * p1 + (p2 - p0) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2
                  + (3 * p1 - p0 - 3 * p2 + p3) * u ** 3)


def tube(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    radius = float(np.exp(rng.uniform(np.log(0.8), np.log(6.0))))
    radius = max(radius, 0.6 * float(canvas.spacing.min()))
    length = rng.uniform(0.4, 1.2) * float(canvas.extent.max())
    points = _curve(canvas, rng, canvas.random_point(rng, 0.3), length)
    return canvas.distance_to(canvas.rasterise(points)) <= radius


def branching(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """A vessel tree: a trunk and two generations of branches from random points of their parents,
    each thinner than its parent (radii by distance maps, one per generation)."""
    radius = float(np.exp(rng.uniform(np.log(1.5), np.log(6.0))))
    radius = max(radius, 0.8 * float(canvas.spacing.min()))
    length = rng.uniform(0.6, 1.0) * float(canvas.extent.max())
    parents = [_curve(canvas, rng, canvas.random_point(rng, 0.3), length)]
    mask = canvas.distance_to(canvas.rasterise(parents[0])) <= radius
    for _ in range(2):
        radius, length = radius * rng.uniform(0.55, 0.8), length * 0.55
        children = [_curve(canvas, rng, parent[rng.integers(len(parent))], length)
                    for parent in parents for _ in range(int(rng.integers(1, 4)))]
        mask |= canvas.distance_to(canvas.rasterise(np.vstack(children))) <= max(
            radius, 0.6 * float(canvas.spacing.min()))
        parents = children
    return mask


def sheet(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    thickness = float(np.exp(rng.uniform(np.log(1.0), np.log(5.0))))
    thickness = max(thickness, 1.2 * float(canvas.spacing.min()))
    centre = canvas.random_point(rng, 0.2)
    local = _local(canvas, centre, rng)
    bend = canvas.field(rng, int(rng.integers(2, 5))) * rng.uniform(0, 0.15) * float(canvas.extent.min())
    across = np.abs(local[..., 0] - bend) <= thickness / 2
    reach = canvas.size(rng, smallest=10.0, largest=0.6)
    return across & (np.hypot(local[..., 1], local[..., 2]) <= reach)


def shell(canvas: Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A hollow ellipsoid: (wall, content)."""
    centre = canvas.random_point(rng)
    radius = max(canvas.size(rng, smallest=6.0), 4 * float(canvas.spacing.max()))
    outer = ellipsoid(canvas, rng, centre, radius, wobble=0.1)
    wall = float(np.exp(rng.uniform(np.log(1.0), np.log(0.35 * radius))))
    content = outer & (canvas.distance_to(~outer) > wall)
    return outer & ~content, content


def nested(canvas: Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An object and a smaller one inside it: (outer part, inner)."""
    centre = canvas.random_point(rng)
    radius = max(canvas.size(rng, smallest=8.0), 5 * float(canvas.spacing.max()))
    make: Callable = blob if rng.random() < 0.5 else ellipsoid
    outer = make(canvas, rng, centre, radius)
    inside = np.argwhere(canvas.distance_to(~outer) > 2 * float(canvas.spacing.max()))
    if not len(inside):
        return outer, np.zeros_like(outer)
    at = canvas.mm[tuple(inside[rng.integers(len(inside))])]
    inner = ellipsoid(canvas, rng, at, radius * rng.uniform(0.15, 0.45)) & outer
    return outer & ~inner, inner


GENERATORS: dict[str, Callable] = {"blob": blob, "ellipsoid": ellipsoid, "tube": tube,
                                   "branching": branching, "sheet": sheet, "shell": shell,
                                   "nested": nested}


def background_regions(canvas: Canvas, rng: np.random.Generator, count: int) -> np.ndarray:
    """Indices 0..count-1: the grid split into smooth regions (argmax of smooth fields)."""
    if count == 1:
        return np.zeros(canvas.shape, np.uint16)
    fields = np.stack([canvas.field(rng, int(rng.integers(2, 5))) for _ in range(count)])
    return np.argmax(fields, axis=0).astype(np.uint16)


def shape_scene(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float],
                families: Sequence[str] = tuple(GENERATORS), objects: tuple[int, int] = (2, 7)) -> ShapeScene:
    """A label map of background regions (1..B) and objects of ``families`` painted over them."""
    unknown = set(families) - set(GENERATORS)
    if unknown or not families:
        raise ValueError(f"families must be some of {sorted(GENERATORS)}, got {list(families)}")
    canvas = Canvas(shape, spacing)
    count = int(rng.integers(1, 5))
    label = background_regions(canvas, rng, count) + 1
    scene = ShapeScene(label, list(range(1, count + 1)))
    value = count
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        family = families[int(rng.integers(len(families)))]
        made = GENERATORS[family](canvas, rng)
        parts = made if isinstance(made, tuple) else (made,)
        values = []
        for part in parts:
            if part.any():
                value += 1
                label[part] = value
                values.append(value)
        if len(values) > 1:
            scene.unions.append(tuple(values))
    return scene
