"""SAM-Med3D's sizes (:class:`SamMed3DConfig`, stored in a bundle's architecture entry)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

TYPE = "sam_med3d"
"""The ``"type"`` of SAM-Med3D's architecture entry in ``bundle.json``."""


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
