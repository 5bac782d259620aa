"""The promptable segmentation model: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import ModelConfig
from .image_encoder import ImageEmbedding, ImageEncoder
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class PromptableSegmenter(nn.Module):
    """SAM-style 3D segmenter. ``embed`` runs once per crop; ``decode`` once per click."""

    PROMPT_TYPES = ("point", "box")
    """The prompts it was trained on: points, and 3D and 2D boxes."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config)
        self.prompt_encoder = PromptEncoder(config.dim, config.crop_size)
        self.mask_decoder = MaskDecoder(config)

    def embed(self, image: torch.Tensor) -> ImageEmbedding:
        """Normalised crops (B, C, S, S, S), axes (k, j, i) -> ImageEmbedding."""
        return self.image_encoder(image)

    def decode(self, embedding: ImageEmbedding, coords: torch.Tensor, labels: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts on embedded crops -> logits (B, 1, S, S, S) and predicted IoU (B,).

        coords (B, N, 3) crop-voxel (i, j, k); labels (B, N) prompt kinds; mask (B, 1, S, S, S)
        previous mask in [0, 1] or None.
        """
        sparse, dense = self.prompt_encoder(coords, labels, mask)
        return self.mask_decoder(embedding, self.prompt_encoder.dense_pe(), sparse, dense)

    def forward(self, image, coords, labels, mask=None):
        return self.decode(self.embed(image), coords, labels, mask)
