"""Errors for bad input: one type per kind, each naming the file and the field.

Every error the user can cause derives from :class:`Ka2erError`; the command line prints its message on
one line and exits non-zero. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
from typing import Optional


class Ka2erError(ValueError):
    """Bad input. ``str(err)`` reads ``<path>: <field>: <problem>`` (path and field when known)."""

    def __init__(self, problem: str, *, path: Optional[os.PathLike | str] = None,
                 field: Optional[str] = None):
        self.problem = problem
        self.path = None if path is None else os.fspath(path)
        self.field = field
        parts = [p for p in (self.path, field, problem) if p]
        super().__init__(": ".join(parts))


class UnreadableFileError(Ka2erError):
    """The file is missing, truncated, corrupt or of an unsupported format."""


class NotThreeDimensionalError(Ka2erError):
    """The image is not a 3D scalar volume (2D, or 4D with more than one frame or channel)."""


class NonFiniteVoxelsError(Ka2erError):
    """The voxels contain NaN or Inf."""


class InvalidSpacingError(Ka2erError):
    """A voxel spacing is zero, negative or not finite."""


class SingularDirectionError(Ka2erError):
    """The direction matrix (or the whole voxel-to-world matrix) is singular or not finite."""


class GeometryMismatchError(Ka2erError):
    """Two volumes that must share a grid (image and label, mask and reference) do not."""


class EmptyMaskError(Ka2erError):
    """A mask that must contain foreground is empty."""


class DatasetError(Ka2erError):
    """A dataset folder (Medical Segmentation Decathlon / nnU-Net v2) is incomplete or inconsistent."""


class PromptError(Ka2erError):
    """A prompt (point or box) is malformed or lies outside the image."""


class UnwritableFileError(Ka2erError, OSError):
    """An output cannot be written: no space left, no permission, or a file where a folder must be
    (or a folder where a file must be). Also an :class:`OSError`, as the failure it reports."""
