"""From crop logits back to the volume's grid: which cells changed, which voxels they reach, and the
mask rendered there (trilinear samples of the logits, only where needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..geometry import ras_to_ijk
from ..volume import Grid
from .crop import Crop


def touched_faces(mask: np.ndarray, min_voxels: int = 4) -> list[tuple[int, int]]:
    """Faces of a (k, j, i) crop mask with foreground: (axis, -1 low side | +1 high side), axes i, j, k."""
    faces = []
    for axis_ijk, array_axis in ((0, 2), (1, 1), (2, 0)):
        for side, index in ((-1, 0), (1, -1)):
            if np.count_nonzero(np.take(mask, index, axis=array_axis)) >= min_voxels:
                faces.append((axis_ijk, side))
    return faces


def region_slices(crop: Crop, volume: Grid, changed_ijk_lo=None, changed_ijk_hi=None):
    """(k, j, i) slices of the volume covering the crop box [lo, hi] in continuous crop-voxel (i, j, k)
    coordinates (default: the whole crop).

    Returns None when they do not overlap.
    """
    grid = crop.grid
    size = np.asarray(grid.shape[::-1]) - 1
    lo = np.zeros(3) if changed_ijk_lo is None else np.asarray(changed_ijk_lo, dtype=np.float64)
    hi = size if changed_ijk_hi is None else np.asarray(changed_ijk_hi, dtype=np.float64)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])], dtype=np.float64)
    ras = corners @ grid.ijk_to_ras[:3, :3].T + grid.ijk_to_ras[:3, 3]
    ijk = ras_to_ijk(ras, volume.ijk_to_ras)
    start = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    stop = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.asarray(volume.shape[::-1]))
    if np.any(stop <= start):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start[::-1], stop[::-1]))


SLAB_VOXELS = 1 << 21
"""Volume voxels sampled at a time: the sampling grid and its indices take about 50 bytes a voxel."""


def sample_logits(logits: torch.Tensor, crop: Crop, volume: Grid, region: tuple[slice, slice, slice],
                  cells: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear samples of crop ``logits`` (S, S, S) at the volume voxels of ``region``.

    Returns bool arrays of the region's shape: the mask (logit > 0) and which voxels the crop
    reaches. With ``cells`` ((S/b)^3 bool, (k, j, i), from :func:`changed_cells`), a voxel counts as
    reached only when its nearest crop voxel lies in an active cell. Only the region's voxels are
    computed, a slab of :data:`SLAB_VOXELS` at a time.
    """
    frame = crop.grid
    k, j, i = (np.arange(s.start, s.stop, dtype=np.float32) for s in region)
    volume_to_crop = (np.linalg.inv(frame.ijk_to_ras) @ volume.ijk_to_ras).astype(np.float32)
    # grid_sample wants (x, y, z) = (i, j, k) in [-1, 1] of the crop (align_corners=True: -1 = voxel 0).
    scale = 2.0 / (np.asarray(frame.shape[::-1], dtype=np.float32) - 1)
    m = volume_to_crop[:3, :3] * scale[:, None]
    t = volume_to_crop[:3, 3] * scale - 1
    source = logits[None, None].float().cpu()
    mask = np.empty((len(k), len(j), len(i)), bool)
    inside = np.empty_like(mask)
    slab = max(1, SLAB_VOXELS // (len(j) * len(i)))  # k-slices at a time: bounded temporaries
    for start in range(0, len(k), slab):
        grid = (torch.from_numpy(t)
                + torch.from_numpy(k[start:start + slab])[:, None, None, None] * torch.from_numpy(m[:, 2])
                + torch.from_numpy(j)[None, :, None, None] * torch.from_numpy(m[:, 1])
                + torch.from_numpy(i)[None, None, :, None] * torch.from_numpy(m[:, 0]))
        values = torch.nn.functional.grid_sample(source, grid[None], mode="bilinear", padding_mode="border",
                                                 align_corners=True)[0, 0]
        mask[start:start + slab] = (values > 0).numpy()
        inside[start:start + slab] = (grid.abs() <= 1 + 1e-6).all(dim=-1).numpy()
        if cells is not None:
            size = torch.tensor(frame.shape[::-1], dtype=torch.float32) - 1  # (i, j, k)
            nearest = torch.round((grid + 1) / 2 * size).long()
            nearest = torch.minimum(nearest.clamp(min=0), size.long())
            block = frame.shape[0] // cells.shape[0]
            cell = (nearest // block).numpy()
            inside[start:start + slab] &= cells[cell[..., 2], cell[..., 1], cell[..., 0]]
    return mask, inside


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


@dataclass
class Render:
    """One piece of an answer on ``crop`` rendered on the volume's grid, not yet written:
    ``rendered`` (the mask) and ``reached`` (the voxels it may change) over ``region`` (None:
    nothing changed), and the crop's ``logits`` as they stand once it is written."""

    crop: Crop
    logits: np.ndarray
    region: Optional[tuple[slice, slice, slice]] = None
    rendered: Optional[np.ndarray] = None
    reached: Optional[np.ndarray] = None


def render(crop: Crop, logits: np.ndarray, old: np.ndarray, volume: Grid,
           focus: Optional[np.ndarray] = None, radius: float = np.inf) -> Render:
    """The cells of ``crop`` where ``logits`` and ``old`` (both (S, S, S)) differ, rendered on the
    ``volume`` grid (nothing is written). With ``focus`` (crop-voxel (i, j, k)), only cells within
    ``radius`` crop voxels of it; what is not rendered keeps its ``old`` logits in the crop's memory.
    """
    changed = changed_cells(logits, old, focus=focus, radius=radius)
    region = None if changed is None else region_slices(crop, volume, *changed[1])
    if region is None:
        return Render(crop, logits)
    cells = changed[0]
    rendered, reached = sample_logits(torch.from_numpy(logits), crop, volume, region, cells)
    if focus is not None:
        block = crop.size // cells.shape[0]
        pasted = cells.repeat(block, 0).repeat(block, 1).repeat(block, 2)
        logits = np.where(pasted, logits, old)
    return Render(crop, logits, region, rendered, reached)
