"""Adaptive amalgamation layer (KA2ER): frozen experts' knowledge merged into the student's features.

Per scale, the student's backbone features and every frozen expert's features are projected into one
hidden space (a 1x1x1 convolution per source and scale) and merged by three levels of attention:

1. self-attention over the student's tokens of that scale;
2. per location, the student's token attends to every expert's token there and to itself (the
   task-agnostic source): per-location weights over the E + 1 sources;
3. per location, each scale's token attends to the merged tokens of all scales there (coarser scales
   upsampled, finer ones average-pooled to its grid).

Projected back to the student's channels and added to its features, the result is the "gold
amalgamated features" that replace the student's hidden states before its head and the mask decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLP
from .transformer import Attention


@dataclass
class Amalgamated:
    """What :class:`AmalgamationLayer` returns; every field has one entry per scale s.

    ``gold`` (B, Cs, Ds, Hs, Ws): the student's features plus the amalgamated knowledge.
    ``student_hidden``, ``gold_hidden`` (B, hidden, Ds, Hs, Ws): the student's projected features and
    the amalgamated ones. ``expert_weights`` (B, Ds*Hs*Ws, E + 1): per location, the attention over
    the experts, last column the student's own token; rows sum to 1. ``scale_weights``
    (B, Ds*Hs*Ws, S): per location, the attention over the S scales; rows sum to 1.
    """

    gold: list[Tensor]
    student_hidden: list[Tensor]
    gold_hidden: list[Tensor]
    expert_weights: list[Tensor]
    scale_weights: list[Tensor]


class WeightedAttention(Attention):
    """:class:`Attention` that also returns its weights.

    q (B, Nq, dim), k and v (B, Nk, dim) -> (B, Nq, dim), weights (B, Nq, Nk) averaged over heads.
    """

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        b = q.shape[0]

        def split(x):  # (B, N, inner) -> (B, heads, N, inner/heads)
            return x.reshape(b, x.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.q(q)), split(self.k(k)), split(self.v(v))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(b, q.shape[2], -1)
        return self.out(attended), weights.mean(1)


class LocationAttention(nn.Module):
    """Per location, a query token attends to K candidate tokens at the same location.

    query (B, C, D, H, W) and K candidates of that shape -> (B, C, D, H, W), weights (B, D*H*W, K).
    Queries and keys are layer-normed so that no source wins by its scale alone; values are the raw
    candidates so that the output keeps theirs. The query's own token is meant to be a candidate,
    hence no residual.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.key_norm = nn.LayerNorm(dim)
        self.attention = WeightedAttention(dim, heads)

    def forward(self, query: Tensor, candidates: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        b, c = query.shape[:2]
        count = len(candidates)
        q = _tokens(query).reshape(-1, 1, c)
        values = torch.stack([_tokens(x) for x in candidates], dim=2).reshape(-1, count, c)
        out, weights = self.attention(self.query_norm(q), self.key_norm(values), values)
        return _volume(out.reshape(b, -1, c), query.shape[2:]), weights.reshape(b, -1, count)


class ScaleAmalgamation(nn.Module):
    """The layer's parts for one scale: projections in and out, and the three attentions."""

    def __init__(self, student_channels: int, expert_channels: Sequence[int], hidden: int, heads: int):
        super().__init__()
        self.student_in = nn.Conv3d(student_channels, hidden, 1)
        self.experts_in = nn.ModuleList(nn.Conv3d(c, hidden, 1) for c in expert_channels)
        self.self_norm = nn.LayerNorm(hidden)
        self.self_attention = Attention(hidden, heads)
        self.expert_attention = LocationAttention(hidden, heads)
        self.scale_attention = LocationAttention(hidden, heads)
        self.mlp_norm = nn.LayerNorm(hidden)
        self.mlp = MLP(hidden, 4 * hidden, hidden, 2)
        self.student_out = nn.Conv3d(hidden, student_channels, 1)
        # Zero-initialised: at the start gold == student, so the student's pipeline is undisturbed.
        nn.init.zeros_(self.student_out.weight)
        nn.init.zeros_(self.student_out.bias)

    def merge_experts(self, student: Tensor, experts: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Levels 1 and 2. student (B, Cs, D, H, W); experts[e] (B, Ce, D', H', W').

        Returns student_hidden and merged (B, hidden, D, H, W), expert weights (B, D*H*W, E + 1).
        """
        size = student.shape[2:]
        student_hidden = self.student_in(student)
        tokens = _tokens(student_hidden)
        normed = self.self_norm(tokens)
        attended = _volume(tokens + self.self_attention(normed, normed, normed), size)
        sources = [project(F.interpolate(x, size=size, mode="trilinear", align_corners=False)
                           if x.shape[2:] != size else x)
                   for project, x in zip(self.experts_in, experts)]
        merged, expert_weights = self.expert_attention(attended, [*sources, attended])
        return student_hidden, merged, expert_weights

    def merge_scales(self, student: Tensor, merged: Tensor,
                     all_merged: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Level 3 and the way back. merged (B, hidden, D, H, W): this scale's; all_merged: every scale's.

        Returns gold (B, Cs, D, H, W), gold_hidden (B, hidden, D, H, W), scale weights (B, D*H*W, S).
        """
        size = merged.shape[2:]
        mixed, scale_weights = self.scale_attention(merged, [_resample(x, size) for x in all_merged])
        tokens = _tokens(mixed)
        gold_hidden = _volume(tokens + self.mlp(self.mlp_norm(tokens)), size)
        return student + self.student_out(gold_hidden), gold_hidden, scale_weights


class AmalgamationLayer(nn.Module):
    """Merges frozen experts' multi-scale features into the student's (see the module docstring).

    ``student_channels[s]``: channels of student scale s; ``expert_channels[e][s]``: channels of
    expert e's features matched to scale s (see :func:`match_expert_stages`).
    """

    def __init__(self, student_channels: Sequence[int], expert_channels: Sequence[Sequence[int]],
                 hidden: int = 64, heads: int = 4):
        super().__init__()
        if any(len(channels) != len(student_channels) for channels in expert_channels):
            raise ValueError(f"every expert needs one channel count per student scale "
                             f"({len(student_channels)}), got {[len(c) for c in expert_channels]}")
        self.num_experts = len(expert_channels)
        self.scales = nn.ModuleList(
            ScaleAmalgamation(channels, [expert[s] for expert in expert_channels], hidden, heads)
            for s, channels in enumerate(student_channels))

    def forward(self, student: Sequence[Tensor], experts: Sequence[Sequence[Tensor]]) -> Amalgamated:
        """student[s] (B, Cs, Ds, Hs, Ws); experts[e][s] (B, Ce_s, D', H', W'), any spatial size
        (resampled trilinearly to the student's grid of scale s)."""
        if len(student) != len(self.scales) or len(experts) != self.num_experts or any(
                len(features) != len(self.scales) for features in experts):
            raise ValueError(f"expected {len(self.scales)} student scales and {self.num_experts} experts "
                             f"with {len(self.scales)} scales each")
        student_hidden, merged, expert_weights = zip(*(
            scale.merge_experts(features, [expert[s] for expert in experts])
            for s, (scale, features) in enumerate(zip(self.scales, student))))
        gold, gold_hidden, scale_weights = zip(*(
            scale.merge_scales(features, own, merged)
            for scale, features, own in zip(self.scales, student, merged)))
        return Amalgamated(list(gold), list(student_hidden), list(gold_hidden),
                           list(expert_weights), list(scale_weights))

    def distillation_loss(self, out: Amalgamated) -> Tensor:
        """Mean over scales of MSE(student_hidden, gold_hidden): pulls the student's projected
        features towards the gold ones; no gradient flows into the gold side."""
        return torch.stack([F.mse_loss(own, gold.detach())
                            for own, gold in zip(out.student_hidden, out.gold_hidden)]).mean()


def match_expert_stages(student_factors: Sequence[int],
                        expert_factors: Sequence[Sequence[int]]) -> list[int]:
    """For each student scale's isotropic downsampling factor (e.g. 8, 16, 32), the index of the
    expert stage whose (k, j, i) factors are nearest.

    Distance: sum over the three axes of |log2(expert factor / student factor)|, the total resampling
    the expert's features undergo to reach the student's grid. Ties go to the deeper stage (larger
    index): its features are the expert's more task-specific ones, and upsampling does not alias.
    """
    if not expert_factors:
        raise ValueError("no expert stages to match")

    def distance(factor: int, stage: Sequence[int]) -> float:
        return round(sum(abs(math.log2(axis) - math.log2(factor)) for axis in stage), 9)

    return [min(range(len(expert_factors)), key=lambda i: (distance(factor, expert_factors[i]), -i))
            for factor in student_factors]


def expert_sources(student_factors: Sequence[int], expert_factors: Sequence[Sequence[Sequence[int]]]
                   ) -> list[tuple[int, list[int]]]:
    """The layer's sources: (expert index, that expert's stage for each student scale).

    A multi-scale student (the Swin backbone's 1/8, 1/16, 1/32) gets one source per expert, its
    nearest stage at each scale (:func:`match_expert_stages`). A single-scale student (a ViT's one
    token grid) gets one source per expert stage: every stage of every expert is resampled onto that
    grid, and the per-location attention weighs them all. ``expert_factors[e]``: expert e's stages'
    (k, j, i) downsampling factors.
    """
    if len(student_factors) == 1:
        return [(e, [stage]) for e, factors in enumerate(expert_factors)
                for stage in range(len(factors))]
    return [(e, match_expert_stages(student_factors, factors))
            for e, factors in enumerate(expert_factors)]


def _tokens(volume: Tensor) -> Tensor:
    """(B, C, D, H, W) -> (B, D*H*W, C)."""
    return volume.flatten(2).transpose(1, 2)


def _volume(tokens: Tensor, size: Sequence[int]) -> Tensor:
    """(B, D*H*W, C) -> (B, C, D, H, W)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *size)


def _resample(volume: Tensor, size: Sequence[int]) -> Tensor:
    """(B, C, D', H', W') -> (B, C, *size): average-pooled along finer axes, trilinearly upsampled
    along coarser ones."""
    pooled = tuple(min(have, want) for have, want in zip(volume.shape[2:], size))
    if pooled != tuple(volume.shape[2:]):
        volume = F.adaptive_avg_pool3d(volume, pooled)
    if pooled != tuple(size):
        volume = F.interpolate(volume, size=tuple(size), mode="trilinear", align_corners=False)
    return volume
