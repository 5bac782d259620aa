"""A small stand-in for 3D Slicer's Python API, built on the real ``vtk`` package, to test the
KA2ERSegment Logic without Slicer. :func:`install` puts a fresh ``slicer`` module (empty scene) in
``sys.modules``.

Conventions, as in Slicer: world coordinates are RAS; a volume's IJKToRAS maps (i, j, k, 1) to RAS;
numpy arrays of volumes and segments are indexed (k, j, i); VTK extents are (i0, i1, j0, j1, k0, k1),
inclusive. Each stand-in class carries the name of the Slicer class it imitates (see
``STANDIN_CLASSES``) and only offers methods that ``shared/slicer-api/catalog.json`` lists for it.
"""

from __future__ import annotations

import itertools
import logging
import sys
import types
import unittest

import numpy as np
import vtk
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy


def _slicer() -> types.ModuleType:
    return sys.modules["slicer"]


def _set_matrix(matrix, array) -> None:
    """Fill a vtkMatrix4x4 (or 3x3) passed by the caller from a numpy array."""
    matrix.DeepCopy(np.asarray(array, float).ravel().tolist())


def _output(values, out=None):
    """Slicer's two overloads: fill ``out`` when given, else return a tuple."""
    if out is None:
        return tuple(float(v) for v in values)
    out[:len(values)] = values


def _to_world(node) -> np.ndarray:
    """4x4 matrix from a transformable node's local coordinates to world (RAS), through its parents."""
    matrix, transform = np.eye(4), node.GetParentTransformNode()
    while transform is not None:
        matrix, transform = transform._to_parent @ matrix, transform.GetParentTransformNode()
    return matrix


class vtkMRMLNode(vtk.vtkObject):
    """ID and name (given by the scene), node references, StartModify/EndModify."""

    def __init__(self):
        super().__init__()
        self._id, self._name, self._scene = None, "", None
        self._references, self._modify_disabled = {}, 0

    def GetID(self):
        return self._id

    def GetName(self):
        return self._name

    def SetName(self, name):
        self._name = name

    def GetScene(self):
        return self._scene

    def GetClassName(self):
        return type(self).__name__

    def IsA(self, className):
        return any(cls.__name__ == className for cls in type(self).__mro__) or super().IsA(className)

    def SetNodeReferenceID(self, role, nodeId):
        self._references[role] = nodeId

    def GetNodeReferenceID(self, role):
        return self._references.get(role)

    def GetNodeReference(self, role):
        nodeId = self.GetNodeReferenceID(role)
        return self._scene.GetNodeByID(nodeId) if self._scene is not None and nodeId else None

    def StartModify(self):
        previous, self._modify_disabled = self._modify_disabled, 1
        return previous

    def EndModify(self, previous):
        self._modify_disabled = previous
        self.Modified()

    def Modified(self):
        if not self._modify_disabled:
            super().Modified()


class vtkMRMLTransformableNode(vtkMRMLNode):
    """A node whose local coordinates reach world through its parent transform chain."""

    def SetAndObserveTransformNodeID(self, transformNodeId):
        self.SetNodeReferenceID("transform", transformNodeId)

    def GetTransformNodeID(self):
        return self.GetNodeReferenceID("transform")

    def GetParentTransformNode(self):
        return self.GetNodeReference("transform")


class vtkMRMLLinearTransformNode(vtkMRMLTransformableNode):
    def __init__(self):
        super().__init__()
        self._to_parent = np.eye(4)

    def SetMatrixTransformToParent(self, matrix):
        self._to_parent = arrayFromVTKMatrix(matrix)
        self.Modified()

    def GetMatrixTransformToParent(self, matrix):
        _set_matrix(matrix, self._to_parent)

    def GetMatrixTransformToWorld(self, matrix):
        _set_matrix(matrix, _to_world(self) @ self._to_parent)

    def IsTransformToWorldLinear(self):
        return True


class vtkMRMLScalarVolumeNode(vtkMRMLTransformableNode):
    """Image data (its own origin and spacing are ignored) plus IJKToRAS: RAS = M @ (i, j, k, 1)."""

    def __init__(self):
        super().__init__()
        self._ijk_to_ras, self._image = np.eye(4), None

    def SetIJKToRASMatrix(self, matrix):
        self._ijk_to_ras = arrayFromVTKMatrix(matrix)
        self.Modified()

    def GetIJKToRASMatrix(self, matrix):
        _set_matrix(matrix, self._ijk_to_ras)

    def GetRASToIJKMatrix(self, matrix):
        _set_matrix(matrix, np.linalg.inv(self._ijk_to_ras))

    def SetAndObserveImageData(self, imageData):
        self._image = imageData
        self.Modified()

    def GetImageData(self):
        return self._image


class vtkMRMLMarkupsNode(vtkMRMLTransformableNode):
    """Control points in the node's local coordinates, each with a label. Event ids follow the enum
    order of vtkMRMLMarkupsNode.h as the catalog lists it (use the names, not the numbers); observers
    are called ``callback(caller, event)`` as in VTK."""

    PointAddedEvent, PointRemovedEvent, PointPositionDefinedEvent = 19002, 19003, 19004
    PointModifiedEvent, PointStartInteractionEvent, PointEndInteractionEvent = 19008, 19009, 19010

    def __init__(self):
        super().__init__()
        self._points = []  # [position (3,), label]

    def AddControlPoint(self, position, label=""):
        label = label or f"{self.GetName()}-{len(self._points) + 1}"
        self._points.append([np.array(position[:3], float), label])
        self.InvokeEvent(self.PointAddedEvent)
        self.InvokeEvent(self.PointPositionDefinedEvent)
        return len(self._points) - 1

    def AddControlPointWorld(self, position, label=""):
        return self.AddControlPoint((np.linalg.inv(_to_world(self)) @ [*position[:3], 1.0])[:3], label)

    def GetNumberOfControlPoints(self):
        return len(self._points)

    def GetNthControlPointPosition(self, index, out=None):
        return _output(self._points[index][0], out)

    def GetNthControlPointPositionWorld(self, index, out=None):
        return _output((_to_world(self) @ [*self._points[index][0], 1.0])[:3], out)

    def SetNthControlPointPosition(self, index, position):
        self._points[index][0] = np.array(position[:3], float)
        self.InvokeEvent(self.PointModifiedEvent)

    def GetNthControlPointLabel(self, index):
        return self._points[index][1]

    def SetNthControlPointLabel(self, index, label):
        self._points[index][1] = label
        self.InvokeEvent(self.PointModifiedEvent)

    def RemoveNthControlPoint(self, index):
        del self._points[index]
        self.InvokeEvent(self.PointRemovedEvent)

    def RemoveAllControlPoints(self):
        if self._points:
            self._points.clear()
            self.InvokeEvent(self.PointRemovedEvent)


class vtkMRMLMarkupsFiducialNode(vtkMRMLMarkupsNode):
    """A point list: all of vtkMRMLMarkupsNode."""


class vtkMRMLMarkupsROINode(vtkMRMLMarkupsNode):
    """A box aligned with the node's local axes: center (control point 0, as in Slicer) and size."""

    def __init__(self):
        super().__init__()
        self._size = np.zeros(3)

    def SetCenter(self, center):
        if self._points:
            self.SetNthControlPointPosition(0, center)
        else:
            self.AddControlPoint(center)

    def GetCenter(self, out=None):
        return _output(self._points[0][0] if self._points else np.zeros(3), out)

    def SetSize(self, size):
        self._size = np.array(size[:3], float)
        self.Modified()

    def GetSize(self, out=None):
        return _output(self._size, out)

    def GetRASBounds(self, out):
        """World [xmin, xmax, ymin, ymax, zmin, zmax] of the 8 transformed corners."""
        half_steps = np.array(list(itertools.product((-0.5, 0.5), repeat=3)))
        corners = np.array(self.GetCenter()) + half_steps * self._size
        world = (_to_world(self) @ np.c_[corners, np.ones(8)].T)[:3]
        out[:6] = np.c_[world.min(axis=1), world.max(axis=1)].ravel()


class vtkSegment(vtk.vtkObject):
    def __init__(self):
        super().__init__()
        self._name, self._color, self._labelmap = "", (0.5, 0.5, 0.5), None  # uint8 (k, j, i) or None

    def GetName(self):
        return self._name

    def SetName(self, name):
        self._name = name

    def GetColor(self):
        return self._color

    def SetColor(self, *color):
        self._color = tuple(float(c) for c in np.ravel(color))


class vtkSegmentation(vtk.vtkObject):
    """Segments by ID. Each holds its own binary uint8 (k, j, i) array over the reference geometry
    (allocated on first write), so segments may overlap, like Slicer's layered labelmaps."""

    def __init__(self):
        super().__init__()
        self._segments = {}
        self._reference = None  # (IJK to segmentation-node coordinates 4x4, shape (k, j, i))

    def AddEmptySegment(self, segmentId="", segmentName="", color=None):
        if not segmentId or segmentId in self._segments:
            base = segmentId or "Segment"
            segmentId = next(f"{base}_{n}" for n in itertools.count(1)
                             if f"{base}_{n}" not in self._segments)
        segment = self._segments[segmentId] = vtkSegment()
        segment.SetName(segmentName or segmentId)
        if color is not None:
            segment.SetColor(color)
        return segmentId

    def GetSegment(self, segmentId):
        return self._segments.get(segmentId)

    def GetSegmentIdBySegmentName(self, name):
        return next((sid for sid, segment in self._segments.items() if segment.GetName() == name), "")

    def GetNumberOfSegments(self):
        return len(self._segments)

    def GetNthSegmentID(self, index):
        return list(self._segments)[index]

    def RemoveSegment(self, segmentId):
        del self._segments[segmentId]

    def _labelmap(self, segmentId, ijk_to_segmentation, shape_kji=None) -> np.ndarray:
        """The segment's array, after checking that the caller's grid is the reference grid."""
        if self._reference is None:
            raise ValueError("the segmentation has no reference geometry")
        reference, reference_shape = self._reference
        if not np.allclose(ijk_to_segmentation, reference, rtol=0, atol=1e-6) or (
                shape_kji is not None and tuple(shape_kji) != reference_shape):
            raise ValueError(
                "the stand-in only takes labelmaps on the segmentation's reference grid (IJK to "
                f"segmentation {np.round(ijk_to_segmentation, 6).tolist()}, shape {shape_kji}; "
                f"reference {np.round(reference, 6).tolist()}, shape {reference_shape})")
        segment = self._segments[segmentId]
        if segment._labelmap is None:
            segment._labelmap = np.zeros(reference_shape, np.uint8)
        return segment._labelmap


def _volume_grid(volumeNode, segmentationNode):
    """The volume's IJK to the segmentation node's coordinates, and its (k, j, i) shape."""
    ijk_to_world = _to_world(volumeNode) @ volumeNode._ijk_to_ras
    shape_kji = volumeNode.GetImageData().GetDimensions()[::-1]
    return np.linalg.inv(_to_world(segmentationNode)) @ ijk_to_world, shape_kji


class vtkMRMLSegmentationNode(vtkMRMLTransformableNode):
    def __init__(self):
        super().__init__()
        self._segmentation = vtkSegmentation()

    def GetSegmentation(self):
        return self._segmentation

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volumeNode):
        """Record the volume's grid, in this node's coordinates, as the reference geometry."""
        grid, segmentation = _volume_grid(volumeNode, self), self._segmentation
        if any(segment._labelmap is not None for segment in segmentation._segments.values()):
            segmentation._labelmap(segmentation.GetNthSegmentID(0), *grid)  # raises if the grid changes
        segmentation._reference = grid

    def CreateDefaultDisplayNodes(self):
        """Nothing is displayed in the stand-in."""


class vtkOrientedImageData(vtk.vtkImageData):
    """vtkImageData whose direction, spacing and origin come from an image-to-world matrix."""

    def SetImageToWorldMatrix(self, matrix):
        image_to_world = arrayFromVTKMatrix(matrix)
        spacing = np.linalg.norm(image_to_world[:3, :3], axis=0)
        self.SetSpacing(*spacing)
        self.SetOrigin(*image_to_world[:3, 3])
        self.SetDirectionMatrix(*(image_to_world[:3, :3] / spacing).ravel())

    SetGeometryFromImageToWorldMatrix = SetImageToWorldMatrix

    def GetImageToWorldMatrix(self, matrix):
        matrix.DeepCopy(self.GetIndexToPhysicalMatrix())


class vtkSlicerSegmentationsModuleLogic(vtk.vtkObject):
    MODE_REPLACE, MODE_MERGE_MAX, MODE_MERGE_MIN, MODE_MERGE_MASK = range(4)

    @staticmethod
    def SetBinaryLabelmapToSegment(labelmap, segmentationNode, segmentId, mergeMode=MODE_REPLACE,
                                   extent=None):
        """Write ``labelmap`` (nonzero -> 1) into the segment over ``extent`` (default: the labelmap's
        extent); in MODE_REPLACE voxels of the extent outside the labelmap become 0. The labelmap must
        lie on the reference grid."""
        logic = vtkSlicerSegmentationsModuleLogic
        combine = {logic.MODE_REPLACE: lambda old, new: new, logic.MODE_MERGE_MAX: np.maximum,
                   logic.MODE_MERGE_MIN: np.minimum}.get(mergeMode)
        if combine is None:
            raise NotImplementedError(f"the stand-in does not imitate merge mode {mergeMode}")
        image_to_world = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(image_to_world)
        segmentation = segmentationNode.GetSegmentation()
        target = segmentation._labelmap(segmentId, arrayFromVTKMatrix(image_to_world))
        source_extent = labelmap.GetExtent()
        source = vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(_shape(source_extent))
        target_extent = [e for size in target.shape[::-1] for e in (0, size - 1)]
        region = _intersect(extent or source_extent, target_extent)
        if min(_shape(region)) == 0:
            return True
        values = np.zeros(_shape(region), np.uint8)
        overlap = _intersect(region, source_extent)
        if min(_shape(overlap)) > 0:
            values[_slices(overlap, region)] = source[_slices(overlap, source_extent)] != 0
        written = target[_slices(region, (0,) * 6)]
        written[...] = combine(written, values)
        return True


def _shape(extent):
    """(k, j, i) shape of an inclusive VTK extent (i0, i1, j0, j1, k0, k1); 0 where empty."""
    return tuple(max(0, extent[2 * a + 1] - extent[2 * a] + 1) for a in (2, 1, 0))


def _intersect(extent, other):
    return tuple(max(a, b) if n % 2 == 0 else min(a, b) for n, (a, b) in enumerate(zip(extent, other)))


def _slices(extent, origin_extent):
    """(k, j, i) slices of a non-empty extent in an array whose first voxel is origin_extent's start."""
    starts = origin_extent[::2]
    return tuple(slice(extent[2 * a] - starts[a], extent[2 * a + 1] + 1 - starts[a]) for a in (2, 1, 0))


class vtkMRMLScene(vtk.vtkObject):
    """Nodes by ID ("<className><n>", numbered per class), in insertion order."""

    def __init__(self):
        super().__init__()
        self._nodes, self._id_counts = {}, {}

    def AddNode(self, node):
        className = node.GetClassName()
        self._id_counts[className] = self._id_counts.get(className, 0) + 1
        node._id, node._scene = f"{className}{self._id_counts[className]}", self
        if not node.GetName():
            short_name = className.removeprefix("vtkMRML").removesuffix("Node")
            node.SetName(self.GetUniqueNameByString(short_name))
        self._nodes[node.GetID()] = node
        return node

    def AddNewNodeByClass(self, className, nodeBaseName=""):
        if className not in STANDIN_CLASSES or not issubclass(STANDIN_CLASSES[className], vtkMRMLNode):
            raise NotImplementedError(f"the stand-in has no node class {className}")
        node = STANDIN_CLASSES[className]()
        if nodeBaseName:
            node.SetName(self.GetUniqueNameByString(nodeBaseName))
        return self.AddNode(node)

    def GetUniqueNameByString(self, base):
        names = {node.GetName() for node in self._nodes.values()}
        return next(name for name in itertools.chain([base], (f"{base}_{n}" for n in itertools.count(1)))
                    if name not in names)

    def GetNodeByID(self, nodeId):
        return self._nodes.get(nodeId)

    def GetFirstNodeByName(self, name):
        return next((node for node in self._nodes.values() if node.GetName() == name), None)

    def GetFirstNodeByClass(self, className):
        return next((node for node in self._nodes.values() if node.IsA(className)), None)

    def GetNodesByClass(self, className):
        """A vtkCollection, as in Slicer."""
        collection = vtk.vtkCollection()
        for node in self._nodes.values():
            if node.IsA(className):
                collection.AddItem(node)
        return collection

    def RemoveNode(self, node):
        del self._nodes[node.GetID()]
        node._scene = None

    def Clear(self, removeSingletons=0):
        for node in list(self._nodes.values()):
            self.RemoveNode(node)


STANDIN_CLASSES = {cls.__name__: cls for cls in (
    vtkMRMLScene, vtkMRMLNode, vtkMRMLTransformableNode, vtkMRMLLinearTransformNode,
    vtkMRMLScalarVolumeNode, vtkMRMLMarkupsNode, vtkMRMLMarkupsFiducialNode, vtkMRMLMarkupsROINode,
    vtkMRMLSegmentationNode, vtkSegmentation, vtkSegment, vtkOrientedImageData,
    vtkSlicerSegmentationsModuleLogic)}
"""Slicer class name -> the stand-in class imitating it (same name)."""


# --- slicer.util ---------------------------------------------------------------------------------

def vtkMatrixFromArray(narray):
    narray = np.asarray(narray, float)
    matrix = {(4, 4): vtk.vtkMatrix4x4, (3, 3): vtk.vtkMatrix3x3}[narray.shape]()
    _set_matrix(matrix, narray)
    return matrix


def arrayFromVTKMatrix(vmatrix):
    size = 4 if isinstance(vmatrix, vtk.vtkMatrix4x4) else 3
    return np.array([[vmatrix.GetElement(row, column) for column in range(size)] for row in range(size)])


def arrayFromVolume(volumeNode):
    """A (k, j, i) view of the volume's scalars (no copy): writing to it changes the volume."""
    image = volumeNode.GetImageData()
    components = image.GetNumberOfScalarComponents()
    shape = image.GetDimensions()[::-1] + ((components,) if components > 1 else ())
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def addVolumeFromArray(narray, ijkToRAS=None, name=None, nodeClassName=None):
    """A new volume holding a copy of the (k, j, i) array."""
    scene = _slicer().mrmlScene
    volumeNode = scene.AddNewNodeByClass(nodeClassName or "vtkMRMLScalarVolumeNode", name or "")
    if ijkToRAS is not None:
        if not isinstance(ijkToRAS, vtk.vtkMatrix4x4):
            ijkToRAS = vtkMatrixFromArray(ijkToRAS)
        volumeNode.SetIJKToRASMatrix(ijkToRAS)
    image = vtk.vtkImageData()
    image.SetDimensions(*narray.shape[::-1])
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(narray).ravel(), deep=True))
    volumeNode.SetAndObserveImageData(image)
    return volumeNode


def arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode):
    """A (k, j, i) uint8 copy of the segment; the volume's grid must be the reference grid."""
    return _segment_labelmap_on_volume(segmentationNode, segmentId, referenceVolumeNode).copy()


def updateSegmentBinaryLabelmapFromArray(narray, segmentationNode, segmentId, referenceVolumeNode):
    """Replace the segment with the (k, j, i) array (nonzero -> 1), on the reference volume's grid."""
    labelmap = _segment_labelmap_on_volume(segmentationNode, segmentId, referenceVolumeNode)
    if np.shape(narray) != labelmap.shape:
        raise ValueError(f"array shape {np.shape(narray)} is not the volume's {labelmap.shape}")
    labelmap[...] = np.asarray(narray) != 0


def _segment_labelmap_on_volume(segmentationNode, segmentId, volumeNode):
    grid = _volume_grid(volumeNode, segmentationNode)
    return segmentationNode.GetSegmentation()._labelmap(segmentId, *grid)


def errorDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
    _slicer().standin_messages.append(("error", text))


def infoDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
    _slicer().standin_messages.append(("info", text))


def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs):
    """Records the question; answers ``slicer.standin_confirm``."""
    _slicer().standin_messages.append(("confirm", text))
    return _slicer().standin_confirm


def pip_install(requirements, **kwargs):
    _slicer().standin_pip.append(requirements)


class VTKObservationMixin:
    """Keeps [object, event, method, group, tag] for each observation it adds."""

    def __init__(self):
        super().__init__()
        self.Observations = []

    def hasObserver(self, obj, event, method):
        return any(o is obj and e == event and m == method for o, e, m, _, _ in self.Observations)

    def addObserver(self, obj, event, method, group="none", priority=0.0):
        if not self.hasObserver(obj, event, method):
            tag = obj.AddObserver(event, method, priority)
            self.Observations.append([obj, event, method, group, tag])

    def removeObserver(self, obj, event, method):
        self._remove(lambda o, e, m: o is obj and e == event and m == method)

    def removeObservers(self, method=None):
        self._remove(lambda o, e, m: method is None or m == method)

    def _remove(self, matches):
        for observation in [o for o in self.Observations if matches(*o[:3])]:
            observation[0].RemoveObserver(observation[4])
            self.Observations.remove(observation)


# --- slicer.ScriptedLoadableModule ---------------------------------------------------------------

class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent, self.moduleName = parent, type(self).__name__

    def getDefaultModuleDocumentationLink(self, docPage=None):
        return "https://slicer.readthedocs.io/"


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent, self.moduleName = parent, type(self).__name__.removesuffix("Widget")

    def setup(self):
        """No GUI in the stand-in."""

    def cleanup(self):
        """No GUI in the stand-in."""


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.parent, self.moduleName = parent, type(self).__name__.removesuffix("Logic")


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, requestedDelay=100):
        logging.info(message)


UTIL_FUNCTIONS = (vtkMatrixFromArray, arrayFromVTKMatrix, arrayFromVolume, addVolumeFromArray,
                  arrayFromSegmentBinaryLabelmap, updateSegmentBinaryLabelmapFromArray, errorDisplay,
                  infoDisplay, confirmOkCancelDisplay, pip_install, VTKObservationMixin)
SCRIPTED_CLASSES = (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                    ScriptedLoadableModuleTest)
MODULE_NAMES = ("slicer", "slicer.util", "slicer.ScriptedLoadableModule")


def _module(name, members) -> types.ModuleType:
    module = types.ModuleType(name)
    vars(module).update({member.__name__: member for member in members})
    return module


def install() -> types.ModuleType:
    """A fresh ``slicer`` module (new empty scene) in ``sys.modules``, with ``slicer.util`` and
    ``slicer.ScriptedLoadableModule``. Display calls land in ``standin_messages`` as (kind, text),
    ``pip_install`` arguments in ``standin_pip``; ``confirmOkCancelDisplay`` answers
    ``standin_confirm``."""
    slicer = _module("slicer", STANDIN_CLASSES.values())
    slicer.util = _module("slicer.util", UTIL_FUNCTIONS)
    slicer.ScriptedLoadableModule = _module("slicer.ScriptedLoadableModule", SCRIPTED_CLASSES)
    slicer.mrmlScene = vtkMRMLScene()
    slicer.standin_messages, slicer.standin_pip, slicer.standin_confirm = [], [], True
    sys.modules.update(zip(MODULE_NAMES, (slicer, slicer.util, slicer.ScriptedLoadableModule)))
    return slicer


def uninstall() -> None:
    for name in MODULE_NAMES:
        sys.modules.pop(name, None)
