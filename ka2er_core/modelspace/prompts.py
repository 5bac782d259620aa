"""Prompts in RAS millimetres, as every public API takes them: a point or a box."""

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


Prompt = Union[Point, Box]
