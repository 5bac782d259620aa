"""SAM-Med3D behind the :class:`~ka2er_core.modeling.protocols.PromptableModel` contract."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import PromptError
from ..prompt_encoder import NEGATIVE, PAD, POSITIVE
from ..protocols import Embedding, EmbeddingLayout
from .config import SamMed3DConfig
from .image_encoder import ImageEncoder3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D

MASK_LOGIT = 8.0
"""SAM-Med3D's mask prompt is its previous logits at 1/4 resolution; our sessions keep masks, so a mask
in [0, 1] is averaged over 4^3 voxels and mapped linearly to [-MASK_LOGIT, MASK_LOGIT]."""


class SamMed3D(nn.Module):
    """SAM-Med3D behind the promptable-model interface: ``embed`` once per crop, ``decode`` per click.

    Coordinates and arrays are ours: crops (B, C, S, S, S) in (k, j, i) order, points crop-voxel
    (i, j, k). The model's tensors are (x, y, z) = (i, j, k): ``embed`` and ``decode`` transpose image,
    mask prompt and logits; points pass unchanged. Boxes are refused: SAM-Med3D's prompt encoder has
    no box-corner embeddings (boxes were never trained).
    """

    PROMPT_TYPES = ("point",)
    """SAM-Med3D was trained on points only (its prompt encoder has no box embeddings)."""

    def __init__(self, config: SamMed3DConfig):
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder3D(config)
        self.prompt_encoder = PromptEncoder3D(config)
        self.mask_decoder = MaskDecoder3D(config)

    @property
    def layout(self) -> EmbeddingLayout:
        """One grid of n^3 tokens, n = S / patch_size: the last block's (encoder_dim wide; the one
        stage, amalgamated single-scale) and the neck's (dim wide); no full-resolution features."""
        c = self.config
        return EmbeddingLayout(dim=c.dim, token_factor=c.patch_size, stage_channels=(c.encoder_dim,),
                               stage_factors=(c.patch_size,), fine_channels=0, amalgamated=(0,))

    def embed(self, image: torch.Tensor) -> Embedding:
        """Normalised crops (B, C, S, S, S), axes (k, j, i) -> Embedding: ``tokens`` (B, dim, n, n, n),
        ``stages`` [(B, encoder_dim, n, n, n)], axes (k, j, i), no ``fine``."""
        return self.embed_from_stages(image, self.stages(image))

    def stages(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Normalised crops (B, C, S, S, S), axes (k, j, i) -> [the last encoder block's tokens
        (B, encoder_dim, n, n, n), axes (k, j, i)]."""
        return [self.image_encoder.encode(image.permute(0, 1, 4, 3, 2)).permute(0, 4, 3, 2, 1)]

    def embed_from_stages(self, image: torch.Tensor, stages: list[torch.Tensor]) -> Embedding:
        """The neck applied to the one stage (as :meth:`stages` returns it); ``image`` is not read."""
        tokens = self.image_encoder.neck(stages[0].permute(0, 1, 4, 3, 2))  # (B, dim, x, y, z)
        return Embedding(tokens=tokens.permute(0, 1, 4, 3, 2), stages=list(stages), fine=None)

    def prompt_tokens(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """coords (B, N, 3) crop-voxel (i, j, k), labels (B, N) points -> tokens (B, N, dim)."""
        return self.prompt_encoder.points(coords, labels)[:, :-1]

    def decode(self, embedding: Embedding, coords: torch.Tensor, labels: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts on an embedded crop -> logits (B, 1, S, S, S) in (k, j, i) and predicted IoU (B,).

        coords (B, N, 3) crop-voxel (i, j, k); labels (B, N) prompt kinds, points only; mask
        (B, 1, S, S, S) previous mask in [0, 1], (k, j, i), or None (SAM-Med3D's first prompt: zero
        logits). SAM-Med3D's mask prompt and logits have 4 cells per token (S/4 per side); the logits
        are upsampled trilinearly to S, as SAM-Med3D does.
        """
        if not torch.isin(labels, torch.tensor([PAD, NEGATIVE, POSITIVE], device=labels.device)).all():
            raise PromptError("SAM-Med3D takes points only: its prompt encoder has no box embeddings "
                              "(boxes were never trained); click inside the object instead", field="box")
        c = self.config
        image = embedding.tokens.permute(0, 1, 4, 3, 2)  # SAM-Med3D's (x, y, z)
        if mask is None:
            low = image.new_zeros(labels.shape[0], 1, *(4 * c.tokens,) * 3)
        else:
            low = (2 * F.avg_pool3d(mask.permute(0, 1, 4, 3, 2), c.patch_size // 4) - 1) * MASK_LOGIT
        encoder = self.prompt_encoder
        logits, iou = self.mask_decoder(image, encoder.dense_pe(), encoder.points(coords, labels),
                                        encoder.mask_downscaling(low))
        logits = F.interpolate(logits, size=(c.crop_size,) * 3, mode="trilinear", align_corners=False)
        return logits.permute(0, 1, 4, 3, 2), iou

    def forward(self, image, coords, labels, mask=None):
        return self.decode(self.embed(image), coords, labels, mask)
