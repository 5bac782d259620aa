"""SAM-Med3D's image encoder: a ViT on 3D patches with windowed and global attention blocks.

Tensors here are SAM-Med3D's: axes (x, y, z) = (i, j, k) of the crop (see the package docstring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common import LayerNorm3d
from .config import SamMed3DConfig


class FeedForward(nn.Module):
    """lin1 -> activation -> lin2: (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, hidden: int, activation: type[nn.Module]):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class GridAttention(nn.Module):
    """Self-attention of an n^3 token grid inside a g^3 cube (g >= n) with relative positions.

    For g > n this is SAM-Med3D's window attention of a grid smaller than its window: the window is
    zero-padded after the norm, so padding tokens take part as queries q_b, keys k_b and values v_b,
    the qkv bias. Only the n^3 real queries are computed.

    Relative positions are SAM-Med3D's, which are not MViTv2's decomposed ones: its 3D port broadcasts
    the three terms onto other key axes. For query (x, y, z) and key (u, v, w) it adds
    q(x, y, z).Rd[x - w] + q(x, y, u).Rh[y - w] + q(x, y, v).Rw[v - w], with q(.) the query at that
    position of the cube (q_b in the padding). The weights were trained with it, so it is kept.
    """

    def __init__(self, dim: int, heads: int, side: int):
        super().__init__()
        self.heads, self.side = heads, side
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_d, self.rel_pos_h, self.rel_pos_w = (
            nn.Parameter(torch.zeros(2 * side - 1, dim // heads)) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, n, n, n, dim), normalised tokens -> (B, n, n, n, dim)."""
        b, n, dim = x.shape[0], x.shape[1], x.shape[-1]
        q, k, v = self.qkv(x).reshape(b, n ** 3, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        cube_q = q
        if n < self.side:
            bias = self.qkv.bias.view(3, self.heads, -1)
            cube_q, k, v = (self.pad(t, value, n) for t, value in zip((q, k, v), bias))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.relative_bias(q, cube_q, n))
        return self.proj(out.transpose(1, 2).reshape(b, n, n, n, dim))

    def pad(self, t: torch.Tensor, value: torch.Tensor, n: int) -> torch.Tensor:
        """(B, heads, n^3, c) -> (B, heads, g^3, c): the n^3 cube at the low corner, ``value`` (heads, c)
        elsewhere."""
        b, h, c, g = t.shape[0], self.heads, t.shape[-1], self.side
        full = value.view(1, h, 1, 1, 1, c).expand(b, h, g, g, g, c).clone()
        full[:, :, :n, :n, :n] = t.view(b, h, n, n, n, c)
        return full.view(b, h, g ** 3, c)

    def relative_bias(self, q: torch.Tensor, cube_q: torch.Tensor, n: int) -> torch.Tensor:
        """Queries q (B, heads, n^3, c) and the cube's cube_q (B, heads, g^3, c) -> (B, heads, n^3, g^3)."""
        g = self.side
        steps = torch.arange(g, device=q.device)
        offsets = steps[:, None] - steps + g - 1  # [a, w] -> index of a - w
        q = q.view(*q.shape[:2], n, n, n, -1)
        rows = cube_q.view(*q.shape[:2], g, g, g, -1)[:, :, :n, :n]  # q(x, y, .) over the cube
        d = torch.einsum("bhxyzc,xwc->bhxyzw", q, self.rel_pos_d[offsets[:n]])
        h = torch.einsum("bhxyuc,ywc->bhxyuw", rows, self.rel_pos_h[offsets[:n]])
        w = torch.einsum("bhxyvc,vwc->bhxyvw", rows, self.rel_pos_w[offsets])
        bias = (d[:, :, :, :, :, None, None, :] + h[:, :, :, :, None, :, None, :]
                + w[:, :, :, :, None, None, :, :])
        return bias.reshape(*q.shape[:2], n ** 3, g ** 3)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, side: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = GridAttention(dim, heads, side)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio), nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """(B, C, S, S, S) -> tokens (B, n, n, n, dim)."""

    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, patch, stride=patch)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image).permute(0, 2, 3, 4, 1)


class ImageEncoder3D(nn.Module):
    """Crop (B, C, S, S, S), axes (x, y, z) -> embedding (B, dim, n, n, n), n = S / patch_size."""

    def __init__(self, c: SamMed3DConfig):
        super().__init__()
        n = c.tokens
        self.patch_embed = PatchEmbed(c.in_channels, c.encoder_dim, c.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, n, n, n, c.encoder_dim))
        self.blocks = nn.ModuleList(
            EncoderBlock(c.encoder_dim, c.encoder_heads, c.mlp_ratio,
                         n if i in c.global_blocks or not c.window_size else c.window_size)
            for i in range(c.encoder_depth))
        self.neck = nn.Sequential(
            nn.Conv3d(c.encoder_dim, c.dim, 1, bias=False), LayerNorm3d(c.dim),
            nn.Conv3d(c.dim, c.dim, 3, padding=1, bias=False), LayerNorm3d(c.dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.neck(self.encode(image).permute(0, 4, 1, 2, 3))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Crop (B, C, S, S, S), axes (x, y, z) -> the last block's tokens (B, n, n, n, encoder_dim),
        before the neck."""
        x = self.patch_embed(image) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x
