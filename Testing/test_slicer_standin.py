"""The Slicer stand-in offers only catalog names, its geometry agrees with SimpleITK, and its scene
close, parameter node wrapper and segment events follow Slicer's semantics."""

import sys
from typing import Annotated

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtk.util.numpy_support import vtk_to_numpy

import slicer_standin
from conftest import random_ijk_to_ras
from slicer_catalog import SCRIPTED, UTIL, SlicerCatalog

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
SHAPE_KJI = (6, 8, 10)


@pytest.fixture(scope="module")
def catalog():
    return SlicerCatalog()


@pytest.fixture
def slicer():
    yield slicer_standin.install()
    slicer_standin.uninstall()


def defined_names(cls, public=str.isupper):
    """Names the stand-in (not VTK) defines on cls and its Python bases, by their first letter."""
    ours = [klass for klass in cls.__mro__
            if not klass.__module__.startswith(("vtkmodules", "builtins", "unittest"))]
    return {name for klass in ours
            for name in vars(klass) if name[:1] and public(name[0])}


def unknown_methods(catalog, slicer_name, cls):
    return defined_names(cls) - catalog.method_names(slicer_name)


# --- catalog ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("slicer_name", sorted(slicer_standin.STANDIN_CLASSES))
def test_standin_methods_are_in_the_catalog(catalog, slicer_name):
    cls = slicer_standin.STANDIN_CLASSES[slicer_name]
    assert catalog.has_class(slicer_name)
    assert defined_names(cls), "nothing checked"
    assert unknown_methods(catalog, slicer_name, cls) == set()


def test_the_catalog_check_catches_a_misspelled_method(catalog):
    class Misspelled(slicer_standin.vtkMRMLScalarVolumeNode):
        def GetIJKToRASMatrx(self, matrix):
            pass

    assert unknown_methods(catalog, "vtkMRMLScalarVolumeNode", Misspelled) == {"GetIJKToRASMatrx"}


def test_util_and_scripted_names_are_in_the_catalog(catalog, slicer):
    util_names = {name for name in vars(slicer.util) if not name.startswith("_")}
    assert util_names and util_names <= catalog.util_names
    mixin = set(catalog.python[UTIL]["classes"]["VTKObservationMixin"]["methods"])
    assert defined_names(slicer.util.VTKObservationMixin, str.isalpha) <= mixin
    for name, cls in vars(slicer.ScriptedLoadableModule).items():
        if not name.startswith("_"):
            known = set(catalog.python[SCRIPTED]["classes"][name]["methods"])
            assert defined_names(cls, str.isalpha) <= known
    wrapper_names = {name for name in vars(slicer.parameterNodeWrapper) if not name.startswith("__")}
    assert wrapper_names and wrapper_names <= catalog.module_names("slicer.parameterNodeWrapper")


# --- module, scene, util -----------------------------------------------------------------------------

def test_install_gives_a_fresh_scene_and_uninstall_removes_the_modules(slicer):
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    assert sys.modules["slicer.util"] is slicer.util
    fresh = slicer_standin.install()
    assert fresh.mrmlScene.GetFirstNodeByName("CT") is None and sys.modules["slicer"] is fresh
    slicer_standin.uninstall()
    assert not set(slicer_standin.MODULE_NAMES) & set(sys.modules)


def test_scene_ids_names_and_lookups(slicer):
    scene = slicer.mrmlScene
    first = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    second = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    assert first.GetID() == "vtkMRMLMarkupsFiducialNode1"
    assert (second.GetID(), second.GetName()) == ("vtkMRMLMarkupsFiducialNode2", "P_1")
    assert scene.GetNodeByID(roi.GetID()) is roi and scene.GetFirstNodeByName("P") is first
    assert scene.GetNodesByClass("vtkMRMLMarkupsNode").GetNumberOfItems() == 3
    scene.RemoveNode(first)
    assert scene.GetNodeByID("vtkMRMLMarkupsFiducialNode1") is None
    assert scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode").GetItemAsObject(0) is second


def test_array_from_volume_is_a_kji_view(slicer, rng):
    values = rng.integers(0, 1000, SHAPE_KJI).astype(np.int16)
    volume = slicer.util.addVolumeFromArray(values, np.eye(4), "CT")
    array = slicer.util.arrayFromVolume(volume)
    np.testing.assert_array_equal(array, values)
    assert volume.GetImageData().GetScalarComponentAsDouble(9, 7, 5, 0) == values[5, 7, 9]
    array[5, 7, 9] = -1
    assert volume.GetImageData().GetScalarComponentAsDouble(9, 7, 5, 0) == -1


def test_matrix_conversions_round_trip(slicer, rng):
    ijk_to_ras = random_ijk_to_ras(rng)
    vtk_matrix = slicer.util.vtkMatrixFromArray(ijk_to_ras)
    np.testing.assert_array_equal(slicer.util.arrayFromVTKMatrix(vtk_matrix), ijk_to_ras)
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix), ijk_to_ras, atol=1e-12)


def test_closing_the_scene_resets_singletons_and_removes_the_rest(slicer):
    scene, seen = slicer.mrmlScene, []

    def count():
        return scene.GetNodesByClass("vtkMRMLNode").GetNumberOfItems()

    for event in (scene.StartCloseEvent, scene.EndCloseEvent):
        scene.AddObserver(event, lambda caller, name, event=event: seen.append((event, count())))
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    singleton = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
    singleton.SetSingletonTag("Module")
    scene.AddNode(singleton)
    singleton.SetParameter("threshold", "100")
    singleton.SetNodeReferenceID("input", volume.GetID())
    singleton.SetAttribute("ModuleName", "Module")
    assert (singleton.GetID(), volume.GetID()) == ("vtkMRMLScriptedModuleNodeModule",
                                                   "vtkMRMLScalarVolumeNode1")
    scene.Clear(0)
    assert seen == [(scene.StartCloseEvent, 2), (scene.EndCloseEvent, 1)]
    assert scene.GetSingletonNode("Module", "vtkMRMLScriptedModuleNode") is singleton
    assert singleton.GetParameterNames() == [] and singleton.GetNodeReference("input") is None
    assert singleton.GetAttribute("ModuleName") is None and singleton.GetSingletonTag() == "Module"
    assert scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode").GetID() == "vtkMRMLScalarVolumeNode1"
    scene.Clear(1)
    assert count() == 0


def test_the_logic_parameter_node_is_the_scenes_singleton_for_the_module(slicer):
    class ThresholdLogic(slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic):
        pass

    node = ThresholdLogic().getParameterNode()
    assert ThresholdLogic().getParameterNode() is node
    assert (node.GetSingletonTag(), node.GetAttribute("ModuleName"), node.GetName()) \
        == ("Threshold", "Threshold", "Threshold")
    slicer.mrmlScene.Clear(0)
    assert ThresholdLogic().getParameterNode() is node and node.GetAttribute("ModuleName") == "Threshold"


def test_parameter_node_wrapper_keeps_typed_members_in_the_node(slicer):
    wrapper = slicer.parameterNodeWrapper

    @wrapper.parameterNodeWrapper
    class Parameters:
        volume: slicer.vtkMRMLScalarVolumeNode
        name: str
        mode: Annotated[str, wrapper.Choice(["fast", "exact"])] = "fast"

    node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
    node.SetSingletonTag("Module")
    slicer.mrmlScene.AddNode(node)
    node.SetParameter("name", "kept")
    parameters = Parameters(node)
    assert (parameters.volume, parameters.name, parameters.mode) == (None, "kept", "fast")
    assert sorted(node.GetParameterNames()) == ["mode", "name", "volume"]
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    parameters.volume, parameters.mode = volume, "exact"
    assert node.GetNodeReferenceID("volume") == volume.GetID() and node.GetParameter("mode") == "exact"
    assert Parameters(node).volume is volume
    with pytest.raises(TypeError):
        parameters.volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(ValueError):
        parameters.mode = "slow"
    with pytest.raises(ValueError):
        parameters.name = None
    slicer.mrmlScene.Clear(0)  # resets the node: a member read again is its default again
    assert parameters.mode == "fast" and node.GetParameter("mode") == "fast"
    with pytest.raises(NotImplementedError, match="cannot store"):
        @wrapper.parameterNodeWrapper
        class Unsupported:
            threshold: float


# --- markups, transforms, geometry against SimpleITK -------------------------------------------------

def sitk_image(ijk_to_ras):
    """The same grid as a SimpleITK image (LPS world)."""
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    image = sitk.Image(SHAPE_KJI[::-1], sitk.sitkUInt8)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((LPS_FROM_RAS @ ijk_to_ras[:3, 3]).tolist())
    image.SetDirection((LPS_FROM_RAS @ ijk_to_ras[:3, :3] / spacing).ravel().tolist())
    return image


def random_rigid(rng):
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation * np.sign(np.linalg.det(rotation)), rng.uniform(-50, 50, 3)
    return matrix


def add_transform(slicer, matrix, parent=None):
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    transform.SetAndObserveTransformNodeID(parent.GetID() if parent else None)
    return transform


@pytest.mark.parametrize("transformed", [False, True])
def test_fiducial_maps_to_the_voxel_simpleitk_names(slicer, rng, transformed):
    ijk_to_ras = random_ijk_to_ras(rng)
    slicer.util.addVolumeFromArray(np.zeros(SHAPE_KJI, np.uint8), ijk_to_ras, "CT")
    fiducials = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    to_world = np.eye(4)
    if transformed:
        outer = random_rigid(rng)
        inner = add_transform(slicer, random_rigid(rng), parent=add_transform(slicer, outer))
        fiducials.SetAndObserveTransformNodeID(inner.GetID())
        to_world = outer @ inner._to_parent
    image = sitk_image(ijk_to_ras)
    for index in rng.integers(0, SHAPE_KJI[::-1]) + rng.uniform(-0.4, 0.4, (20, 3)):
        ras = (ijk_to_ras @ [*index, 1.0])[:3]
        n = fiducials.AddControlPoint((np.linalg.inv(to_world) @ [*ras, 1.0])[:3])
        world = [0.0, 0.0, 0.0]
        fiducials.GetNthControlPointPositionWorld(n, world)
        np.testing.assert_allclose(world, ras, atol=1e-9)
        voxel = np.round(np.linalg.solve(ijk_to_ras, [*world, 1.0]))[:3]
        lps = (LPS_FROM_RAS @ world).tolist()
        assert tuple(voxel.astype(int)) == image.TransformPhysicalPointToIndex(lps)


def test_a_parent_transform_moves_the_world_position(slicer, rng):
    outer, inner_matrix = random_rigid(rng), random_rigid(rng)
    inner = add_transform(slicer, inner_matrix, parent=add_transform(slicer, outer))
    to_world = vtk.vtkMatrix4x4()
    inner.GetMatrixTransformToWorld(to_world)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(to_world), outer @ inner_matrix,
                               atol=1e-12)
    fiducials = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    fiducials.AddControlPoint([1.0, 2.0, 3.0], "a")
    fiducials.SetAndObserveTransformNodeID(inner.GetID())
    expected = (outer @ inner_matrix @ [1, 2, 3, 1])[:3]
    np.testing.assert_allclose(fiducials.GetNthControlPointPositionWorld(0), expected)
    assert fiducials.GetNthControlPointPosition(0) == (1.0, 2.0, 3.0)
    n = fiducials.AddControlPointWorld([4.0, 5.0, 6.0])
    np.testing.assert_allclose(fiducials.GetNthControlPointPositionWorld(n), [4, 5, 6], atol=1e-9)


def test_roi_bounds_go_through_the_parent_transform(slicer):
    quarter_turn = np.array([[0, -1, 0, 10], [1, 0, 0, 20], [0, 0, 1, 30], [0, 0, 0, 1]], float)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter([1.0, 2.0, 3.0])
    roi.SetSize([4.0, 6.0, 8.0])
    roi.SetAndObserveTransformNodeID(add_transform(slicer, quarter_turn).GetID())
    bounds = [0.0] * 6
    roi.GetRASBounds(bounds)
    np.testing.assert_allclose(bounds, [10 - 2 - 3, 10 - 2 + 3, 20 + 1 - 2, 20 + 1 + 2, 33 - 4, 33 + 4])
    center = [0.0] * 3
    roi.GetCenter(center)
    assert center == [1.0, 2.0, 3.0] and roi.GetSize() == (4.0, 6.0, 8.0)


def test_markup_events_and_observation_mixin(slicer):
    fiducials = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    events = []
    tag = fiducials.AddObserver(fiducials.PointAddedEvent,
                                lambda caller, event: events.append(("added", caller)))

    class Observer(slicer.util.VTKObservationMixin):
        def onDefined(self, caller, event):
            events.append(("defined", caller))

    observer = Observer()
    observer.addObserver(fiducials, fiducials.PointPositionDefinedEvent, observer.onDefined)
    observer.addObserver(fiducials, fiducials.PointPositionDefinedEvent, observer.onDefined)
    assert len(observer.Observations) == 1
    fiducials.AddControlPoint([0.0, 0.0, 0.0])
    assert events == [("added", fiducials), ("defined", fiducials)]
    fiducials.RemoveObserver(tag)
    observer.removeObservers()
    fiducials.AddControlPoint([1.0, 0.0, 0.0], "b")
    assert len(events) == 2 and observer.Observations == []
    fiducials.RemoveNthControlPoint(0)
    assert fiducials.GetNumberOfControlPoints() == 1
    fiducials.RemoveAllControlPoints()
    assert fiducials.GetNumberOfControlPoints() == 0


# --- segmentation ------------------------------------------------------------------------------------

def segmentation_on(slicer, volume):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    return node


def labelmap_on(slicer, extent, image_to_world, values):
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetExtent(*extent)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    labelmap.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(image_to_world))
    vtk_to_numpy(labelmap.GetPointData().GetScalars())[:] = values.ravel()
    return labelmap


def segment_array(slicer, node, segment_id, volume):
    return slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, volume)


def test_segments_ids_and_names(slicer):
    segmentation = slicer.vtkMRMLSegmentationNode().GetSegmentation()
    assert [segmentation.AddEmptySegment() for _ in range(2)] == ["Segment_1", "Segment_2"]
    assert segmentation.AddEmptySegment("", "tumour") == "Segment_3"
    assert segmentation.AddEmptySegment("Segment_3") == "Segment_3_1"
    assert segmentation.GetSegment("Segment_3").GetName() == "tumour"
    assert segmentation.GetNumberOfSegments() == 4 and segmentation.GetNthSegmentID(1) == "Segment_2"


def test_labelmap_replaces_exactly_its_extent_and_leaves_other_segments(slicer, rng):
    ijk_to_ras = random_ijk_to_ras(rng)
    volume = slicer.util.addVolumeFromArray(np.zeros(SHAPE_KJI, np.uint8), ijk_to_ras, "CT")
    node = segmentation_on(slicer, volume)
    target, other = (node.GetSegmentation().AddEmptySegment("", name) for name in ("target", "other"))
    other_mask = rng.random(SHAPE_KJI) > 0.5
    slicer.util.updateSegmentBinaryLabelmapFromArray(other_mask, node, other, volume)
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.ones(SHAPE_KJI), node, target, volume)
    values = rng.integers(0, 3, (5, 5, 8))  # (k, j, i) over extent i 1..8, j 2..6, k 0..4
    labelmap = labelmap_on(slicer, (1, 8, 2, 6, 0, 4), ijk_to_ras, values)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    logic.SetBinaryLabelmapToSegment(labelmap, node, target, logic.MODE_REPLACE, (2, 5, 3, 4, 1, 3))
    expected = np.ones(SHAPE_KJI, np.uint8)
    expected[1:4, 3:5, 2:6] = values[1:4, 1:3, 1:5] != 0
    np.testing.assert_array_equal(segment_array(slicer, node, target, volume), expected)
    np.testing.assert_array_equal(segment_array(slicer, node, other, volume), other_mask)
    logic.SetBinaryLabelmapToSegment(labelmap, node, target)
    expected[0:5, 2:7, 1:9] = values != 0
    np.testing.assert_array_equal(segment_array(slicer, node, target, volume), expected)
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)  # the same grid: segments kept
    shifted = slicer.util.addVolumeFromArray(np.zeros(SHAPE_KJI), ijk_to_ras @ np.diag([2, 1, 1, 1]))
    with pytest.raises(ValueError, match="reference grid"):  # the stand-in does not resample
        node.SetReferenceImageGeometryParameterFromVolumeNode(shifted)
    with pytest.raises(NotImplementedError, match="merge mode"):  # nor merge
        logic.SetBinaryLabelmapToSegment(labelmap, node, target, logic.MODE_REPLACE + 1)


HALF_VOXEL_IN_J = np.eye(4)
HALF_VOXEL_IN_J[1, 3] = 0.5
OFF_GRID = {"spacing": np.diag([1.001, 1.0, 1.0, 1.0]), "half voxel": HALF_VOXEL_IN_J}
"""Changes of a grid, in index space (right-multiplied onto its IJK to RAS)."""


@pytest.mark.parametrize("change", OFF_GRID)
def test_a_labelmap_or_volume_off_the_reference_grid_raises(slicer, rng, change):
    ijk_to_ras = random_ijk_to_ras(rng)
    volume = slicer.util.addVolumeFromArray(np.zeros(SHAPE_KJI, np.uint8), ijk_to_ras, "CT")
    node = segmentation_on(slicer, volume)
    segment = node.GetSegmentation().AddEmptySegment()
    wrong = ijk_to_ras @ OFF_GRID[change]
    labelmap = labelmap_on(slicer, (0, 1, 0, 1, 0, 1), wrong, np.ones(8))
    with pytest.raises(ValueError, match="reference grid"):
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(labelmap, node, segment)
    other_volume = slicer.util.addVolumeFromArray(np.zeros(SHAPE_KJI, np.uint8), wrong, "other")
    with pytest.raises(ValueError, match="reference grid"):
        segment_array(slicer, node, segment, other_volume)


def test_a_transformed_segmentation_takes_labelmaps_in_its_own_coordinates(slicer, rng):
    ijk_to_ras = random_ijk_to_ras(rng)
    volume = slicer.util.addVolumeFromArray(np.zeros(SHAPE_KJI, np.uint8), ijk_to_ras, "CT")
    node = segmentation_on(slicer, volume)
    transform = add_transform(slicer, random_rigid(rng))
    node.SetAndObserveTransformNodeID(transform.GetID())
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment = node.GetSegmentation().AddEmptySegment()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    with pytest.raises(ValueError, match="reference grid"):  # world coordinates are wrong here
        logic.SetBinaryLabelmapToSegment(labelmap_on(slicer, (0, 1, 0, 1, 0, 1), ijk_to_ras,
                                                     np.ones(8)), node, segment)
    to_segmentation = np.linalg.inv(transform._to_parent) @ ijk_to_ras
    logic.SetBinaryLabelmapToSegment(labelmap_on(slicer, (0, 1, 0, 1, 0, 1), to_segmentation,
                                                 np.ones(8)), node, segment)
    assert segment_array(slicer, node, segment, volume).sum() == 8


def test_a_segment_content_change_is_announced_with_its_id(slicer):
    volume = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.uint8), np.eye(4), "CT")
    node = segmentation_on(slicer, volume)
    segment = node.GetSegmentation().AddEmptySegment()
    heard = []

    @vtk.calldata_type(vtk.VTK_STRING)
    def hear(caller, event, segmentId=None):
        heard.append((caller, segmentId))

    for notifier in (node.GetSegmentation(), node):
        notifier.AddObserver(slicer.vtkSegmentation.SourceRepresentationModified, hear)
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.ones((2, 2, 2)), node, segment, volume)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        labelmap_on(slicer, (0, 1, 0, 1, 0, 1), np.eye(4), np.zeros(8)), node, segment)
    assert heard == [(node.GetSegmentation(), segment), (node, segment)] * 2


def test_every_extent_corner_case_stays_inside_the_segment(slicer):
    volume = slicer.util.addVolumeFromArray(np.zeros((3, 3, 3), np.uint8), np.eye(4), "CT")
    node = segmentation_on(slicer, volume)
    segment = node.GetSegmentation().AddEmptySegment()
    labelmap = labelmap_on(slicer, (-1, 1, -1, 1, -1, 1), np.eye(4), np.ones(27))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    for extent in [(-5, -2, 0, 2, 0, 2), (0, 9, 0, 9, 0, 9), None]:
        logic.SetBinaryLabelmapToSegment(labelmap, node, segment, logic.MODE_REPLACE, extent)
    expected = np.zeros((3, 3, 3), np.uint8)
    expected[:2, :2, :2] = 1
    np.testing.assert_array_equal(segment_array(slicer, node, segment, volume), expected)
