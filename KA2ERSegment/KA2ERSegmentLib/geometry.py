"""From MRML nodes to the engine's conventions: world RAS points and a (k, j, i) volume with its
world ``ijk_to_ras``.

Markups report world coordinates (parent transforms applied). The volume's own ``IJKToRAS`` is in its
parent's frame, so the engine gets ``volume_to_world @ IJKToRAS``; segments are written with the local
``IJKToRAS`` into a segmentation node under the same parent transform as the volume.
"""

from __future__ import annotations

import numpy as np
import vtk

import slicer

from .errors import SceneError


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def to_world(node) -> np.ndarray:
    """4x4 from ``node``'s coordinates to world RAS (identity without a parent transform)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise SceneError(f"{node.GetName()} is under a non-linear transform; harden it first "
                         "(Data module: right-click, Harden transform)")
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return matrix_to_array(matrix)


def ijk_to_ras_local(volume_node) -> np.ndarray:
    """The volume's IJKToRAS in its parent's frame, 4x4 float64."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)


def engine_volume(volume_node):
    """A ``ka2er_core.Volume`` viewing the node's voxels (no copy), ``ijk_to_ras`` to world RAS."""
    from ka2er_core import Volume

    if volume_node is None or volume_node.GetImageData() is None:
        raise SceneError("no volume selected: load a CT or MR volume and pick it under Inputs")
    array = slicer.util.arrayFromVolume(volume_node)
    if array.ndim != 3:
        raise SceneError(f"{volume_node.GetName()} has {array.ndim} dimensions per voxel; "
                         "a scalar 3D volume is expected")
    return Volume(array, to_world(volume_node) @ ijk_to_ras_local(volume_node),
                  path=volume_node.GetName())


def point_world(markups_node, index: int) -> np.ndarray:
    """Control point ``index`` of a markups node in world RAS mm."""
    position = [0.0, 0.0, 0.0]
    markups_node.GetNthControlPointPositionWorld(index, position)
    return np.array(position)


def curve_world(curve_node) -> np.ndarray:
    """The control points (N, 3) of a Markups curve in world RAS mm (N >= 1)."""
    count = curve_node.GetNumberOfControlPoints()
    if count == 0:
        raise SceneError(f"{curve_node.GetName()} has no points yet: draw it in a slice view first")
    return np.array([point_world(curve_node, index) for index in range(count)])


def box_world(roi_node) -> tuple[np.ndarray, np.ndarray]:
    """Opposite corners (low, high) of the world axis-aligned box around a markups ROI."""
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    bounds = np.array(bounds).reshape(3, 2)
    if not np.all(np.isfinite(bounds)) or np.any(bounds[:, 1] < bounds[:, 0]):
        raise SceneError(f"{roi_node.GetName()} has no box yet: drag it in a slice view first")
    return bounds[:, 0], bounds[:, 1]
