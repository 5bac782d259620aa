"""The contract of a promptable model (the project's Swin student, an imported SAM-Med3D): the image
embedding of a crop is computed once, and every prompt on it is a decode.

Everything outside the model's own decoder reads an :class:`Embedding` only through its shared
fields, and a model's sizes only through its :class:`EmbeddingLayout`: the MoE gate pools
``tokens`` and ``stages`` and samples them at the prompts; the KA2ER amalgamation layer replaces the
``layout.amalgamated`` stages of :meth:`PromptableModel.stages` before
:meth:`PromptableModel.embed_from_stages` makes the tokens from them. So either architecture can be
the general model of a moe bundle or the student of ``ka2er amalgamate``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Protocol, runtime_checkable

import torch


@dataclass
class Embedding:
    """A model's embedding of B crops; every map has axes (k, j, i) of the crop (S voxels a side).

    ``tokens`` (B, dim, T, T, T), T = S / ``layout.token_factor``: the image tokens the mask decoder
    attends to. ``stages``: the encoder's feature maps the tokens are made from, (B, C_s, S / f_s,
    ...) with C_s and f_s as ``layout.stage_channels`` and ``stage_factors`` list them, finest
    first (the Swin backbone's five stages; a ViT's one grid of block outputs). ``fine``
    (B, F, S, S, S): full-resolution features, or None (a ViT has none). A model may subclass it
    with what only its own decoder reads.
    """

    tokens: torch.Tensor
    stages: list[torch.Tensor]
    fine: Optional[torch.Tensor]

    def detach(self) -> "Embedding":
        """The same embedding cut from the autograd graph."""
        def cut(value):
            if isinstance(value, torch.Tensor):
                return value.detach()
            return [cut(v) for v in value] if isinstance(value, list) else value

        return replace(self, **{f.name: cut(getattr(self, f.name)) for f in fields(self)})


@dataclass(frozen=True)
class EmbeddingLayout:
    """The sizes of a model's :class:`Embedding`, known without running it.

    ``dim``: token channels; ``token_factor``: crop voxels per token along each axis;
    ``stage_channels``, ``stage_factors``: channels and crop voxels per cell of each stage, finest
    first; ``fine_channels``: channels of ``Embedding.fine`` (0: none); ``amalgamated``: the stages
    KA2ER's amalgamation layer merges the experts' knowledge into (one stage: a single-scale grid,
    onto which every expert stage is resampled).
    """

    dim: int
    token_factor: int
    stage_channels: tuple[int, ...]
    stage_factors: tuple[int, ...]
    fine_channels: int
    amalgamated: tuple[int, ...]


@runtime_checkable
class PromptableModel(Protocol):
    PROMPT_TYPES: tuple[str, ...]
    """The prompts it takes: "point", and "box" if it was trained on boxes."""

    @property
    def layout(self) -> EmbeddingLayout:
        """The sizes of what :meth:`embed` returns."""

    def embed(self, image: torch.Tensor) -> Embedding:
        """Normalised crops (B, C, S, S, S), axes (k, j, i) -> the model's embedding of them; the
        same as ``embed_from_stages(image, stages(image))``."""

    def stages(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Normalised crops (B, C, S, S, S) -> the encoder's stages, as ``Embedding.stages``."""

    def embed_from_stages(self, image: torch.Tensor, stages: list[torch.Tensor]) -> Embedding:
        """The embedding made from (possibly amalgamated) ``stages`` and the crops they came from."""

    def decode(self, embedding: Embedding, coords: torch.Tensor, labels: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts on embedded crops -> logits (B, 1, S, S, S), axes (k, j, i), and predicted IoU
        (B,). coords (B, N, 3) crop-voxel (i, j, k); labels (B, N) prompt kinds; mask (B, 1, S, S, S)
        the previous mask in [0, 1], or None."""

    def prompt_tokens(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The prompt encoder's token of each prompt: coords (B, N, 3), labels (B, N) -> (B, N, dim)
        (what the gate reads of the prompts)."""


POINT_STROKES = ("scribble", "lasso")
"""Prompts the session turns into point tokens: offered wherever points are."""


def common_prompt_types(models) -> tuple[str, ...]:
    """The prompts ("point", "box") every one of ``models`` (models or their classes) takes, then
    :data:`POINT_STROKES` if they take points."""
    models = list(models)
    kinds = tuple(kind for kind in ("point", "box")
                  if models and all(kind in getattr(m, "PROMPT_TYPES", ()) for m in models))
    return kinds + (POINT_STROKES if "point" in kinds else ())
