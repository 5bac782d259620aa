"""Where the model looks: crop planning, image sampling and pasting masks back.

The one place where RAS prompts become model-space coordinates. A crop is an axis-aligned RAS
:class:`~ka2er_core.volume.Grid` of ``crop_size``^3 voxels; its spacing grows with the object so that
a whole brain or liver fits (zoom out), from the bundle's base spacing up to a maximum. Spacings are
quantised to powers of ``ZOOM_STEP`` so that nearby prompts reuse a cached crop.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..geometry import crop_grid, ras_to_ijk
from ..volume import Grid

ZOOM_STEP = 1.25
MARGIN = 1.2  # the crop spans the region of interest times this factor


def quantise_spacing(spacing: float, base: float, maximum: float) -> float:
    """Smallest ``base * ZOOM_STEP**n`` >= ``spacing`` (clipped to [base, maximum])."""
    if spacing <= base:
        return base
    n = math.ceil(math.log(spacing / base, ZOOM_STEP) - 1e-9)
    return min(base * ZOOM_STEP ** n, maximum)


def plan_crop(low_ras: np.ndarray, high_ras: np.ndarray, crop_size: int, base_spacing: float,
              max_spacing: float) -> Grid:
    """An isotropic crop covering the RAS box [low, high] with a margin, at a quantised spacing."""
    extent = float(np.max(high_ras - low_ras))
    spacing = quantise_spacing(extent * MARGIN / (crop_size - 1), base_spacing, max_spacing)
    centre = (np.asarray(low_ras) + np.asarray(high_ras)) / 2
    # Snap the centre to the spacing so that close prompts give the same crop.
    centre = np.round(centre / (spacing * 4)) * spacing * 4
    return crop_grid(centre, (crop_size,) * 3, (spacing,) * 3)


def covers(crop: Grid, low_ras: np.ndarray, high_ras: np.ndarray, margin_voxels: float = 2) -> bool:
    """True when the RAS box lies inside ``crop`` with ``margin_voxels`` to spare on every side."""
    lo = ras_to_ijk(low_ras, crop.ijk_to_ras)
    hi = ras_to_ijk(high_ras, crop.ijk_to_ras)
    size = np.asarray(crop.shape[::-1])
    return bool(np.all(np.minimum(lo, hi) >= margin_voxels)
                and np.all(np.maximum(lo, hi) <= size - 1 - margin_voxels))


def touched_faces(mask: np.ndarray, min_voxels: int = 4) -> list[tuple[int, int]]:
    """Faces of a (k, j, i) crop mask with foreground: (axis, -1 low side | +1 high side), axes i, j, k."""
    faces = []
    for axis_ijk, array_axis in ((0, 2), (1, 1), (2, 0)):
        for side, index in ((-1, 0), (1, -1)):
            if np.count_nonzero(np.take(mask, index, axis=array_axis)) >= min_voxels:
                faces.append((axis_ijk, side))
    return faces


def region_slices(crop: Grid, volume: Grid, changed_ijk_lo=None, changed_ijk_hi=None):
    """(k, j, i) slices of the volume covering the crop box [lo, hi] in continuous crop-voxel (i, j, k)
    coordinates (default: the whole crop).

    Returns None when they do not overlap.
    """
    size = np.asarray(crop.shape[::-1]) - 1
    lo = np.zeros(3) if changed_ijk_lo is None else np.asarray(changed_ijk_lo, dtype=np.float64)
    hi = size if changed_ijk_hi is None else np.asarray(changed_ijk_hi, dtype=np.float64)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])], dtype=np.float64)
    ras = corners @ crop.ijk_to_ras[:3, :3].T + crop.ijk_to_ras[:3, 3]
    ijk = ras_to_ijk(ras, volume.ijk_to_ras)
    start = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    stop = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.asarray(volume.shape[::-1]))
    if np.any(stop <= start):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start[::-1], stop[::-1]))


def sample_logits(logits: torch.Tensor, crop: Grid, volume: Grid, region: tuple[slice, slice, slice],
                  cells: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear samples of crop ``logits`` (S, S, S) at the volume voxels of ``region``.

    Returns bool arrays of the region's shape: the mask (logit > 0) and which voxels the crop
    reaches. With ``cells`` ((S/b)^3 bool, (k, j, i), from :func:`changed_cells`), a voxel counts as
    reached only when its nearest crop voxel lies in an active cell. Only the region's voxels are
    computed, in one pass.
    """
    k, j, i = (np.arange(s.start, s.stop, dtype=np.float32) for s in region)
    volume_to_crop = (np.linalg.inv(crop.ijk_to_ras) @ volume.ijk_to_ras).astype(np.float32)
    # grid_sample wants (x, y, z) = (i, j, k) in [-1, 1] of the crop (align_corners=True: -1 = voxel 0).
    scale = 2.0 / (np.asarray(crop.shape[::-1], dtype=np.float32) - 1)
    m = volume_to_crop[:3, :3] * scale[:, None]
    t = volume_to_crop[:3, 3] * scale - 1
    grid = (torch.from_numpy(t)
            + torch.from_numpy(k)[:, None, None, None] * torch.from_numpy(m[:, 2])
            + torch.from_numpy(j)[None, :, None, None] * torch.from_numpy(m[:, 1])
            + torch.from_numpy(i)[None, None, :, None] * torch.from_numpy(m[:, 0]))
    values = torch.nn.functional.grid_sample(
        logits[None, None].float().cpu(), grid[None], mode="bilinear", padding_mode="border",
        align_corners=True)[0, 0]
    inside = (grid.abs() <= 1 + 1e-6).all(dim=-1).numpy()
    if cells is not None:
        size = torch.tensor(crop.shape[::-1], dtype=torch.float32) - 1  # (i, j, k)
        nearest = torch.round((grid + 1) / 2 * size).long()
        nearest = torch.minimum(nearest.clamp(min=0), size.long())
        block = crop.shape[0] // cells.shape[0]
        cell = (nearest // block).numpy()
        inside &= cells[cell[..., 2], cell[..., 1], cell[..., 0]]
    return (values > 0).numpy(), inside


def changed_cells(new_logits: np.ndarray, old_logits: np.ndarray, block: int = 4,
                  focus: Optional[np.ndarray] = None, radius: float = np.inf):
    """Which ``block``^3 cells of the crop ((S/block)^3 bool, (k, j, i)) hold a voxel whose sign
    changed or that neighbours one (the support of trilinear interpolation), and the crop-voxel
    (i, j, k) box (lo, hi) enclosing them; None when nothing changed. Corrective clicks change a few
    scattered voxels; rendering only these cells keeps the paste proportional to the change and
    leaves every other voxel of the mask as it was. With ``focus`` (crop-voxel (i, j, k)), only cells
    whose centre lies within ``radius`` voxels of it.
    """
    changed = (new_logits > 0) != (old_logits > 0)
    if not changed.any():
        return None
    # A cell is active when a changed voxel lies in it or one voxel around it: one max-pool.
    active = torch.nn.functional.max_pool3d(torch.from_numpy(changed)[None, None].float(),
                                            block + 2, stride=block, padding=1)[0, 0].numpy() > 0
    if focus is not None:
        centres = (np.indices(active.shape).reshape(3, -1).T[:, ::-1] * block + (block - 1) / 2)
        near = np.linalg.norm(centres - np.asarray(focus), axis=1) <= radius
        active &= near.reshape(active.shape)
    if not active.any():
        return None
    lo_kji, hi_kji = (np.array(b) for b in (np.argwhere(active).min(0), np.argwhere(active).max(0)))
    lo = lo_kji[::-1] * block - 0.5
    hi = (hi_kji[::-1] + 1) * block - 0.5
    return active, (lo, hi)
