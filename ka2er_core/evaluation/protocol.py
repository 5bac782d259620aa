"""The interaction protocol on the volume grid, with Dice after every prompt.

First prompt: a box around the target (first box: around the largest component, when the target has
several separate parts such as both kidneys in one label; Dice is still measured on the whole
target), or one click at the centre of the largest missed component;
then each click at the centre of the largest error component, positive on missed foreground,
negative on a false positive. Reports Dice per prompt, NoC85/NoC90 and per-prompt latency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from ..errors import EmptyMaskError
from ..geometry import ijk_box_to_ras, ijk_to_ras_points
from ..inference.protocols import Session
from ..inference.result import Result
from ..modelspace.clicks import first_box, next_click
from ..volume import Volume


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & truth).sum()) / total


@dataclass
class ProtocolRun:
    dice: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    def record(self, prompt: str, mask: np.ndarray, truth: np.ndarray, result: Result) -> None:
        """A prompt's outcome: the session's ``mask`` against ``truth``."""
        self.prompts.append(prompt)
        self.dice.append(dice(mask, truth))
        self.latency_ms.append(result.latency_ms)
        self.members.append(result.member)

    def record_none(self, prompt: str) -> None:
        """A prompt not sent (the mask is already perfect, or the model takes no box): the scores
        stay as they were (0 before any prompt)."""
        self.prompts.append(prompt)
        self.dice.append(self.dice[-1] if self.dice else 0.0)
        self.latency_ms.append(0.0)
        self.members.append(self.members[-1] if self.members else "")

    def clicks_to(self, threshold: float) -> Optional[int]:
        """Number of prompts to reach ``threshold`` Dice (NoC), None if never reached."""
        for index, value in enumerate(self.dice):
            if value >= threshold:
                return index + 1
        return None

    def to_dict(self) -> dict:
        return {**asdict(self), "noc85": self.clicks_to(0.85), "noc90": self.clicks_to(0.90)}


def first_prompt(first: str, identifying, prompt_types) -> str:
    """The kind of a target's first prompt: ``first`` ("box" or "click"), or with "auto" a box when
    one identifies the target (``identifying``: the kinds that do, see
    :func:`~ka2er_core.modelspace.clicks.first_prompts`); a click for a model that takes no boxes."""
    if "box" not in prompt_types:
        return "click"
    return first if first != "auto" else ("box" if "box" in identifying else "click")


def run_protocol(session: Session, image: Volume, truth: np.ndarray, prompts: int,
                 first: str = "box", target: str = "target", box=first_box, click=next_click,
                 run: Optional[ProtocolRun] = None) -> ProtocolRun:
    """Drive ``session`` (any :class:`~ka2er_core.inference.protocols.Session`, image already set)
    for one target. ``first``: "box" (``box(truth)`` gives its inclusive (k, j, i) bounds; by
    default around the target's largest connected component, :func:`~ka2er_core.modelspace.clicks.
    first_box`), "click", or "none" (no first prompt: the clicks start from an empty mask). Each
    click goes where ``click(mask, truth)`` puts it; ``run`` records the outcomes (default: a new
    :class:`ProtocolRun`)."""
    truth = truth.astype(bool)
    if not truth.any():
        raise EmptyMaskError("the reference mask is empty: nothing to prompt for", path=image.path,
                             field=target)
    session.set_target(target)
    run = ProtocolRun() if run is None else run
    for index in range(prompts):
        if index == 0 and first == "box":
            lo, hi = box(truth)
            result = session.add_box(*ijk_box_to_ras(lo[::-1], hi[::-1], image.ijk_to_ras))
            run.record("box", session.mask > 0, truth, result)
            continue
        if index == 0 and first == "none":
            run.record_none("no box")
            continue
        where = click(session.mask > 0, truth)
        if where is None:  # already perfect: the score stays
            run.record_none("none")
            continue
        kji, positive = where
        ras = ijk_to_ras_points(kji[::-1].astype(float), image.ijk_to_ras)
        result = session.add_point(ras, positive=positive)
        run.record("+" if positive else "-", session.mask > 0, truth, result)
    return run
