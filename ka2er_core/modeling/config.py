"""Architecture configuration of the promptable model, stored in every bundle."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the promptable model.

    ``crop_size`` is the side of the cubic model-space crop in voxels; the image embedding has
    ``crop_size / 8`` tokens per side. ``encoder_*`` configure MONAI's Swin transformer (the SwinUNETR
    backbone), ``dim`` the prompt/decoder width, ``fine_channels`` the full-resolution features the
    final mask is refined with, ``band_channels`` the full-resolution features the mask token
    thresholds and weighs per prompt (intensity bands that follow a tissue border; 0: none).
    """

    crop_size: int = 64
    in_channels: int = 1
    encoder_embed_dim: int = 24
    encoder_depths: tuple[int, ...] = (2, 2, 2, 2)
    encoder_heads: tuple[int, ...] = (3, 6, 12, 24)
    encoder_window: int = 4
    dim: int = 96
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_dim: int = 384
    fine_channels: int = 8
    band_channels: int = 0

    def __post_init__(self):
        if self.crop_size % 32:
            raise ValueError(f"crop_size must be a multiple of 32, got {self.crop_size}")

    @property
    def embedding_size(self) -> int:
        """Tokens per side of the image embedding (1/8 of the crop)."""
        return self.crop_size // 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config fields {sorted(unknown)}")
        tuples = {"encoder_depths", "encoder_heads"}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in values.items()})

    @classmethod
    def tiny(cls) -> "ModelConfig":
        """The CPU configuration of the shipped models and the tests."""
        return cls(crop_size=64, encoder_embed_dim=12, dim=64, decoder_mlp_dim=256,
                   decoder_heads=4, fine_channels=8)

    @classmethod
    def full(cls) -> "ModelConfig":
        """A GPU configuration (SwinUNETR's default width, 128^3 crops)."""
        return cls(crop_size=128, encoder_embed_dim=48, dim=256, decoder_mlp_dim=1024,
                   decoder_heads=8, fine_channels=16)
