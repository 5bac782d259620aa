"""The user's choices as named values: the kinds of prompt the panel places, where the model comes
from, and where it runs. Nothing here needs Slicer."""

from __future__ import annotations

import enum
from typing import NamedTuple

AUTO = "auto"
"""Device: CUDA when available, else the CPU. Member: the bundle's gate (or its default) decides."""
DEVICES = (AUTO, "cpu", "cuda")


class PromptKind(enum.Enum):
    """What a placement button places; the value names it in help texts."""

    POSITIVE_POINT = "positive point"
    NEGATIVE_POINT = "negative point"
    BOX = "box"
    POSITIVE_SCRIBBLE = "positive scribble"
    NEGATIVE_SCRIBBLE = "negative scribble"
    POSITIVE_LASSO = "positive lasso"
    NEGATIVE_LASSO = "negative lasso"

    @property
    def positive(self) -> bool:
        """Whether it marks the target (a box always does)."""
        return not self.value.startswith("negative")


PROMPT_TYPE = {PromptKind.POSITIVE_POINT: "point", PromptKind.NEGATIVE_POINT: "point",
               PromptKind.BOX: "box",
               PromptKind.POSITIVE_SCRIBBLE: "scribble", PromptKind.NEGATIVE_SCRIBBLE: "scribble",
               PromptKind.POSITIVE_LASSO: "lasso", PromptKind.NEGATIVE_LASSO: "lasso"}
"""The engine's name (a session's ``prompt_types``) for what each kind places."""
CURVE_KINDS = tuple(kind for kind, name in PROMPT_TYPE.items() if name in ("scribble", "lasso"))
"""Kinds drawn as a Markups curve, sent once its placement ends."""


def offered_kinds(prompt_types) -> list[PromptKind]:
    """The placement buttons to offer for a model taking ``prompt_types`` (no box tool for a
    points-only model such as an imported SAM-Med3D)."""
    return [kind for kind in PromptKind if PROMPT_TYPE[kind] in prompt_types]


class PromptNode(NamedTuple):
    """The markups node prompts of one kind are placed with."""

    className: str
    name: str
    color: tuple[float, float, float]


PROMPT_NODES = {
    PromptKind.POSITIVE_POINT: PromptNode("vtkMRMLMarkupsFiducialNode", "KA2ER +", (0.2, 0.9, 0.2)),
    PromptKind.NEGATIVE_POINT: PromptNode("vtkMRMLMarkupsFiducialNode", "KA2ER -", (0.95, 0.2, 0.2)),
    PromptKind.BOX: PromptNode("vtkMRMLMarkupsROINode", "KA2ER box", (0.9, 0.8, 0.1)),
    PromptKind.POSITIVE_SCRIBBLE: PromptNode("vtkMRMLMarkupsCurveNode", "KA2ER scribble +",
                                             (0.2, 0.9, 0.2)),
    PromptKind.NEGATIVE_SCRIBBLE: PromptNode("vtkMRMLMarkupsCurveNode", "KA2ER scribble -",
                                             (0.95, 0.2, 0.2)),
    PromptKind.POSITIVE_LASSO: PromptNode("vtkMRMLMarkupsClosedCurveNode", "KA2ER lasso +",
                                          (0.2, 0.9, 0.2)),
    PromptKind.NEGATIVE_LASSO: PromptNode("vtkMRMLMarkupsClosedCurveNode", "KA2ER lasso -",
                                          (0.95, 0.2, 0.2)),
}


class ModelSource(enum.IntEnum):
    """Where the model comes from, in the order of the panel's Source list."""

    SHIPPED = 0
    FOLDER = 1
    SERVER = 2


def source_kind(source: str) -> ModelSource:
    """The kind of a model source as the parameter node keeps it: "" is the shipped model, an
    http(s) URL a server, anything else a bundle folder."""
    if not source:
        return ModelSource.SHIPPED
    if source.startswith(("http://", "https://")):
        return ModelSource.SERVER
    return ModelSource.FOLDER
