"""Image encoder: MONAI's Swin transformer (the SwinUNETR backbone) plus a neck.

Input: a normalised crop (B, 1, S, S, S) in (k, j, i) order, S = ``crop_size``. Output: an
:class:`ImageEmbedding` computed once per crop and reused for every click on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from .common import LayerNorm3d
from .config import ModelConfig
from .protocols import Embedding


@dataclass
class ImageEmbedding(Embedding):
    """The Swin model's :class:`~.protocols.Embedding` of B crops.

    ``tokens`` (B, dim, S/8, S/8, S/8): the image tokens. ``stages``: the backbone's five stages
    (1/2 to 1/32), the multi-scale features the amalgamation layer taps. ``fine`` (B, fine_channels,
    S, S, S): full-resolution features for the final mask. Its own decoder also reads
    ``skip_quarter`` (B, dim/2, S/4, ...) and ``skip_half`` (B, dim/4, S/2, ...): encoder features
    for upsampling; ``bands`` (B, band_channels, S, S, S) or None: full-resolution features it
    thresholds per prompt.
    """

    skip_quarter: torch.Tensor
    skip_half: torch.Tensor
    bands: Optional[torch.Tensor] = None


class ImageEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        e = config.encoder_embed_dim
        self.backbone = SwinTransformer(
            in_chans=config.in_channels, embed_dim=e, window_size=(config.encoder_window,) * 3,
            patch_size=(2, 2, 2), depths=config.encoder_depths, num_heads=config.encoder_heads,
            spatial_dims=3, use_v2=True)
        # Stages of the backbone: 1/2 (e), 1/4 (2e), 1/8 (4e), 1/16 (8e), 1/32 (16e) channels.
        self.to_tokens = nn.ModuleList(nn.Conv3d(c, config.dim, 1) for c in (4 * e, 8 * e, 16 * e))
        self.neck = nn.Sequential(LayerNorm3d(config.dim),
                                  nn.Conv3d(config.dim, config.dim, 3, padding=1),
                                  LayerNorm3d(config.dim))
        self.to_skip_quarter = nn.Conv3d(2 * e, config.dim // 2, 1)
        self.to_skip_half = nn.Conv3d(e, config.dim // 4, 1)
        self.fine = nn.Sequential(
            nn.Conv3d(config.in_channels, config.fine_channels, 3, padding=1), nn.GELU(),
            nn.Conv3d(config.fine_channels, config.fine_channels, 3, padding=1))
        self.bands = (nn.Conv3d(config.in_channels, config.band_channels, 3, padding=1)
                      if config.band_channels else None)

    def forward(self, image: torch.Tensor) -> ImageEmbedding:
        """image (B, C, S, S, S) -> ImageEmbedding."""
        return self.from_hidden(image, self.backbone_features(image))

    def backbone_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """image (B, C, S, S, S) -> the backbone's five stages, (B, e * 2^s, S / 2^(s+1), ...) for
        s = 0..4. The amalgamation layer replaces the three coarsest before :meth:`from_hidden`."""
        return list(self.backbone(image, normalize=True))

    def from_hidden(self, image: torch.Tensor, hidden: list[torch.Tensor]) -> ImageEmbedding:
        """The embedding from backbone stages (as :meth:`backbone_features` returns them) and the
        image (B, C, S, S, S), which the full-resolution branch reads directly."""
        size = hidden[2].shape[2:]
        tokens = sum(F.interpolate(proj(h), size=size, mode="trilinear", align_corners=False)
                     if h.shape[2:] != size else proj(h)
                     for proj, h in zip(self.to_tokens, hidden[2:]))
        return ImageEmbedding(
            tokens=self.neck(tokens),
            stages=list(hidden),
            fine=self.fine(image),
            skip_quarter=self.to_skip_quarter(hidden[1]),
            skip_half=self.to_skip_half(hidden[0]),
            bands=None if self.bands is None else self.bands(image))
