"""Writing a changed (k, j, i) region of a mask into one segment, in the volume's geometry, without
touching the rest of the segment or any other segment."""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

from .geometry import array_to_matrix, ijk_to_ras_local

Region = tuple[slice, slice, slice]


def region_labelmap(values: np.ndarray, region: Region, ijk_to_ras: np.ndarray):
    """A ``vtkOrientedImageData`` holding ``values`` (uint8, (k, j, i)) at ``region`` of the grid
    ``ijk_to_ras``; returns it with its VTK extent (i0, i1, j0, j1, k0, k1), inclusive."""
    k, j, i = region
    extent = (i.start, i.stop - 1, j.start, j.stop - 1, k.start, k.stop - 1)
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetExtent(*extent)
    labelmap.SetImageToWorldMatrix(array_to_matrix(ijk_to_ras))
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.uint8).ravel(),
                                         deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    labelmap.GetPointData().SetScalars(scalars)
    return labelmap, extent


def write_region(segmentation_node, segment_id: str, volume_node, region: Region,
                 values: np.ndarray) -> None:
    """Replace ``region`` of the segment with ``values``; the rest of the scene is left as it was."""
    labelmap, extent = region_labelmap(values, region, ijk_to_ras_local(volume_node))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    logic.SetBinaryLabelmapToSegment(labelmap, segmentation_node, segment_id, logic.MODE_REPLACE,
                                     extent)


def read_segment(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """The segment as a uint8 (k, j, i) array on the volume's grid (a copy)."""
    array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)
    return (np.asarray(array) != 0).astype(np.uint8)


def segment_ids(segmentation_node) -> list[str]:
    """The segmentation's segment IDs, in order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
