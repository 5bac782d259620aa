"""What lies under each click: the crop's fine encoder features sampled at the point prompts.

The point tokens otherwise carry only where a click is (Fourier features of its position) and its
kind; the decoder then reads the tissue from 8-voxel image tokens, which blur thin or interleaved
structures (grey and white matter). Sampling the full-, half- and quarter-resolution features at
each click tells the decoder which tissue was clicked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import ImageEmbedding
from .prompt_encoder import NEGATIVE, POSITIVE


class PointFeatures(nn.Module):
    """``forward(embedding, coords, labels) -> (B, N, dim)``, added to the point tokens.

    embedding: of B crops or of 1 crop (broadcast); coords (B, N, 3) crop-voxel (i, j, k); labels
    (B, N) prompt kinds: only positive and negative clicks get features (box corners and padding
    get 0). ``channels`` = fine + half + quarter feature channels. The projection starts at zero, so
    a trained model given this part answers exactly as before until it is trained further.
    """

    def __init__(self, channels: int, dim: int, crop_size: int):
        super().__init__()
        self.crop_size = crop_size
        self.norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, embedding: ImageEmbedding, coords: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        b, n = labels.shape
        # grid_sample wants (x, y, z) = (i, j, k) in [-1, 1]; align_corners=False: -1 is the crop's
        # outer edge, voxel -0.5.
        grid = ((coords + 0.5) / self.crop_size * 2 - 1).to(embedding.fine.dtype)[:, :, None, None]
        samples = [F.grid_sample(features.expand(b, -1, -1, -1, -1), grid, mode="bilinear",
                                 padding_mode="border", align_corners=False)[..., 0, 0]
                   for features in (embedding.fine, embedding.skip_half, embedding.skip_quarter)]
        sampled = torch.cat(samples, dim=1).transpose(1, 2)  # (B, N, channels)
        clicks = ((labels == POSITIVE) | (labels == NEGATIVE)).to(sampled.dtype)[..., None]
        return self.proj(self.norm(sampled)) * clicks
