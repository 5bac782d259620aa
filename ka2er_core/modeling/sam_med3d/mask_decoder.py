"""SAM-Med3D's mask decoder: a two-way transformer, two 3D up-convolutions (to 1/4 of the crop's
resolution), hypernetwork masks and an IoU head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common import MLP, LayerNorm3d
from .config import SamMed3DConfig
from .image_encoder import FeedForward


class TokenAttention(nn.Module):
    """Attention with the width reduced to dim / downsample inside: (B, Nq, dim) -> (B, Nq, dim)."""

    def __init__(self, dim: int, heads: int, downsample: int = 1):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim // downsample) for _ in range(3))
        self.out_proj = nn.Linear(dim // downsample, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def split(x):
            return x.reshape(*x.shape[:2], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(q)), split(self.k_proj(k)),
                                             split(self.v_proj(v)))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class TwoWayBlock(nn.Module):
    """Tokens self-attend, tokens -> image, MLP, image -> tokens (post-norm, as SAM)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_pe: bool):
        super().__init__()
        self.self_attn = TokenAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = TokenAttention(dim, heads, 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = TokenAttention(dim, heads, 2)
        self.skip_first_pe = skip_first_pe

    def forward(self, tokens, image, token_pe, image_pe):
        if self.skip_first_pe:
            tokens = self.self_attn(tokens, tokens, tokens)
        else:
            q = tokens + token_pe
            tokens = tokens + self.self_attn(q, q, tokens)
        tokens = self.norm1(tokens)
        keys = image + image_pe
        tokens = self.norm2(tokens + self.cross_attn_token_to_image(tokens + token_pe, keys, image))
        tokens = self.norm3(tokens + self.mlp(tokens))
        image = self.norm4(image + self.cross_attn_image_to_token(keys, tokens + token_pe, tokens))
        return tokens, image


class TwoWayTransformer3D(nn.Module):
    def __init__(self, c: SamMed3DConfig):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(c.dim, c.decoder_heads, c.decoder_mlp_dim, i == 0)
                                    for i in range(c.decoder_depth))
        self.final_attn_token_to_image = TokenAttention(c.dim, c.decoder_heads, 2)
        self.norm_final_attn = nn.LayerNorm(c.dim)

    def forward(self, image, image_pe, tokens):
        """image, image_pe (B, dim, n, n, n); tokens (B, T, dim) -> tokens (B, T, dim), image
        (B, n^3, dim)."""
        image, image_pe = image.flatten(2).transpose(1, 2), image_pe.flatten(2).transpose(1, 2)
        token_pe = tokens
        for layer in self.layers:
            tokens, image = layer(tokens, image, token_pe, image_pe)
        attended = self.final_attn_token_to_image(tokens + token_pe, image + image_pe, image)
        return self.norm_final_attn(tokens + attended), image


class MaskDecoder3D(nn.Module):
    """Single-mask output (mask token 0), as SAM-Med3D infers; the multimask tokens 1..3 and their
    heads are kept only so the checkpoint loads."""

    def __init__(self, c: SamMed3DConfig):
        super().__init__()
        self.transformer = TwoWayTransformer3D(c)
        self.iou_token = nn.Embedding(1, c.dim)
        self.mask_tokens = nn.Embedding(c.mask_tokens, c.dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(c.dim, c.dim // 4, 2, stride=2), LayerNorm3d(c.dim // 4), nn.GELU(),
            nn.ConvTranspose3d(c.dim // 4, c.dim // 8, 2, stride=2), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(c.dim, c.dim, c.dim // 8, 3) for _ in range(c.mask_tokens))
        self.iou_prediction_head = MLP(c.dim, c.iou_hidden, c.mask_tokens, 3)

    def forward(self, image, image_pe, sparse, dense) -> tuple[torch.Tensor, torch.Tensor]:
        """image (1 or B, dim, n, n, n); image_pe (1, dim, n, n, n); sparse (B, T, dim); dense
        (B, dim, n, n, n) -> logits (B, 1, 4n, 4n, 4n) and predicted IoU (B,)."""
        b, n = sparse.shape[0], image.shape[2:]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])[None].expand(b, -1, -1)
        tokens, src = self.transformer(image.expand(b, -1, -1, -1, -1) + dense,
                                       image_pe.expand(b, -1, -1, -1, -1),
                                       torch.cat([tokens, sparse], dim=1))
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, -1, *n))
        weights = self.output_hypernetworks_mlps[0](tokens[:, 1])
        logits = torch.einsum("bc,bcxyz->bxyz", weights, upscaled)[:, None]
        return logits, self.iou_prediction_head(tokens[:, 0])[:, 0]
