"""What a user checks before segmenting a file: geometry, intensities, labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .geometry import is_oblique, orientation_code
from .io import load_segmentation, load_volume
from .io.atomic import full_suffix

MAX_LABELS = 64
"""An image of whole numbers in 0..65535 with at most this many distinct nonzero values reads as a
label map, whether stored as integers or as floats (label maps saved as float32 are common)."""


def label_counts(array: np.ndarray) -> dict[int, int] | None:
    """Voxel count per nonzero value if ``array`` looks like a label map, else None: integers, or
    floats that are all whole numbers, in 0..65535, with at most :data:`MAX_LABELS` nonzero values."""
    if array.size == 0 or not (np.issubdtype(array.dtype, np.integer)
                               or np.issubdtype(array.dtype, np.floating)):
        return None
    low, high = array.min(), array.max()
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 65535:
        return None
    if np.issubdtype(array.dtype, np.floating):
        if not np.array_equal(array, np.floor(array)):  # intensities, not labels
            return None
        array = array.astype(np.uint16)
    counts = np.bincount(array.ravel(), minlength=int(high) + 1)
    values = np.flatnonzero(counts)
    if len(values) > MAX_LABELS + 1:
        return None
    return {int(v): int(counts[v]) for v in values if v != 0}


def describe_file(path: str | Path) -> str:
    """A multi-line summary of a volume or segmentation file (raises Ka2erError on bad input)."""
    path = Path(path)
    suffix = full_suffix(path)
    if suffix == ".seg.nrrd":
        segmentation = load_segmentation(path)
        grid, array = segmentation.grid, None
        labels = {f"{name} (label {segmentation.label_values[name]})": int(np.count_nonzero(mask))
                  for name, mask in segmentation.masks.items()}
        kind = "Slicer segmentation"
    else:
        volume = load_volume(path)
        grid, array = volume.grid, volume.array
        counts = label_counts(array)
        labels = None if counts is None else {f"label {v}": n for v, n in counts.items()}
        kind = ("NIfTI" if suffix.startswith(".nii") else "NRRD") + (
            " label map" if labels is not None else " image")
    k, j, i = grid.shape
    spacing = grid.spacing
    lines = [
        f"{path}",
        f"  type         {kind}",
        f"  size (i j k) {i} x {j} x {k} voxels",
        f"  spacing      {spacing[0]:.4g} x {spacing[1]:.4g} x {spacing[2]:.4g} mm",
        "  origin       RAS ({:.2f}, {:.2f}, {:.2f}) mm".format(*grid.origin),
        f"  orientation  {orientation_code(grid.ijk_to_ras)} "
        f"({'oblique' if is_oblique(grid.ijk_to_ras) else 'axis-aligned'})",
    ]
    if array is not None:
        lines.append(f"  dtype        {array.dtype}")
        lines.append(f"  intensity    min {array.min():.6g}, max {array.max():.6g}, "
                     f"mean {array.mean(dtype=np.float64):.6g}")
    if labels is not None:
        lines.append(f"  labels       {len(labels)}" + ("" if labels else " (all background)"))
        lines += [f"    {name}: {count} voxels" for name, count in labels.items()]
    return "\n".join(lines)
