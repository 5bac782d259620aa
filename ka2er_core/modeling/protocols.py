"""The contract of a promptable model (the project's Swin student, an imported SAM-Med3D): the image
embedding of a crop is computed once, and every prompt on it is a decode."""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch


@runtime_checkable
class PromptableModel(Protocol):
    PROMPT_TYPES: tuple[str, ...]
    """The prompts it takes: "point", and "box" if it was trained on boxes."""

    def embed(self, image: torch.Tensor):
        """Normalised crops (B, C, S, S, S), axes (k, j, i) -> the model's embedding of them."""

    def decode(self, embedding, coords: torch.Tensor, labels: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts on embedded crops -> logits (B, 1, S, S, S), axes (k, j, i), and predicted IoU
        (B,). coords (B, N, 3) crop-voxel (i, j, k); labels (B, N) prompt kinds; mask (B, 1, S, S, S)
        the previous mask in [0, 1], or None."""
