"""Mask decoder: two-way transformer, upsampling with encoder skips, hypernetwork masks, IoU head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm3d
from .config import ModelConfig
from .image_encoder import ImageEmbedding
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        dim = config.dim
        self.transformer = TwoWayTransformer(dim, config.decoder_depth, config.decoder_heads,
                                             config.decoder_mlp_dim)
        self.iou_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.up_quarter = nn.ConvTranspose3d(dim, dim // 2, 2, stride=2)
        self.norm_quarter = LayerNorm3d(dim // 2)
        self.up_half = nn.ConvTranspose3d(dim // 2, dim // 4, 2, stride=2)
        self.hyper_half = MLP(dim, dim, dim // 4, 3)
        self.hyper_fine = MLP(dim, dim, config.fine_channels, 3)
        self.iou_head = MLP(dim, dim, 1, 3)
        self.hyper_bands = MLP(dim, dim, 3 * config.band_channels, 3) if config.band_channels else None
        if self.hyper_bands is not None:  # starts as a model without bands (a grown model: the same)
            nn.init.zeros_(self.hyper_bands.layers[-1].weight)
            nn.init.zeros_(self.hyper_bands.layers[-1].bias)

    def forward(self, image: ImageEmbedding, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict one mask.

        image: embedding of B crops (or of 1 crop, broadcast over B prompt sets); image_pe
        (1, dim, n, n, n); sparse (B, N, dim); dense (B, dim, n, n, n), n = S/8.
        Returns logits (B, 1, S, S, S) on the crop and predicted IoU (B,).
        """
        b = sparse.shape[0]
        tokens = torch.cat([self.iou_token.expand(b, -1, -1), self.mask_token.expand(b, -1, -1),
                            sparse], dim=1)
        embedding = image.tokens.expand(b, -1, -1, -1, -1)
        tokens, src = self.transformer(embedding + dense, image_pe.expand(b, -1, -1, -1, -1), tokens)
        n = embedding.shape[2:]
        src = src.transpose(1, 2).reshape(b, -1, *n)
        x = F.gelu(self.norm_quarter(self.up_quarter(src) + image.skip_quarter))
        x = F.gelu(self.up_half(x) + image.skip_half)  # (B, dim/4, S/2, S/2, S/2)
        mask_token = tokens[:, 1]
        coarse = torch.einsum("bc,bcdhw->bdhw", self.hyper_half(mask_token), x)[:, None]
        fine = torch.einsum("bc,bcdhw->bdhw", self.hyper_fine(mask_token),
                            image.fine.expand(b, -1, -1, -1, -1))[:, None]
        logits = F.interpolate(coarse, scale_factor=2, mode="trilinear", align_corners=False) + fine
        if self.hyper_bands is not None:
            logits = logits + self.band_logits(mask_token, image.bands)
        return logits, self.iou_head(tokens[:, 0])[:, 0]

    def band_logits(self, mask_token: torch.Tensor, bands: torch.Tensor) -> torch.Tensor:
        """mask_token (B, dim), bands (1 or B, C, S, S, S) -> (B, 1, S, S, S): each band scaled,
        shifted and weighed as the prompt says, through a GELU, so that a prompt can pick the
        intensities of its tissue at full resolution."""
        scale, shift, weight = (v[:, :, None, None, None]
                                for v in self.hyper_bands(mask_token).chunk(3, dim=1))
        return (weight * F.gelu(bands * (1 + scale) + shift)).sum(1, keepdim=True)
