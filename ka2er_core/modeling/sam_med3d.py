"""SAM-Med3D (uni-medical/SAM-Med3D, the ``vit_b_ori`` model of ``sam_med3d_turbo.pth``), our own code.

Same architecture and the same state-dict names and shapes as the published checkpoint, so its weights
load unchanged: a ViT-B image encoder on 128^3 crops (16^3 patches -> 8^3 tokens, 768 wide, 12 blocks
with decomposed relative positions, a 384-wide neck), a prompt encoder (random Fourier features of
points, positive/negative/padding embeddings, the previous mask at 1/4 resolution as a dense prompt)
and a two-way-transformer mask decoder with two 3D up-convolutions (to 1/4 of the crop's resolution)
and an IoU head.

Frames: SAM-Med3D was trained on torchio tensors, whose axes are (x, y, z) = (i, j, k) of the image,
and takes points as (x, y, z) indices into them. Our crops are arrays in (k, j, i) order with points in
(i, j, k). :class:`SamMed3D` transposes the image, the mask prompt and the logits between the two, so
the anatomy reaches the encoder in the orientation it was trained on and our (i, j, k) points are
already in SAM-Med3D's order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PromptError
from .common import MLP, LayerNorm3d
from .prompt_encoder import NEGATIVE, PAD, POSITIVE

TYPE = "sam_med3d"
MASK_LOGIT = 8.0
"""SAM-Med3D's mask prompt is its previous logits at 1/4 resolution; our sessions keep masks, so a mask
in [0, 1] is averaged over 4^3 voxels and mapped linearly to [-MASK_LOGIT, MASK_LOGIT]."""


@dataclass(frozen=True)
class SamMed3DConfig:
    """Sizes of SAM-Med3D (defaults: ``vit_b_ori``, the turbo checkpoint).

    The encoder attends within one window of ``window_size``^3 tokens (zero-padded, as SAM-Med3D does)
    except in ``global_blocks``, which attend over the whole token grid; the grid must fit one window.
    """

    crop_size: int = 128
    patch_size: int = 16
    in_channels: int = 1
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_blocks: tuple[int, ...] = (2, 5, 8, 11)
    dim: int = 384
    mask_channels: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    mask_tokens: int = 4
    iou_hidden: int = 256

    def __post_init__(self):
        if self.patch_size % 4 or self.crop_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must be a multiple of 4 and divide "
                             f"crop_size {self.crop_size}")
        if self.window_size and self.tokens > self.window_size:
            raise ValueError(f"{self.tokens} tokens per side do not fit one {self.window_size}^3 window")
        if self.dim % 3 or self.dim % 8:
            raise ValueError(f"dim {self.dim} must be a multiple of 3 (Fourier features) and 8")

    @property
    def tokens(self) -> int:
        """Tokens per side of the image embedding."""
        return self.crop_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return {"type": TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SamMed3DConfig":
        values = {k: v for k, v in values.items() if k != "type"}
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown SAM-Med3D config fields {sorted(unknown)}")
        if "global_blocks" in values:
            values["global_blocks"] = tuple(values["global_blocks"])
        return cls(**values)


class FeedForward(nn.Module):
    """lin1 -> activation -> lin2: (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, hidden: int, activation: type[nn.Module]):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


# ---- image encoder ----

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
        x = self.patch_embed(image) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))


# ---- prompt encoder ----

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


# ---- mask decoder ----

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

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised crops (B, C, S, S, S), axes (k, j, i) -> embedding (B, dim, n, n, n), axes
        (x, y, z)."""
        return self.image_encoder(image.permute(0, 1, 4, 3, 2))

    def decode(self, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
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
        if mask is None:
            low = embedding.new_zeros(labels.shape[0], 1, *(4 * c.tokens,) * 3)
        else:
            low = (2 * F.avg_pool3d(mask.permute(0, 1, 4, 3, 2), c.patch_size // 4) - 1) * MASK_LOGIT
        encoder = self.prompt_encoder
        logits, iou = self.mask_decoder(embedding, encoder.dense_pe(), encoder.points(coords, labels),
                                        encoder.mask_downscaling(low))
        logits = F.interpolate(logits, size=(c.crop_size,) * 3, mode="trilinear", align_corners=False)
        return logits.permute(0, 1, 4, 3, 2), iou

    def forward(self, image, coords, labels, mask=None):
        return self.decode(self.embed(image), coords, labels, mask)
