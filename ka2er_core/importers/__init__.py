"""Importers: weights trained elsewhere become ka2er bundles.

``import_sam_med3d(checkpoint, out)`` turns a SAM-Med3D checkpoint into a ``student`` bundle;
``import_nnunet(folder, out)`` an nnU-Net v2 trained-model folder into an ``expert`` bundle. Both read
third-party files with ``torch.load(weights_only=True)``: tensors, plain containers and numbers only,
plus the few inert classes training scripts put next to the weights
(:data:`~ka2er_core.importers.checkpoint.INERT_GLOBALS`); a file that needs any other Python object is
refused, never executed.
"""

from .checkpoint import CheckpointError
from .nnunet import import_nnunet
from .sam_med3d import import_sam_med3d

__all__ = ["CheckpointError", "import_nnunet", "import_sam_med3d"]
