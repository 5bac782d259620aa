"""A labelled image: what the data generators return and the dataset reader loads."""

from __future__ import annotations

from dataclasses import dataclass

from ..volume import Volume


@dataclass(frozen=True)
class Subject:
    """``image`` and ``label`` (uint8 label map, ``label.labels`` = {name: value}) on one grid."""

    image: Volume
    label: Volume
    name: str
    modality: str  # "CT" or "MR"
    task: str
