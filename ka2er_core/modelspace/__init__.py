"""Model space: the one place where a volume meets a model.

Prompts in RAS (points, boxes, scribbles, lassos) become crop-voxel tokens (:class:`Crop`), the
volume is sampled and normalised for the model (:meth:`Crop.sample`, :func:`outside_value`), crops
are planned around prompts (:func:`plan_crop`), clicks are simulated the way the evaluation protocol
places them (:mod:`.clicks`), and answers go back to the volume's grid (:mod:`.paste`). Code that
meets a volume without a crop asks :func:`continuous_voxel` / :func:`voxel_of` where a RAS point
falls. The session, training samples and sliding-window inference all go through it.

The crop's names load on first use: the crop needs torch (the prompt encoder's token labels), the
prompt types, :mod:`.voxels` and :mod:`.strokes` do not, so the server client's prompt checks stay
numpy only.
"""

from .prompts import Box, Lasso, Point, Prompt, Scribble
from .voxels import continuous_voxel, voxel_of

CROP_NAMES = ("MARGIN", "ZOOM_STEP", "Crop", "centred_crop", "plan_crop", "quantise_spacing")

__all__ = ["Box", "Lasso", "Point", "Prompt", "Scribble", "continuous_voxel", "voxel_of", *CROP_NAMES]


def __getattr__(name):
    if name in CROP_NAMES:
        from . import crop

        return getattr(crop, name)
    raise AttributeError(f"module 'ka2er_core.modelspace' has no attribute {name!r}")
