"""Gate of a mixture of frozen promptable models (SAM-Med3D-MoE): which member answers a prompt.

The gate reads what the general model already computed for the crop and the prompts, and scores
every member: the general model first, then each task-tuned member. A selection strategy turns the
scores into one member: the top-1 member among those allowed on the image's modality (one
fine-tuned on MR only never answers on CT) when its probability reaches a threshold, else the
general model.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLP
from .normalization import MODALITIES
from .prompt_encoder import PAD, POSITIVE
from .protocols import Embedding, PromptableModel


class Gate(nn.Module):
    """Scores the members of a mixture for one set of prompts on one crop.

    ``members``: member names, the general model first. ``dim``, ``crop_size`` and
    ``stage_channels``: the general model's token width, crop side (voxels) and encoder stage
    widths (its :class:`~.protocols.EmbeddingLayout`'s: the Swin backbone's five stages, or a ViT's
    one grid). ``prompt_stages``: stages also sampled at the prompts (the fine stages tell
    the tissue under a click, which the coarse image tokens blur). ``fine_channels``: if > 0, the
    general model's full-resolution features (that many channels) sampled at the positive clicks,
    the intensity under them (0 in gates made before it). ``threshold``: the selection
    threshold (see :func:`route`), chosen on validation data by ``ka2er train-gate``.
    ``modalities``: member -> the image modalities ("ct", "mr") it may answer on, those of the data
    it was fine-tuned on (a member not named, and the general model, answers on any).
    """

    def __init__(self, members: Sequence[str], dim: int, crop_size: int,
                 stage_channels: Sequence[int], hidden: int = 128, threshold: float = 0.5,
                 prompt_stages: Sequence[int] = (), fine_channels: int = 0,
                 modalities: Optional[Mapping[str, Sequence[str]]] = None):
        super().__init__()
        self.members = list(members)
        self.modalities = {name: sorted(kinds) for name, kinds in (modalities or {}).items()}
        for name, kinds in self.modalities.items():
            if name not in self.members[1:] or not set(kinds) <= set(MODALITIES):
                raise ValueError(f"gate modalities: {name!r}: expected a task member's name with "
                                 f"modalities among {MODALITIES}, got {kinds}")
        self.dim, self.crop_size, self.hidden = dim, crop_size, hidden
        self.stage_channels = list(stage_channels)
        self.prompt_stages = list(prompt_stages)
        self.fine_channels = int(fine_channels)
        self.threshold = float(threshold)
        width = (2 * sum(self.stage_channels) + 4 * dim
                 + sum(self.stage_channels[s] for s in self.prompt_stages) + self.fine_channels)
        self.norm = nn.LayerNorm(width)
        self.mlp = MLP(width, hidden, len(self.members), 2)

    @classmethod
    def for_model(cls, members: Sequence[str], general: PromptableModel, hidden: int = 128,
                  prompt_stages: Optional[Sequence[int]] = None, fine: bool = True,
                  modalities: Optional[Mapping[str, Sequence[str]]] = None) -> "Gate":
        """A new gate over ``members`` reading ``general``'s embedding, as its
        :class:`~.protocols.EmbeddingLayout` describes it. ``prompt_stages`` default: the two
        finest stages (a ViT's one); ``fine``: also its full-resolution features, if it has any."""
        layout = general.layout
        if prompt_stages is None:
            prompt_stages = tuple(range(min(2, len(layout.stage_channels))))
        return cls(members, layout.dim, general.config.crop_size, layout.stage_channels, hidden,
                   prompt_stages=prompt_stages, fine_channels=layout.fine_channels if fine else 0,
                   modalities=modalities)

    def config(self) -> dict:
        """What rebuilds this gate (stored in ``bundle.json``)."""
        return {"members": self.members, "dim": self.dim, "crop_size": self.crop_size,
                "stage_channels": self.stage_channels, "hidden": self.hidden,
                "threshold": self.threshold, "prompt_stages": self.prompt_stages,
                "fine_channels": self.fine_channels,
                **({"modalities": self.modalities} if self.modalities else {})}

    def eligible(self, modality: str) -> Tensor:
        """(M,) bool: which members may answer on an image of ``modality`` ("ct" or "mr")."""
        return torch.tensor([name not in self.modalities or modality in self.modalities[name]
                             for name in self.members])

    def inputs(self, general: PromptableModel, embedding: Embedding, coords: Tensor,
               labels: Tensor) -> Tensor:
        """The gate's input features (B, F), no parameters involved, from the general model's
        embedding of B crops and the prompts: coords (B, N, 3) crop-voxel (i, j, k), labels (B, N)
        prompt kinds (``PAD`` for none).

        F = 2 sum(stage_channels) + 4 dim + sum(stage_channels[prompt_stages]) + fine_channels:
        the mean and standard deviation over the crop of every encoder stage and of the image tokens
        (``embedding.tokens``, (B, dim, T, T, T), axes (k, j, i)): what the image looks like
        (modality, sequence, anatomy); the image tokens' mean over trilinear samples at the
        prompts; the mean of the general model's prompt tokens; the ``prompt_stages`` maps' mean
        over samples at the prompts (what lies under the clicks); with ``fine_channels``, the
        full-resolution features' mean over samples at the positive clicks (0 without any).
        """
        tokens = embedding.tokens
        prompt_tokens = general.prompt_tokens(coords, labels)  # (B, N, dim)
        real = (labels != PAD).float()[..., None]  # (B, N, 1)
        count = real.sum(1).clamp(min=1)
        # grid_sample wants (x, y, z) = (i, j, k) in [-1, 1]; align_corners=False: -1 is the crop's
        # outer edge, voxel -0.5.
        grid = (2 * (coords + 0.5) / self.crop_size - 1)[:, :, None, None]  # (B, N, 1, 1, 3)
        def at_prompts(volume: Tensor, which: Tensor = real) -> Tensor:
            """(B, C, *, *, *) -> mean (B, C) over the prompts ``which`` (B, N, 1) marks."""
            samples = F.grid_sample(volume.expand(len(grid), -1, -1, -1, -1), grid, mode="bilinear",
                                    padding_mode="border", align_corners=False)[..., 0, 0]
            return (samples.transpose(1, 2) * which).sum(1) / which.sum(1).clamp(min=1)

        maps = [*embedding.stages, tokens]
        means = [x.mean((2, 3, 4)) for x in maps]
        # sqrt(E[x^2] - E[x]^2): a fifth of torch.std's time on these layouts, on CPU
        spreads = [((x * x).mean((2, 3, 4)) - mean ** 2).clamp(min=0).sqrt()
                   for x, mean in zip(maps, means)]
        under_clicks = [at_prompts(embedding.fine, (labels == POSITIVE).float()[..., None])
                        ] if self.fine_channels else []
        return torch.cat([*means, *spreads, at_prompts(tokens), (prompt_tokens * real).sum(1) / count,
                          *(at_prompts(embedding.stages[s]) for s in self.prompt_stages),
                          *under_clicks], dim=1)

    def forward(self, features: Tensor) -> Tensor:
        """features (B, F) from :meth:`inputs` -> logits (B, M), one per member."""
        return self.mlp(self.norm(features))


def route(probabilities: Tensor, threshold: float, eligible: Optional[Tensor] = None) -> Tensor:
    """The selection strategy: probabilities (..., M), general model first -> member index (...):
    the top-1 member among the ``eligible`` ones ((..., M) bool, default all) when its probability
    reaches ``threshold``, else 0 (the general model)."""
    if eligible is not None:
        probabilities = probabilities * eligible.to(probabilities.device)
    top_probability, top = probabilities.max(-1)
    return torch.where(top_probability >= threshold, top, torch.zeros_like(top))
