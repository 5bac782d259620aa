"""Prompts in RAS millimetres, as every public API takes them: a point, a box, a scribble or a
lasso. The model takes point and box tokens only; :meth:`~.crop.Crop.encode` turns a scribble or a
lasso into point tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np


@dataclass(frozen=True)
class Point:
    """A click at ``ras`` (mm), positive (the target is here) or negative (it is not)."""

    ras: np.ndarray
    positive: bool = True

    @property
    def corners(self) -> tuple[np.ndarray, ...]:
        return (self.ras,)


@dataclass(frozen=True)
class Box:
    """A box with opposite RAS corners ``low`` <= ``high`` (mm); one slice thick is a 2D box."""

    low: np.ndarray
    high: np.ndarray
    positive = True

    @property
    def corners(self) -> tuple[np.ndarray, ...]:
        return (self.low, self.high)


@dataclass(frozen=True)
class Scribble:
    """A polyline (a Markups curve's control points) ``points`` (N, 3) RAS mm drawn on the target
    (positive) or off it (negative); encoded as point tokens spaced evenly along it."""

    points: np.ndarray
    positive: bool = True

    @property
    def corners(self) -> tuple[np.ndarray, ...]:
        return tuple(self.points)


@dataclass(frozen=True)
class Lasso:
    """A closed curve ``contour`` (N, 3) RAS mm on one slice of the volume it was checked against:
    its filled region is in the target (positive) or out of it (negative). ``seeds`` (M, 3) RAS mm:
    points inside the region that stand for it as point tokens (the deepest first); ``region``
    (k, j, i) slices of the volume, one voxel thick along the slice's axis, and ``filled`` (bool,
    the region's shape): the voxels it encloses."""

    contour: np.ndarray
    positive: bool
    seeds: np.ndarray
    region: tuple[slice, slice, slice]
    filled: np.ndarray

    @property
    def corners(self) -> tuple[np.ndarray, ...]:
        return tuple(self.contour)


Prompt = Union[Point, Box, Scribble, Lasso]
