"""Prompt encoder: points, 3D and 2D boxes as sparse tokens; the previous mask as a dense prompt.

Coordinates are continuous crop-voxel indices in (i, j, k) order, the same order for prompt points
and for the positional encoding of the image grid (SAM-Med3D mixes the two orders).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .common import LayerNorm3d

PAD, NEGATIVE, POSITIVE = -1, 0, 1
BOX_LOW, BOX_HIGH, FLAT_BOX_LOW, FLAT_BOX_HIGH = 2, 3, 4, 5
NUM_PROMPT_KINDS = 6
"""Prompt token labels: a box is two corner tokens; a box one slice thick (2D) has its own pair."""


class PositionalEncoding(nn.Module):
    """Random Fourier features of (i, j, k) positions normalised to [0, 1] over the crop."""

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__()
        self.register_buffer("gaussian", scale * torch.randn(3, dim // 2))

    def forward(self, unit_coords: torch.Tensor) -> torch.Tensor:
        """(..., 3) in [0, 1] -> (..., dim)."""
        projected = (2 * unit_coords - 1) @ self.gaussian * (2 * math.pi)
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def grid(self, size: int) -> torch.Tensor:
        """(dim, size, size, size) encoding of token centres, tensor axes (k, j, i)."""
        centres = (torch.arange(size, device=self.gaussian.device, dtype=torch.float32) + 0.5) / size
        k, j, i = torch.meshgrid(centres, centres, centres, indexing="ij")
        return self.forward(torch.stack([i, j, k], dim=-1)).permute(3, 0, 1, 2)


class PromptEncoder(nn.Module):
    def __init__(self, dim: int, crop_size: int):
        super().__init__()
        self.crop_size = crop_size
        self.embedding_size = crop_size // 8
        self.pe = PositionalEncoding(dim)
        self.kind_embed = nn.Embedding(NUM_PROMPT_KINDS, dim)
        self.pad_embed = nn.Parameter(torch.zeros(dim))
        self.no_mask_embed = nn.Parameter(torch.zeros(dim))
        self.mask_downscale = nn.Sequential(  # S -> S/8
            nn.Conv3d(1, dim // 8, 2, stride=2), LayerNorm3d(dim // 8), nn.GELU(),
            nn.Conv3d(dim // 8, dim // 4, 2, stride=2), LayerNorm3d(dim // 4), nn.GELU(),
            nn.Conv3d(dim // 4, dim, 2, stride=2))

    def dense_pe(self) -> torch.Tensor:
        """(1, dim, S/8, S/8, S/8) positional encoding of the image tokens."""
        return self.pe.grid(self.embedding_size)[None]

    def forward(self, coords: torch.Tensor, labels: torch.Tensor,
                mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts.

        coords (B, N, 3) crop-voxel (i, j, k); labels (B, N) prompt kinds (``PAD`` for none);
        mask (B, 1, S, S, S) previous mask in [0, 1] or None.
        Returns sparse (B, N, dim) and dense (B, dim, S/8, S/8, S/8) embeddings.
        """
        unit = (coords + 0.5) / self.crop_size
        sparse = self.pe(unit) + self.kind_embed(labels.clamp(min=0))
        sparse = torch.where((labels == PAD)[..., None], self.pad_embed.expand_as(sparse), sparse)
        if mask is None:
            b, n = labels.shape[0], self.embedding_size
            dense = self.no_mask_embed[None, :, None, None, None].expand(b, -1, n, n, n)
        else:
            dense = self.mask_downscale(mask)
        return sparse, dense
