"""NRRD volumes (pynrrd): space LPS, RAS or LAS, any direction matrix, gzip or raw."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np

from ..errors import NotThreeDimensionalError, SingularDirectionError, UnreadableFileError
from ..geometry import LPS_FROM_RAS

# Sign flips that take each NRRD space's coordinates to RAS.
_SPACE_TO_RAS = {
    "left-posterior-superior": np.diag([-1.0, -1.0, 1.0]),
    "lps": np.diag([-1.0, -1.0, 1.0]),
    "right-anterior-superior": np.eye(3),
    "ras": np.eye(3),
    "left-anterior-superior": np.diag([-1.0, 1.0, 1.0]),
    "las": np.diag([-1.0, 1.0, 1.0]),
}
DOMAIN_KINDS = {"domain", "space", "time"}


def read_nrrd(path: Path) -> tuple[np.ndarray, dict]:
    """Read ``path`` as (array in C order, header); any failure becomes :class:`UnreadableFileError`."""
    try:
        return nrrd.read(str(path), index_order="C")
    except FileNotFoundError:
        raise UnreadableFileError("no such file", path=path) from None
    except Exception as err:  # pynrrd raises many types for truncated or corrupt files
        raise UnreadableFileError(f"not a readable NRRD file ({type(err).__name__}: {err})",
                                  path=path) from None


def ijk_to_ras_from_header(header: dict, spatial_axes: list[int], path: Path) -> np.ndarray:
    """4x4 voxel-to-RAS matrix from a NRRD header; ``spatial_axes`` are header (i, j, k) axis numbers."""
    space = str(header.get("space", "")).lower()
    if "space directions" in header:
        if space not in _SPACE_TO_RAS:
            raise UnreadableFileError(f"unsupported space {header.get('space')!r}; expected "
                                      "left-posterior-superior, right-anterior-superior or "
                                      "left-anterior-superior", path=path, field="space")
        rows = np.asarray(header["space directions"], dtype=np.float64)[spatial_axes]
        origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
        to_ras = _SPACE_TO_RAS[space]
        matrix = np.eye(4)
        matrix[:3, :3] = to_ras @ rows.T
        matrix[:3, 3] = to_ras @ origin
    else:  # no world frame: axis-aligned with per-axis spacings (NRRD's default is 1 mm)
        spacings = np.asarray(header.get("spacings", [1.0] * len(header["sizes"])), dtype=np.float64)
        matrix = np.diag([*spacings[spatial_axes], 1.0])
    if not np.all(np.isfinite(matrix)):
        raise SingularDirectionError("space directions or origin are not finite", path=path,
                                     field="space directions")
    return matrix


def load_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Array (k, j, i) and ijk_to_ras of a 3D scalar NRRD (single-valued extra axes are dropped)."""
    array, header = read_nrrd(path)
    kinds = list(header.get("kinds", ["domain"] * array.ndim))
    spatial = [axis for axis, kind in enumerate(kinds) if kind in DOMAIN_KINDS]
    if len(spatial) != 3 and "space directions" in header:
        directions = np.asarray(header["space directions"], dtype=np.float64)
        spatial = [axis for axis in range(array.ndim) if np.all(np.isfinite(directions[axis]))]
    if len(spatial) != 3:
        raise NotThreeDimensionalError(
            f"expected 3 spatial axes, got sizes {list(header['sizes'])} with kinds {kinds}",
            path=path, field="dimension")
    extra = [axis for axis in range(array.ndim) if axis not in spatial]
    # C order reverses the header's axis order: header axis a is array axis ndim - 1 - a.
    if any(array.shape[array.ndim - 1 - axis] != 1 for axis in extra):
        raise NotThreeDimensionalError(
            f"expected a scalar volume, got sizes {list(header['sizes'])} with kinds {kinds}",
            path=path, field="sizes")
    array = array.reshape([array.shape[array.ndim - 1 - axis] for axis in reversed(spatial)])
    return array, ijk_to_ras_from_header(header, spatial, path)


def lps_header(ijk_to_ras: np.ndarray) -> dict:
    """The geometry fields of a NRRD header in Slicer's convention (space LPS)."""
    ijk_to_lps = LPS_FROM_RAS @ ijk_to_ras
    return {"space": "left-posterior-superior",
            "space directions": ijk_to_lps[:3, :3].T.copy(),
            "space origin": ijk_to_lps[:3, 3].copy()}


def write_nrrd(path: Path, array: np.ndarray, header: dict) -> None:
    """Write a C-ordered ``array`` with ``header`` (gzip unless the header says otherwise)."""
    header = {"encoding": "gzip", **header}
    nrrd.write(str(path), np.ascontiguousarray(array), header, index_order="C",
               compression_level=6)
