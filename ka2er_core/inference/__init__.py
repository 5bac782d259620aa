"""Interactive inference: RAS prompts in, masks on the volume's grid out.

``InteractiveSession`` imports torch on first use; :class:`Result` does not.
"""

from .result import Result

__all__ = ["InteractiveSession", "Result"]


def __getattr__(name):
    if name == "InteractiveSession":
        from .session import InteractiveSession

        return InteractiveSession
    raise AttributeError(f"module 'ka2er_core.inference' has no attribute {name!r}")
