"""Two-way transformer: prompt tokens and image tokens attend to each other (SAM's design)."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP


class Attention(nn.Module):
    """Multi-head attention with optional internal width reduction: (B, Nq, dim) -> (B, Nq, dim)."""

    def __init__(self, dim: int, heads: int, downsample: int = 1):
        super().__init__()
        inner = dim // downsample
        if inner % heads:
            raise ValueError(f"inner width {inner} not divisible by {heads} heads")
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(dim, inner) for _ in range(3))
        self.out = nn.Linear(inner, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b = q.shape[0]

        def split(x):  # (B, N, inner) -> (B, heads, N, inner/heads)
            return x.reshape(b, x.shape[1], self.heads, -1).transpose(1, 2)

        attended = nn.functional.scaled_dot_product_attention(
            split(self.q(q)), split(self.k(k)), split(self.v(v)))
        return self.out(attended.transpose(1, 2).reshape(b, q.shape[1], -1))


class TwoWayBlock(nn.Module):
    """Tokens self-attend, tokens -> image, MLP, image -> tokens."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_pe: bool):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.token_to_image = Attention(dim, heads, downsample=2)
        self.image_to_token = Attention(dim, heads, downsample=2)
        self.mlp = MLP(dim, mlp_dim, dim, 2)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        self.skip_first_pe = skip_first_pe

    def forward(self, tokens, image, token_pe, image_pe):
        if self.skip_first_pe:
            tokens = self.self_attn(tokens, tokens, tokens)
        else:
            q = tokens + token_pe
            tokens = tokens + self.self_attn(q, q, tokens)
        tokens = self.norms[0](tokens)
        tokens = self.norms[1](tokens + self.token_to_image(tokens + token_pe, image + image_pe, image))
        tokens = self.norms[2](tokens + self.mlp(tokens))
        image = self.norms[3](image + self.image_to_token(image + image_pe, tokens + token_pe, tokens))
        return tokens, image


class TwoWayTransformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(TwoWayBlock(dim, heads, mlp_dim, skip_first_pe=(i == 0))
                                    for i in range(depth))
        self.final_attn = Attention(dim, heads, downsample=2)
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor,
                tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image, image_pe (B, dim, D, H, W); tokens (B, N, dim) -> tokens (B, N, dim), image (B, DHW, dim)."""
        image = image.flatten(2).transpose(1, 2)
        image_pe = image_pe.flatten(2).transpose(1, 2)
        token_pe = tokens
        for block in self.blocks:
            tokens, image = block(tokens, image, token_pe, image_pe)
        tokens = self.final_norm(tokens + self.final_attn(tokens + token_pe, image + image_pe, image))
        return tokens, image
