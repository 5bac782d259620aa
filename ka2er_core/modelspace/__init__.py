"""Model space: the one place where a volume meets a model.

Prompts in RAS become crop-voxel tokens (:class:`Crop`), the volume is sampled and normalised for the
model (:meth:`Crop.sample`, :func:`outside_value`), crops are planned around prompts
(:func:`plan_crop`), clicks are simulated the way the evaluation protocol places them
(:mod:`.clicks`), and answers go back to the volume's grid (:mod:`.paste`). The session, training
samples and sliding-window inference all go through it.
"""

from .crop import MARGIN, ZOOM_STEP, Crop, centred_crop, plan_crop, quantise_spacing
from .prompts import Box, Point, Prompt

__all__ = ["Box", "Crop", "MARGIN", "Point", "Prompt", "ZOOM_STEP", "centred_crop", "plan_crop",
           "quantise_spacing"]
