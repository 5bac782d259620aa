"""Texts of the panel's status line. Nothing here needs Slicer."""

from __future__ import annotations


def background_text(status) -> str:
    """How far the background embeddings of the target's corrections are (a
    :class:`~ka2er_core.inference.result.BackgroundStatus`); "" before there is a plan."""
    if status is None or status.planned == 0:
        return ""
    if status.ready >= status.planned:
        return f"corrections ready in {status.planned} regions"
    return f"preparing corrections: {status.ready} of {status.planned} regions ready"
