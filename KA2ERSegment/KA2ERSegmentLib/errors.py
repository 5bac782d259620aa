"""What goes wrong, said in one line a clinician can act on. Nothing here needs Slicer."""

from __future__ import annotations


class SceneError(ValueError):
    """A scene the module cannot work with (what node, what is wrong, what is expected)."""


def describe_error(error: BaseException, device: str = "") -> str:
    """One clear line for the status bar and the error dialog."""
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return (f"out of memory{' on ' + device if device else ''}: choose device cpu, crop the "
                "volume, or close other programs")
    if isinstance(error, ConnectionError):
        return f"server unreachable: {error}"
    return str(error) or type(error).__name__
