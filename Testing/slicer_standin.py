"""A small stand-in for 3D Slicer's Python API, built on the real ``vtk`` package, to test the
KA2ERSegment Logic without Slicer. :func:`install` puts a fresh ``slicer`` module (empty scene) in
``sys.modules``.

Conventions, as in Slicer: world coordinates are RAS; a volume's IJKToRAS maps (i, j, k, 1) to RAS;
numpy arrays of volumes and segments are indexed (k, j, i); VTK extents are (i0, i1, j0, j1, k0, k1),
inclusive. Each stand-in class carries the name of the Slicer class it imitates (see
``STANDIN_CLASSES``) and only offers methods that ``shared/slicer-api/catalog.json`` lists for it;
it imitates what the module and its tests use, nothing more.
"""

from __future__ import annotations

import itertools
import sys
import types
import typing
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
    """ID and name (given by the scene), node references, attributes, a singleton tag."""

    def __init__(self):
        super().__init__()
        self._id, self._name, self._scene = None, "", None
        self._references, self._attributes, self._singleton_tag = {}, {}, None

    def GetID(self):
        return self._id

    def GetName(self):
        return self._name

    def SetName(self, name):
        self._name = name

    def GetClassName(self):
        return type(self).__name__

    def IsA(self, className):
        return any(cls.__name__ == className for cls in type(self).__mro__) or super().IsA(className)

    def SetNodeReferenceID(self, role, nodeId):
        if self._references.get(role) != nodeId:
            self._references[role] = nodeId
            self.Modified()

    def GetNodeReferenceID(self, role):
        return self._references.get(role)

    def GetNodeReference(self, role):
        nodeId = self.GetNodeReferenceID(role)
        return self._scene.GetNodeByID(nodeId) if self._scene is not None and nodeId else None

    def SetAttribute(self, name, value):
        self._attributes[name] = value

    def GetAttribute(self, name):
        return self._attributes.get(name)

    def SetSingletonTag(self, tag):
        self._singleton_tag = tag

    def GetSingletonTag(self):
        return self._singleton_tag

    def Reset(self, defaultNode):
        """Back to the content of ``defaultNode`` (None: a new node); the ID, name, scene and
        singleton tag stay, as when Slicer closes a scene."""
        kept = {key: vars(self)[key] for key in ("_id", "_name", "_scene", "_singleton_tag")}
        vars(self).update(vars(defaultNode if defaultNode is not None else type(self)()))
        vars(self).update(kept)
        self.Modified()


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    """A module's parameter node: named string parameters (and node references)."""

    def __init__(self):
        super().__init__()
        self._parameters = {}

    def SetParameter(self, name, value):
        if self._parameters.get(name) != value:
            self._parameters[name] = value
            self.Modified()

    def GetParameter(self, name):
        return self._parameters.get(name, "")

    def HasParameter(self, name):
        return name in self._parameters

    def GetParameterNames(self):
        return list(self._parameters)


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

    def SetAndObserveImageData(self, imageData):
        self._image = imageData
        self.Modified()

    def GetImageData(self):
        return self._image


class vtkMRMLMarkupsNode(vtkMRMLTransformableNode):
    """Control points in the node's local coordinates. Event ids follow the enum
    order of vtkMRMLMarkupsNode.h as the catalog lists it (use the names, not the numbers); observers
    are called ``callback(caller, event)`` as in VTK."""

    PointAddedEvent, PointRemovedEvent, PointPositionDefinedEvent = 19002, 19003, 19004
    PointModifiedEvent, PointStartInteractionEvent, PointEndInteractionEvent = 19008, 19009, 19010

    def __init__(self):
        super().__init__()
        self._points = []  # positions (3,)

    def AddControlPoint(self, position, label=""):
        self._points.append(np.array(position[:3], float))
        self.InvokeEvent(self.PointAddedEvent)
        self.InvokeEvent(self.PointPositionDefinedEvent)
        return len(self._points) - 1

    def AddControlPointWorld(self, position, label=""):
        return self.AddControlPoint((np.linalg.inv(_to_world(self)) @ [*position[:3], 1.0])[:3], label)

    def GetNumberOfControlPoints(self):
        return len(self._points)

    def GetNthControlPointPosition(self, index, out=None):
        return _output(self._points[index], out)

    def GetNthControlPointPositionWorld(self, index, out=None):
        return _output((_to_world(self) @ [*self._points[index], 1.0])[:3], out)

    def SetNthControlPointPosition(self, index, position):
        self._points[index] = np.array(position[:3], float)
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


class vtkMRMLMarkupsCurveNode(vtkMRMLMarkupsNode):
    """An open curve through its control points."""

    def GetCurveClosed(self):
        return False


class vtkMRMLMarkupsClosedCurveNode(vtkMRMLMarkupsCurveNode):
    """A curve whose last control point joins its first."""

    def GetCurveClosed(self):
        return True


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
        return _output(self._points[0] if self._points else np.zeros(3), out)

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
        self._name, self._labelmap = "", None  # uint8 (k, j, i) or None

    def GetName(self):
        return self._name

    def SetName(self, name):
        self._name = name


class vtkSegmentation(vtk.vtkObject):
    """Segments by ID. Each holds its own binary uint8 (k, j, i) array over the reference geometry
    (allocated on first write), so segments may overlap, like Slicer's layered labelmaps. A change of
    a segment's content invokes SourceRepresentationModified with the segment's ID, a removal
    SegmentRemoved (on the segmentation and on its node, as in Slicer)."""

    SourceRepresentationModified = 62100
    SegmentRemoved = 62103  # vtkSegmentation.h: after ContainedRepresentationNamesModified, SegmentAdded

    def __init__(self):
        super().__init__()
        self._segments = {}
        self._reference = None  # (IJK to segmentation-node coordinates 4x4, shape (k, j, i))
        self._node = None  # the segmentation node that passes this one's events on

    def RemoveSegment(self, segmentId):
        if self._segments.pop(segmentId, None) is not None:
            for notifier in (self, self._node):
                if notifier is not None:
                    notifier.InvokeEvent(self.SegmentRemoved, segmentId)

    def AddEmptySegment(self, segmentId="", segmentName="", color=None):
        if not segmentId or segmentId in self._segments:
            base = segmentId or "Segment"
            segmentId = next(f"{base}_{n}" for n in itertools.count(1)
                             if f"{base}_{n}" not in self._segments)
        self._segments[segmentId] = vtkSegment()
        self._segments[segmentId].SetName(segmentName or segmentId)
        return segmentId

    def GetSegment(self, segmentId):
        return self._segments.get(segmentId)

    def GetNumberOfSegments(self):
        return len(self._segments)

    def GetNthSegmentID(self, index):
        return list(self._segments)[index]

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
        self._segmentation._node = self

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

    def _segment_modified(self, segmentId):
        """The segmentation tells of a changed segment; the node passes it on, as in Slicer."""
        for notifier in (self._segmentation, self):
            notifier.InvokeEvent(vtkSegmentation.SourceRepresentationModified, segmentId)


class vtkOrientedImageData(vtk.vtkImageData):
    """vtkImageData whose direction, spacing and origin come from an image-to-world matrix."""

    def SetImageToWorldMatrix(self, matrix):
        image_to_world = arrayFromVTKMatrix(matrix)
        spacing = np.linalg.norm(image_to_world[:3, :3], axis=0)
        self.SetSpacing(*spacing)
        self.SetOrigin(*image_to_world[:3, 3])
        self.SetDirectionMatrix(*(image_to_world[:3, :3] / spacing).ravel())

    def GetImageToWorldMatrix(self, matrix):
        matrix.DeepCopy(self.GetIndexToPhysicalMatrix())


class vtkSlicerSegmentationsModuleLogic(vtk.vtkObject):
    MODE_REPLACE = 0

    @staticmethod
    def SetBinaryLabelmapToSegment(labelmap, segmentationNode, segmentId, mergeMode=MODE_REPLACE,
                                   extent=None):
        """Write ``labelmap`` (nonzero -> 1) into the segment over ``extent`` (default: the labelmap's
        extent); voxels of the extent outside the labelmap become 0 (MODE_REPLACE, the only mode the
        stand-in imitates). The labelmap must lie on the reference grid."""
        if mergeMode != vtkSlicerSegmentationsModuleLogic.MODE_REPLACE:
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
        target[_slices(region, (0,) * 6)] = values
        segmentationNode._segment_modified(segmentId)
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
    """Nodes by ID ("<className><n>", numbered per class; a singleton's is "<className><tag>"), in
    insertion order. Closing (:meth:`Clear`) invokes StartCloseEvent and EndCloseEvent, values as
    in vtkMRMLScene.h."""

    StartCloseEvent = 0x2000 | 0x0100 | 0x0003  # StateEvent | StartEvent | CloseState
    EndCloseEvent = 0x2000 | 0x0200 | 0x0003  # StateEvent | EndEvent | CloseState

    def __init__(self):
        super().__init__()
        self._nodes, self._id_counts = {}, {}

    def CreateNodeByClass(self, className):
        if className not in STANDIN_CLASSES or not issubclass(STANDIN_CLASSES[className], vtkMRMLNode):
            raise NotImplementedError(f"the stand-in has no node class {className}")
        return STANDIN_CLASSES[className]()

    def AddNode(self, node):
        className, tag = node.GetClassName(), node.GetSingletonTag()
        if tag is None:
            self._id_counts[className] = self._id_counts.get(className, 0) + 1
        node._id = f"{className}{tag if tag is not None else self._id_counts[className]}"
        node._scene = self
        if not node.GetName():
            node.SetName(self.GenerateUniqueName(className.removeprefix("vtkMRML").removesuffix("Node")))
        self._nodes[node.GetID()] = node
        return node

    def AddNewNodeByClass(self, className, nodeBaseName=""):
        node = self.CreateNodeByClass(className)
        if nodeBaseName:
            node.SetName(self.GenerateUniqueName(nodeBaseName))
        return self.AddNode(node)

    def GenerateUniqueName(self, baseName):
        names = {node.GetName() for node in self._nodes.values()}
        return next(name for name in itertools.chain(
            [baseName], (f"{baseName}_{n}" for n in itertools.count(1))) if name not in names)

    def GetSingletonNode(self, singletonTag, className):
        return next((node for node in self._nodes.values()
                     if node.IsA(className) and node.GetSingletonTag() == singletonTag), None)

    def GetNodeByID(self, nodeId):
        return self._nodes.get(nodeId)

    def GetFirstNodeByName(self, name):
        return next((node for node in self._nodes.values() if node.GetName() == name), None)

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
        """Close the scene: every node is removed but singletons (unless asked), which are reset;
        IDs are given out from 1 again."""
        self.InvokeEvent(self.StartCloseEvent)
        for node in list(self._nodes.values()):
            if removeSingletons or node.GetSingletonTag() is None:
                self.RemoveNode(node)
            else:
                node.Reset(None)
        self._id_counts.clear()
        self.InvokeEvent(self.EndCloseEvent)


STANDIN_CLASSES = {cls.__name__: cls for cls in (
    vtkMRMLScene, vtkMRMLNode, vtkMRMLScriptedModuleNode, vtkMRMLTransformableNode,
    vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode, vtkMRMLMarkupsNode, vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode, vtkMRMLMarkupsCurveNode, vtkMRMLMarkupsClosedCurveNode,
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
    segmentationNode._segment_modified(segmentId)


def _segment_labelmap_on_volume(segmentationNode, segmentId, volumeNode):
    grid = _volume_grid(volumeNode, segmentationNode)
    return segmentationNode.GetSegmentation()._labelmap(segmentId, *grid)


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


class ScriptedLoadableModuleWidget:
    """No GUI in the stand-in: the module's Widget can be defined, not set up."""

    def __init__(self, parent=None):
        self.parent, self.moduleName = parent, type(self).__name__.removesuffix("Widget")


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()
        self.parent, self.moduleName = parent, type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        """The module's parameter node: the scene's singleton for the module, added if missing."""
        scene = _slicer().mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            return scene.AddNode(self.createParameterNode())
        if node.GetAttribute("ModuleName") != self.moduleName:  # a scene close reset it
            node.SetAttribute("ModuleName", self.moduleName)
        return node

    def createParameterNode(self):
        scene = _slicer().mrmlScene
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(scene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    """The module's self-test runs in Slicer only: it can be defined, not run."""


# --- slicer.parameterNodeWrapper ------------------------------------------------------------------

class Choice:
    """Validator: a value must be one of ``choices``."""

    def __init__(self, choices):
        self.choices = choices

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


class _Parameter:
    """A typed member of a wrapped class, kept in the parameter node under its name: a str as a
    parameter, a bool as "True" or "False", a node as a node reference (and an empty parameter
    saying it is set), as Slicer's StringSerializer, BoolSerializer and NodeSerializer do; other
    types are not imitated. Reading a member the node
    does not hold (a scene close reset it) writes the default first."""

    def __init__(self, name, hint, classtype):
        self.name = name
        annotated = typing.get_origin(hint) is typing.Annotated
        self.type, *self.validators = typing.get_args(hint) if annotated else (hint,)
        self.is_node = isinstance(self.type, type) and issubclass(self.type, vtkMRMLNode)
        if not (self.is_node or self.type in (str, bool)):
            raise NotImplementedError(f"the stand-in's parameterNodeWrapper cannot store {hint}")
        self.default = getattr(classtype, name, None if self.is_node else self.type())

    def write(self, parameterNode, value):
        if value is None and not self.is_node:
            raise ValueError("Value must not be None")
        if value is not None and not isinstance(value, self.type):
            raise TypeError(f"Value must be of type '{self.type}', is type '{type(value)}' value '{value}'")
        for validator in self.validators:
            validator.validate(value)
        if self.is_node:
            parameterNode.SetParameter(self.name, "")
            parameterNode.SetNodeReferenceID(self.name, None if value is None else value.GetID())
        elif self.type is bool:  # as Slicer's BoolSerializer
            parameterNode.SetParameter(self.name, "True" if value else "False")
        else:
            parameterNode.SetParameter(self.name, value)

    def read(self, parameterNode):
        if not parameterNode.HasParameter(self.name):
            self.write(parameterNode, self.default)
        if self.is_node:
            return parameterNode.GetNodeReference(self.name)
        value = parameterNode.GetParameter(self.name)
        return value == "True" if self.type is bool else value


def parameterNodeWrapper(classtype):
    """The class decorator: each annotated member becomes a property reading and writing a
    vtkMRMLScriptedModuleNode. Wrapping a node writes the defaults (the class's values; "" for a
    str, None for a node) of members it does not hold yet; values already there are kept."""
    hints = typing.get_type_hints(classtype, include_extras=True)
    parameters = {name: _Parameter(name, hint, classtype) for name, hint in hints.items()}
    for name, parameter in parameters.items():
        setattr(classtype, name, property(lambda self, p=parameter: p.read(self.parameterNode),
                                          lambda self, value, p=parameter: p.write(self.parameterNode, value)))

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        for parameter in parameters.values():
            parameter.read(parameterNode)

    classtype.__init__ = __init__
    return classtype


UTIL_FUNCTIONS = (vtkMatrixFromArray, arrayFromVTKMatrix, arrayFromVolume, addVolumeFromArray,
                  arrayFromSegmentBinaryLabelmap, updateSegmentBinaryLabelmapFromArray,
                  VTKObservationMixin)
SCRIPTED_CLASSES = (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                    ScriptedLoadableModuleTest)
WRAPPER_NAMES = (parameterNodeWrapper, Choice)
MODULE_NAMES = ("slicer", "slicer.util", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")


def _module(name, members) -> types.ModuleType:
    module = types.ModuleType(name)
    vars(module).update({member.__name__: member for member in members})
    return module


def install() -> types.ModuleType:
    """A fresh ``slicer`` module (new empty scene) in ``sys.modules``, with ``slicer.util``,
    ``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper``."""
    slicer = _module("slicer", STANDIN_CLASSES.values())
    slicer.util = _module("slicer.util", UTIL_FUNCTIONS)
    slicer.ScriptedLoadableModule = _module("slicer.ScriptedLoadableModule", SCRIPTED_CLASSES)
    slicer.parameterNodeWrapper = _module("slicer.parameterNodeWrapper", WRAPPER_NAMES)
    slicer.mrmlScene = vtkMRMLScene()
    sys.modules.update(zip(MODULE_NAMES, (slicer, slicer.util, slicer.ScriptedLoadableModule,
                                          slicer.parameterNodeWrapper)))
    return slicer


def uninstall() -> None:
    for name in MODULE_NAMES:
        sys.modules.pop(name, None)
