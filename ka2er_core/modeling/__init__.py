"""The promptable 3D model, one file per part (segment-anything's split)."""

from .config import ModelConfig
from .image_encoder import ImageEmbedding, ImageEncoder
from .promptable import PromptableSegmenter

__all__ = ["ImageEmbedding", "ImageEncoder", "ModelConfig", "PromptableSegmenter"]
