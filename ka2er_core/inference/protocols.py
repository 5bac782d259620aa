"""The contract every way of segmenting by prompts keeps: :class:`InteractiveSession` (local),
:class:`~ka2er_core.server.client.RemoteSession` (over HTTP), the random-walker baseline and the
demo's narrating session; :func:`~ka2er_core.evaluation.protocol.run_protocol` drives any of them."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from .result import Result


@runtime_checkable
class Session(Protocol):
    """Prompts in RAS millimetres for the current target; its mask (uint8, (k, j, i)) out."""

    @property
    def mask(self) -> np.ndarray: ...

    def set_target(self, name: str) -> None: ...

    def add_point(self, ras: Sequence[float], positive: bool = True) -> Result: ...

    def add_box(self, corner_a: Sequence[float], corner_b: Sequence[float]) -> Result: ...
