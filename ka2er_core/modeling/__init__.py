"""The promptable 3D model, one file per part (segment-anything's split), and the task experts."""

from .config import ModelConfig
from .expert import ExpertPlan, PlanError, TaskExpert
from .image_encoder import ImageEmbedding, ImageEncoder
from .promptable import PromptableSegmenter

__all__ = ["ExpertPlan", "ImageEmbedding", "ImageEncoder", "ModelConfig", "PlanError",
           "PromptableSegmenter", "TaskExpert"]
