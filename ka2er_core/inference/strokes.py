"""Scribbles and lassos for the session: the prompts built from checked RAS points, and a lasso's
enclosed voxels written into its result (the user drew that region)."""

from __future__ import annotations

import numpy as np

from ..geometry import ijk_to_ras_points
from ..modelspace import Lasso, Prompt, Scribble
from ..modelspace.clicks import interior_points
from ..modelspace.paste import Render
from ..modelspace.strokes import MAX_STROKE_TOKENS
from ..volume import Volume
from .result import check_lasso, check_stroke


def make_scribble(volume: Volume, points, positive: bool) -> Scribble:
    """A scribble through ``points`` (N >= 2, 3) RAS mm inside ``volume``."""
    return Scribble(check_stroke(volume, points, "scribble", 2), bool(positive))


def make_lasso(volume: Volume, contour, positive: bool) -> Lasso:
    """A lasso ``contour`` (N >= 3, 3) RAS mm on one slice of ``volume``, with seeds (its region's
    :func:`~ka2er_core.modelspace.clicks.interior_points`) as RAS points."""
    contour, region, filled = check_lasso(volume, contour)
    thin = tuple(a for a in range(3) if filled.shape[a] == 1)
    seeds = interior_points(np.squeeze(filled, axis=thin), MAX_STROKE_TOKENS)
    for axis in thin:
        seeds = np.insert(seeds, axis, 0, axis=1)
    kji = seeds + [s.start for s in region]
    return Lasso(contour, bool(positive), ijk_to_ras_points(kji[:, ::-1], volume.ijk_to_ras),
                 region, filled)


def drawn_pieces(prompt: Prompt, answer: Render) -> list[Render]:
    """What the user drew as a piece to write after the model's ``answer``: a lasso's enclosed
    voxels set (positive) or cleared (negative); nothing for other prompts."""
    if not isinstance(prompt, Lasso):
        return []
    return [Render(answer.crop, answer.logits, prompt.region,
                   np.full(prompt.filled.shape, prompt.positive), prompt.filled)]
