"""SAM-Med3D's prompt encoder: random Fourier features of points, positive/negative/padding
embeddings, the previous mask at 1/4 resolution as a dense prompt."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..common import LayerNorm3d
from ..prompt_encoder import NEGATIVE, PAD, POSITIVE
from .config import SamMed3DConfig


class FourierFeatures(nn.Module):
    """Random Fourier features: (..., 3) in [0, 1] -> (..., 3F) as [sin, cos, sin] (SAM-Med3D's)."""

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, features))

    def forward(self, unit: torch.Tensor) -> torch.Tensor:
        x = (2 * unit - 1) @ self.positional_encoding_gaussian_matrix * (2 * math.pi)
        return torch.cat([torch.sin(x), torch.cos(x), torch.sin(x)], dim=-1)


class PromptEncoder3D(nn.Module):
    def __init__(self, c: SamMed3DConfig):
        super().__init__()
        self.crop_size, self.tokens = c.crop_size, c.tokens
        self.pe_layer = FourierFeatures(c.dim // 3)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, c.dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, c.dim)
        m = c.mask_channels
        self.mask_downscaling = nn.Sequential(  # 1/4 resolution -> 1/16 (the token grid)
            nn.Conv3d(1, m // 4, 2, stride=2), LayerNorm3d(m // 4), nn.GELU(),
            nn.Conv3d(m // 4, m, 2, stride=2), LayerNorm3d(m), nn.GELU(),
            nn.Conv3d(m, c.dim, 1))
        self.no_mask_embed = nn.Embedding(1, c.dim)  # in the checkpoint; SAM-Med3D always passes a mask

    def dense_pe(self) -> torch.Tensor:
        """(1, dim, n, n, n) encoding of the token centres. SAM-Med3D gives cell (a, b, c) the position
        (b, a, c): its first two axes swapped relative to points. Kept: its weights were trained so."""
        centres = (torch.arange(self.tokens, device=self.no_mask_embed.weight.device) + 0.5) / self.tokens
        a, b, c = torch.meshgrid(centres, centres, centres, indexing="ij")
        return self.pe_layer(torch.stack([b, a, c], dim=-1)).permute(3, 0, 1, 2)[None]

    def points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """coords (B, N, 3) voxel (x, y, z), labels (B, N) in {PAD, NEGATIVE, POSITIVE} ->
        (B, N + 1, dim), with the padding token SAM-Med3D appends when there is no box."""
        pe = self.pe_layer((coords + 0.5) / self.crop_size)
        pe = torch.cat([pe, torch.zeros_like(pe[:, :1])], dim=1)
        labels = torch.cat([labels, torch.full_like(labels[:, :1], PAD)], dim=1)[..., None]
        return (torch.where(labels == PAD, self.not_a_point_embed.weight, pe)
                + (labels == NEGATIVE) * self.point_embeddings[0].weight
                + (labels == POSITIVE) * self.point_embeddings[1].weight)
