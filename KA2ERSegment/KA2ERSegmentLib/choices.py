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


PROMPT_TYPE = {PromptKind.POSITIVE_POINT: "point", PromptKind.NEGATIVE_POINT: "point",
               PromptKind.BOX: "box"}
"""The engine's name (a session's ``prompt_types``) for what each kind places."""


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
