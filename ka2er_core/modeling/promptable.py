"""The promptable segmentation model: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import ModelConfig
from .image_encoder import ImageEmbedding, ImageEncoder
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .protocols import EmbeddingLayout


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

    @property
    def layout(self) -> EmbeddingLayout:
        """Tokens at 1/8 of the crop; the backbone's five stages at 1/2 to 1/32, the three coarsest
        amalgamated (KA2ER's multi-scale amalgamation)."""
        c = self.config
        count = len(c.encoder_depths) + 1
        return EmbeddingLayout(
            dim=c.dim, token_factor=8,
            stage_channels=tuple(c.encoder_embed_dim * 2 ** s for s in range(count)),
            stage_factors=tuple(2 ** (s + 1) for s in range(count)),
            fine_channels=c.fine_channels, amalgamated=(2, 3, 4))

    def embed(self, image: torch.Tensor) -> ImageEmbedding:
        """Normalised crops (B, C, S, S, S), axes (k, j, i) -> ImageEmbedding."""
        return self.image_encoder(image)

    def stages(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Normalised crops (B, C, S, S, S) -> the backbone's five stages (B, e * 2^s, S / 2^(s+1),
        ...), s = 0..4."""
        return self.image_encoder.backbone_features(image)

    def embed_from_stages(self, image: torch.Tensor, stages: list[torch.Tensor]) -> ImageEmbedding:
        """The embedding from backbone stages (as :meth:`stages` returns them) and the crops."""
        return self.image_encoder.from_hidden(image, stages)

    def prompt_tokens(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """coords (B, N, 3) crop-voxel (i, j, k), labels (B, N) -> prompt tokens (B, N, dim)."""
        return self.prompt_encoder(coords, labels, None)[0]

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
