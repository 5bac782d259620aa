"""Interactive inference: RAS prompts in, masks on the volume's grid out."""

from .session import InteractiveSession, Result

__all__ = ["InteractiveSession", "Result"]
