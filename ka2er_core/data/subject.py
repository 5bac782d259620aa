"""A labelled image: what the data generators return."""

from __future__ import annotations

from dataclasses import dataclass

from ..volume import Volume


@dataclass(frozen=True)
class Subject:
    """``image`` (float32) and ``label`` (uint8, ``label.labels`` = {name: value}) on one grid.

    Both arrays are (k, j, i); ``ijk_to_ras`` maps voxels to RAS mm. ``modality`` is "CT" or "MR";
    ``task`` names the task the subject belongs to (tasks split by modality or sequence).
    """

    image: Volume
    label: Volume
    name: str
    modality: str
    task: str
