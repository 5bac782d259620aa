"""Simulated prompts, following DESIGN.md's interaction protocol.

First prompt: a box around the target, or one click at the centre of the largest missed component;
then each click at the centre (maximum of the distance transform) of the largest error component,
positive for missed foreground, negative for a false positive. Arrays are (k, j, i).
"""

from __future__ import annotations

from typing import Optional

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


def next_click(prediction: np.ndarray, truth: np.ndarray) -> Optional[tuple[np.ndarray, bool]]:
    """The protocol's next click: ((k, j, i), positive) at the largest error component; None if perfect."""
    missed = component_centre(truth & ~prediction)
    extra = component_centre(prediction & ~truth)
    if missed is None and extra is None:
        return None
    if extra is None or (missed is not None and missed[1] >= extra[1]):
        return missed[0], True
    return extra[0], False


def jittered_box(mask: np.ndarray, rng: np.random.Generator, jitter: float = 0.1):
    """A box around the foreground with each side moved by up to ``jitter`` of its extent, (k, j, i)."""
    lo, hi = foreground_bounds(mask)
    extent = hi - lo + 1
    lo = lo + rng.uniform(-jitter, jitter, 3) * extent
    hi = hi + rng.uniform(-jitter, jitter, 3) * extent
    return np.minimum(lo, hi), np.maximum(lo, hi)
