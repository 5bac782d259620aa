"""Simulated prompts, following DESIGN.md's interaction protocol.

First prompt: a box around the target (around its largest connected component, :func:`first_box`,
when it has several parts, such as both kidneys in one label), or one click at the centre of the
largest missed component (:func:`first_prompts` says which of the two identifies the target); then
each click at the centre
(maximum of the distance transform) of the largest error component, positive for missed foreground,
negative for a false positive; a simulated scribble or lasso there (:func:`next_stroke`) teaches
the model the multi-point prompts the session makes of them. Arrays are (k, j, i).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

from ..geometry import foreground_bounds


def component_centre(mask: np.ndarray) -> Optional[tuple[np.ndarray, int]]:
    """(k, j, i) of the deepest voxel of the largest connected component, and that component's size."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    box = ndimage.find_objects((labels == largest).astype(np.int8))[0]
    component = labels[box] == largest
    depth = ndimage.distance_transform_edt(np.pad(component, 1))[1:-1, 1:-1, 1:-1]
    local = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return np.array([s.start + c for s, c in zip(box, local)]), int(sizes[largest - 1])


def interior_points(mask: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` voxel indices (M, mask.ndim) standing for a region (bool, 2D or 3D) as
    clicks: its deepest voxel (maximum of the distance transform) first, then each next the farthest
    from those chosen among the voxels at least half as deep (away from the border)."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]
    candidates = np.argwhere(depth >= depth.max() / 2)
    chosen = [np.array(np.unravel_index(int(np.argmax(depth)), depth.shape))]
    distance = np.linalg.norm(candidates - chosen[0], axis=1)
    while len(chosen) < count and distance.max() > 0:
        farthest = candidates[int(np.argmax(distance))]
        chosen.append(farthest)
        distance = np.minimum(distance, np.linalg.norm(candidates - farthest, axis=1))
    return np.array(chosen)


TOUCHING = np.ones((3, 3, 3), bool)
"""Voxels that share a face, an edge or a corner are one component (26-connectivity)."""


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of ``mask`` (``mask`` itself when it has one; all False
    when it is empty)."""
    labels, count = ndimage.label(mask, structure=TOUCHING)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def first_box(mask: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The protocol's first box, inclusive (k, j, i) bounds (lo, hi): around the target's largest
    connected component. A target in one piece gets its own bounds; one in several parts (both
    kidneys in one label) gets a box around its largest part, not one box around all of them, which
    would hold the space between (and other organs) and name no structure. None if empty."""
    return foreground_bounds(largest_component(mask))


def error_component(prediction: np.ndarray, truth: np.ndarray) -> Optional[tuple[np.ndarray, bool]]:
    """The largest error component (bool, (k, j, i)) and whether it is missed foreground (a
    positive correction), the missed one on a tie, as :func:`next_click` picks it; None if perfect."""
    largest = None
    for positive, error in ((True, truth & ~prediction), (False, prediction & ~truth)):
        labels, count = ndimage.label(error)
        if count:
            sizes = np.bincount(labels.ravel())[1:]
            if largest is None or sizes.max() > largest[2]:
                largest = (labels == int(np.argmax(sizes)) + 1, positive, sizes.max())
    return None if largest is None else largest[:2]


def next_stroke(prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator,
                count: int) -> Optional[tuple[np.ndarray, bool]]:
    """A simulated scribble or lasso (even odds) on the largest error component: up to ``count``
    voxels (M, 3) (k, j, i) and whether it is positive; None if perfect. A scribble runs along the
    component's longest axis through its deepest voxel of each stretch; a lasso stands for the
    component's cross-section on one slice (random axis) through its deepest voxel, as the session
    encodes a drawn lasso (:func:`interior_points`)."""
    error = error_component(prediction, truth)
    if error is None:
        return None
    component, positive = error
    box = ndimage.find_objects(component.astype(np.int8))[0]
    start = np.array([s.start for s in box])
    inside = component[box]
    depth = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1, 1:-1]
    if rng.random() < 0.5:
        voxels = np.argwhere(inside)
        centred = voxels - voxels.mean(axis=0)
        along = centred @ np.linalg.svd(centred[:: max(1, len(centred) // 2000)],
                                        full_matrices=False)[2][0]
        stretch = np.minimum((along - along.min()) / (np.ptp(along) + 1e-9) * count, count - 1)
        stretches = [voxels[stretch.astype(int) == n] for n in range(count)]
        points = [part[np.argmax(depth[tuple(part.T)])] for part in stretches if len(part)]
        return start + np.array(points), positive
    deepest = np.array(np.unravel_index(int(np.argmax(depth)), depth.shape))
    axis = int(rng.integers(3))
    section = np.take(inside, deepest[axis], axis=axis)
    labels, _ = ndimage.label(section)
    plane = np.delete(deepest, axis)
    points = interior_points(labels == labels[tuple(plane)], count)
    return start + np.insert(points, axis, deepest[axis], axis=1), positive


def next_click(prediction: np.ndarray, truth: np.ndarray) -> Optional[tuple[np.ndarray, bool]]:
    """The protocol's next click: ((k, j, i), positive) at the largest error component; None if perfect."""
    missed = component_centre(truth & ~prediction)
    extra = component_centre(prediction & ~truth)
    if missed is None and extra is None:
        return None
    if extra is None or (missed is not None and missed[1] >= extra[1]):
        return missed[0], True
    return extra[0], False


BOX_JITTER = 0.1
"""How far each side of a simulated box may move, as a share of the target's extent along it."""


def jittered_box(mask: np.ndarray, rng: np.random.Generator, jitter: float = BOX_JITTER):
    """A box around the foreground with each side moved by up to ``jitter`` of its extent, (k, j, i)."""
    lo, hi = foreground_bounds(mask)
    extent = hi - lo + 1
    lo = lo + rng.uniform(-jitter, jitter, 3) * extent
    hi = hi + rng.uniform(-jitter, jitter, 3) * extent
    return np.minimum(lo, hi), np.maximum(lo, hi)


SAME_BOX_IOU = (1 - 2 * BOX_JITTER) ** 3
"""Two boxes overlapping at least this much (a box and the same box with every side moved in by
:data:`BOX_JITTER`) are one box as a user draws it."""


def same_box(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    """Whether two inclusive voxel boxes (lo, hi) are one box as a user draws it: their
    intersection over union is at least :data:`SAME_BOX_IOU` (white matter's box without the
    cerebellum's separate white matter is still the brain's box)."""
    size = lambda lo, hi: float(np.prod(np.maximum(hi - lo + 1, 0)))  # noqa: E731
    inside = size(np.maximum(a[0], b[0]), np.minimum(a[1], b[1]))
    return inside >= SAME_BOX_IOU * (size(*a) + size(*b) - inside)


def first_prompts(label: np.ndarray, targets: Mapping[str, Sequence[int]]) -> dict[str, frozenset]:
    """Which first prompts ("box", "click") identify each target present in ``label`` (k, j, i).

    Nested targets share a box (:func:`same_box`: no farther apart than a drawn box's own jitter):
    white matter, grey matter and CSF all have the brain's box. A box then means the largest of them
    (the brain), and the others can only start with a click, which means the smallest target under
    it. A region made of other targets (the brain: grey + white + CSF) never starts with a click,
    which would name the tissue under it. Boxes are the protocol's (:func:`first_box`: around a
    target's largest part).
    """
    masks = {name: np.isin(label, values) for name, values in targets.items()}
    sizes = {name: int(mask.sum()) for name, mask in masks.items()}
    boxes = {name: first_box(mask) for name, mask in masks.items() if sizes[name]}
    kinds = {}
    for name, box in boxes.items():
        shared = [other for other, other_box in boxes.items()
                  if other != name and same_box(box, other_box)]
        is_region = any(set(targets[other]) < set(targets[name]) for other in boxes if other != name)
        box_names_it = all(sizes[other] < sizes[name] for other in shared)
        if is_region:
            kinds[name] = frozenset({"box"})
        elif box_names_it:
            kinds[name] = frozenset({"box", "click"})
        else:
            kinds[name] = frozenset({"click"})
    return kinds
