"""The volume every layer passes around: a (k, j, i) array and its voxel-to-RAS matrix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import (GeometryMismatchError, InvalidSpacingError, NonFiniteVoxelsError,
                     NotThreeDimensionalError, SingularDirectionError)


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` in (k, j, i) order and ``ijk_to_ras`` (4x4, RAS mm = M @ (i, j, k, 1))."""

    shape: tuple[int, int, int]
    ijk_to_ras: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k (the order of SimpleITK's and Slicer's ``GetSpacing``)."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the i, j and k axes."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of the centre of voxel (i, j, k) = (0, 0, 0)."""
        return self.ijk_to_ras[:3, 3].copy()

    def same_as(self, other: "Grid", atol: float = 1e-4) -> bool:
        """True when both grids have the same shape and, within ``atol`` mm, the same matrix."""
        return (tuple(self.shape) == tuple(other.shape)
                and np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=atol, rtol=0))


@dataclass(frozen=True)
class Volume:
    """A 3D scalar image or label map.

    ``array`` is numpy in (k, j, i) order (Slicer's ``arrayFromVolume``, SimpleITK's
    ``GetArrayFromImage``); voxel (i, j, k) is ``array[k, j, i]``. ``ijk_to_ras`` is 4x4 float64 with
    RAS(mm) = M @ (i, j, k, 1); oblique and flipped directions are legal. ``labels`` maps segment
    names to label values for label maps (empty for images). ``path`` is where it was read from.
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray
    labels: dict[str, int] = field(default_factory=dict)
    path: Optional[str] = None

    def __post_init__(self):
        matrix = np.asarray(self.ijk_to_ras, dtype=np.float64)
        object.__setattr__(self, "ijk_to_ras", matrix)
        validate_geometry(self.array.shape, matrix, path=self.path)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def grid(self) -> Grid:
        return Grid(self.shape, self.ijk_to_ras)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return self.grid.spacing

    @property
    def direction(self) -> np.ndarray:
        return self.grid.direction

    @property
    def origin(self) -> np.ndarray:
        return self.grid.origin

    def with_array(self, array: np.ndarray, labels: Optional[dict[str, int]] = None) -> "Volume":
        """A volume on the same grid holding ``array`` (e.g. a mask or a label map)."""
        if tuple(array.shape) != self.shape:
            raise GeometryMismatchError(
                f"array shape {tuple(array.shape)} differs from the volume's {self.shape}",
                path=self.path, field="shape")
        return Volume(array, self.ijk_to_ras, dict(labels or {}), None)


def validate_geometry(shape, ijk_to_ras: np.ndarray, *, path=None) -> None:
    """Raise a clear error unless ``shape`` is 3D and ``ijk_to_ras`` an invertible finite affine."""
    if len(shape) != 3:
        raise NotThreeDimensionalError(
            f"expected a 3D volume, got {len(shape)} dimensions {tuple(shape)}", path=path,
            field="shape")
    if min(shape) < 1:
        raise NotThreeDimensionalError(f"empty dimension in shape {tuple(shape)}", path=path,
                                       field="shape")
    if ijk_to_ras.shape != (4, 4):
        raise SingularDirectionError(f"expected a 4x4 matrix, got {ijk_to_ras.shape}", path=path,
                                     field="ijk_to_ras")
    if not np.all(np.isfinite(ijk_to_ras)):
        raise SingularDirectionError("matrix has NaN or Inf entries", path=path, field="ijk_to_ras")
    if not np.allclose(ijk_to_ras[3], [0, 0, 0, 1]):
        raise SingularDirectionError(f"last row must be 0 0 0 1, got {ijk_to_ras[3].tolist()}",
                                     path=path, field="ijk_to_ras")
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise InvalidSpacingError(f"spacing must be > 0 mm, got {spacing.tolist()}", path=path,
                                  field="spacing")
    direction = ijk_to_ras[:3, :3] / spacing
    if abs(np.linalg.det(direction)) < 1e-6:
        raise SingularDirectionError(f"direction matrix is singular: {direction.tolist()}",
                                     path=path, field="direction")


def check_finite(array: np.ndarray, *, path=None, field: str = "voxels") -> None:
    """Raise :class:`NonFiniteVoxelsError` when a floating-point ``array`` holds NaN or Inf."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise NonFiniteVoxelsError(f"{bad} voxels are NaN or Inf", path=path, field=field)
