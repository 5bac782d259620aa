"""Slicer segmentations (``.seg.nrrd``) and label maps.

A ``.seg.nrrd`` is a NRRD in LPS whose custom fields describe segments (``Segment<N>_Name``,
``_LabelValue``, ``_Layer``, ``_Color``, ``_Extent``, ...); overlapping segments live in separate
layers (a 4D file whose first axis has kind ``list``). Segments here are (k, j, i) uint8 masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import GeometryMismatchError, Ka2erError, UnreadableFileError
from ..geometry import foreground_bounds
from ..volume import Grid, Volume
from .nrrd_format import ijk_to_ras_from_header, lps_header, read_nrrd, write_nrrd

# Colours of Slicer's generic anatomy segments, cycled for segments without a colour.
DEFAULT_COLORS = [
    (0.502, 0.682, 0.502), (0.945, 0.839, 0.569), (0.694, 0.478, 0.396), (0.435, 0.722, 0.824),
    (0.847, 0.396, 0.310), (0.867, 0.510, 0.396), (0.565, 0.933, 0.565), (0.753, 0.408, 0.345),
    (0.863, 0.961, 0.078), (0.306, 0.247, 0.000), (1.000, 0.980, 0.863), (0.902, 0.863, 0.275),
]


class OverlappingSegmentsError(Ka2erError):
    """Segments overlap where the output (a label map) cannot represent it."""


@dataclass(frozen=True)
class Segmentation:
    """Named binary masks on one grid: ``masks[name]`` is uint8 (k, j, i)."""

    masks: dict[str, np.ndarray]
    ijk_to_ras: np.ndarray
    colors: dict[str, tuple[float, float, float]]
    label_values: dict[str, int]

    @property
    def grid(self) -> Grid:
        return Grid(next(iter(self.masks.values())).shape, self.ijk_to_ras)

    def to_label_map(self, path=None) -> Volume:
        """One label map with each segment's label value; overlaps raise a clear error."""
        values = self.label_values
        if len(set(values.values())) != len(values):  # values repeat across layers: renumber
            values = {name: index + 1 for index, name in enumerate(self.masks)}
        masks = {name: mask > 0 for name, mask in self.masks.items()}
        return Volume(label_map(masks, values, path), self.ijk_to_ras, dict(values),
                      None if path is None else str(path))


def read_seg_nrrd(path: Path) -> Segmentation:
    """Read a Slicer ``.seg.nrrd`` (3D, or 4D with layers) into named masks on its grid."""
    array, header = read_nrrd(path)
    numbers = sorted({int(key[len("Segment"):].split("_")[0]) for key in header
                      if key.startswith("Segment") and key.split("_")[0][len("Segment"):].isdigit()})
    if not numbers:
        raise UnreadableFileError("no Segment<N>_* fields: not a Slicer segmentation", path=path,
                                  field="Segment0_Name")
    if array.ndim == 3:
        layers = array[None]
        spatial = [0, 1, 2]
    elif array.ndim == 4:  # header axis 0 is the layer list; in C order it is the last array axis
        layers = np.moveaxis(array, -1, 0)
        spatial = [1, 2, 3]
    else:
        raise UnreadableFileError(f"expected 3 or 4 dimensions, got {array.ndim}", path=path,
                                  field="dimension")
    masks, colors, values, numbered = {}, {}, {}, {}
    for n in numbers:
        field = f"Segment{n}_"
        try:
            name = header.get(field + "Name") or header[field + "ID"]
            value = int(header.get(field + "LabelValue", 1))
            layer = int(header.get(field + "Layer", 0))
            color = tuple(float(c) for c in str(header.get(field + "Color", "0.5 0.5 0.5")).split())
        except (KeyError, ValueError) as err:
            raise UnreadableFileError(f"malformed segment fields ({err})", path=path,
                                      field=field + "*") from None
        if name in numbered:  # masks are kept by name: merging two would lose one's voxels
            raise UnreadableFileError(
                f"segments {numbered[name]} and {n} are both named {name!r}; rename one (in "
                "Slicer's Segment Editor) so that each name is one segment", path=path,
                field=field + "Name")
        numbered[name] = n
        if not 0 <= layer < layers.shape[0]:
            raise UnreadableFileError(f"layer {layer} not in file with {layers.shape[0]} layers",
                                      path=path, field=field + "Layer")
        masks[name] = (layers[layer] == value).astype(np.uint8)
        colors[name], values[name] = color, value
    ijk_to_ras = ijk_to_ras_from_header(header, spatial, path)
    return Segmentation(masks, ijk_to_ras, colors, values)


def assign_layers(masks: Sequence[np.ndarray]) -> list[int]:
    """Greedy layer per mask so that masks sharing a layer never overlap."""
    occupied: list[np.ndarray] = []
    layers = []
    for mask in masks:
        for layer, used in enumerate(occupied):
            if not np.any(used & mask):
                used |= mask
                break
        else:
            occupied.append(mask.copy())
            layer = len(occupied) - 1
        layers.append(layer)
    return layers


def extent(mask: np.ndarray) -> str:
    """Slicer's ``Extent`` field: ``i0 i1 j0 j1 k0 k1`` of the foreground, ``0 -1 ...`` if empty."""
    bounds = foreground_bounds(mask)
    if bounds is None:
        return "0 -1 0 -1 0 -1"
    lo, hi = bounds
    return " ".join(f"{int(lo[axis])} {int(hi[axis])}" for axis in (2, 1, 0))  # i, j, k


def seg_nrrd_content(segments: Mapping[str, np.ndarray], ijk_to_ras: np.ndarray,
                     colors: Optional[Mapping[str, Sequence[float]]]) -> tuple[np.ndarray, dict]:
    """Array (k, j, i[, layer]) and header of a ``.seg.nrrd`` holding ``segments`` (bool masks).

    Label values are 1..N in the order given; overlapping segments go to separate layers.
    """
    names = list(segments)
    masks = [segments[name] for name in names]
    layers = assign_layers(masks)
    n_layers = max(layers, default=0) + 1
    shape = next(iter(masks)).shape
    data = np.zeros((n_layers, *shape), dtype=np.uint8)
    header = lps_header(ijk_to_ras)
    for index, (name, mask, layer) in enumerate(zip(names, masks, layers)):
        data[layer][mask] = index + 1
        color = (colors or {}).get(name, DEFAULT_COLORS[index % len(DEFAULT_COLORS)])
        field = f"Segment{index}_"
        header.update({
            field + "Color": " ".join(f"{float(c):.6g}" for c in color),
            field + "ColorAutoGenerated": "0" if colors and name in colors else "1",
            field + "Extent": extent(mask),
            field + "ID": f"Segment_{index + 1}",
            field + "LabelValue": str(index + 1),
            field + "Layer": str(layer),
            field + "Name": name,
            field + "NameAutoGenerated": "0",
            field + "Tags": "Segmentation.Status:inprogress|",
        })
    header.update({
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    })
    if n_layers == 1:
        header["kinds"] = ["domain"] * 3
        return data[0], header
    header["kinds"] = ["list", "domain", "domain", "domain"]
    header["space directions"] = np.vstack([np.full(3, np.nan), header["space directions"]])
    return np.moveaxis(data, 0, -1), header


def write_seg_nrrd(path: Path, segments: Mapping[str, np.ndarray], ijk_to_ras: np.ndarray,
                   colors=None) -> None:
    array, header = seg_nrrd_content(segments, ijk_to_ras, colors)
    write_nrrd(path, array, header)


def label_map(segments: Mapping[str, np.ndarray], values: Optional[Mapping[str, int]] = None,
              path=None) -> np.ndarray:
    """Label map (k, j, i) from bool masks, values 1..N in the order given unless ``values`` says.

    Overlapping segments raise :class:`OverlappingSegmentsError`: a label map cannot hold them.
    """
    values = values or {name: index + 1 for index, name in enumerate(segments)}
    shape = next(iter(segments.values())).shape
    out = np.zeros(shape, dtype=np.uint8 if max(values.values()) < 256 else np.uint16)
    for name, mask in segments.items():
        if np.any(out[mask]):
            raise OverlappingSegmentsError(
                f"segment {name!r} overlaps another; a label map cannot hold overlapping "
                "segments (save as .seg.nrrd, or read with load_segmentation)", path=path,
                field="segments")
        out[mask] = values[name]
    return out


def as_masks(segments: Mapping[str, object], reference: Grid, path) -> dict[str, np.ndarray]:
    """Validate ``{name: mask}`` against ``reference``: (k, j, i) arrays or Volumes on its grid."""
    if not segments:
        raise Ka2erError("no segments given", path=path, field="segments")
    masks = {}
    for name, mask in segments.items():
        if not isinstance(name, str) or not name.strip():
            raise Ka2erError(f"segment names must be non-empty strings, got {name!r}", path=path,
                             field="segments")
        if isinstance(mask, Volume):
            if not mask.grid.same_as(reference):
                raise GeometryMismatchError(
                    f"segment {name!r} is on a different grid than the reference volume",
                    path=path, field="reference")
            mask = mask.array
        mask = np.asarray(mask)
        if tuple(mask.shape) != tuple(reference.shape):
            raise GeometryMismatchError(
                f"segment {name!r} has shape {tuple(mask.shape)}, the reference volume "
                f"{tuple(reference.shape)} (k, j, i)", path=path, field="reference")
        masks[name] = mask != 0
    return masks
