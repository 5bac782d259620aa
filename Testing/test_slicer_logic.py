"""The module's Logic against the vtk-based Slicer stand-in, with the real engine and shipped model:
markups to RAS prompts (SimpleITK as the geometry reference), changed regions written in the volume's
geometry, undo mirrored in the segment, other segments untouched, failures leave the scene as it was;
edits made outside the module seed the session; the choices live in the parameter node; closing the
scene leaves nothing behind.
"""

import importlib
import shutil
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import slicer_standin
from ka2er_core.geometry import ras_to_ijk

MODULE = Path(__file__).resolve().parents[1] / "KA2ERSegment"


@pytest.fixture
def slicer(monkeypatch):
    """A fresh stand-in scene; ``qt`` is an empty module, so a Logic that touched the GUI would fail."""
    module = slicer_standin.install()
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.syspath_prepend(str(MODULE))
    for name in [n for n in sys.modules if n == "KA2ERSegment" or n.startswith("KA2ERSegmentLib")]:
        monkeypatch.delitem(sys.modules, name)
    yield module
    slicer_standin.uninstall()


@pytest.fixture
def logic(slicer):
    module = importlib.import_module("KA2ERSegment")
    logic = module.KA2ERSegmentLogic()
    logic.errors, logic.results = [], []
    logic.onError = logic.errors.append
    logic.onResult = lambda segment_id, result: logic.results.append(result)
    logic.loadModel("", device="cpu")
    yield logic
    logic.worker.stop()


def rotation(degrees_about_z: float, degrees_about_x: float) -> np.ndarray:
    a, b = np.radians([degrees_about_z, degrees_about_x])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def oblique_ball_volume(slicer, shape=(30, 44, 40), spacing=(2.5, 1.2, 1.5)):
    """An oblique, anisotropic, flipped volume (k, j, i) with a bright ball; returns node, matrix,
    ball mask and the ball centre in local RAS."""
    direction = rotation(25, -15) @ np.diag([-1.0, 1.0, 1.0])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = direction * np.asarray(spacing)
    ijk_to_ras[:3, 3] = (12.0, -30.0, 7.0)
    k, j, i = np.indices(shape)
    centre_ijk = np.array([20.0, 22.0, 15.0])  # (i, j, k)
    distance = np.sqrt((((np.stack([i, j, k], -1) - centre_ijk) * spacing) ** 2).sum(-1))
    ball = distance < 14.0
    rng = np.random.default_rng(0)
    array = np.where(ball, 900.0, 100.0) + rng.normal(0, 20, shape)
    node = slicer.util.addVolumeFromArray(array.astype(np.float32), ijk_to_ras, "oblique")
    centre_ras = (ijk_to_ras @ np.append(centre_ijk, 1.0))[:3]
    return node, ijk_to_ras, ball, centre_ras


def sitk_voxel(ijk_to_ras: np.ndarray, shape, ras_point) -> tuple[int, int, int]:
    """The (i, j, k) voxel SimpleITK names for a RAS point (SimpleITK works in LPS)."""
    image = sitk.Image([int(s) for s in shape[::-1]], sitk.sitkUInt8)
    lps = np.diag([-1.0, -1.0, 1.0])
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps @ ijk_to_ras[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin((lps @ ijk_to_ras[:3, 3]).tolist())
    return image.TransformPhysicalPointToIndex((lps @ np.asarray(ras_point)).tolist())


def linear_transform(slicer, matrix: np.ndarray):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return node


def segment_array(logic, segment_id):
    from KA2ERSegmentLib.segments import read_segment

    return read_segment(logic.segmentationNode, segment_id, logic.volumeNode)


def dice(mask, truth) -> float:
    return 2 * (mask & truth).sum() / (mask.sum() + truth.sum())


def click(logic, node, ras, positive=True):
    index = node.AddControlPointWorld(list(ras))
    logic.addPoint(node, index, positive)
    logic.worker.wait()


def test_a_fiducial_on_a_transformed_oblique_volume_prompts_the_voxel_simpleitk_names(slicer, logic):
    volume, ijk_to_ras, ball, centre = oblique_ball_volume(slicer)
    moved = np.eye(4)
    moved[:3, :3] = rotation(10, 5)
    moved[:3, 3] = (4.0, -6.0, 9.0)
    volume.SetAndObserveTransformNodeID(linear_transform(slicer, moved).GetID())
    logic.setVolume(volume)
    segment_id = logic.setTarget("")
    logic.worker.wait()
    prompts, add_point = [], logic.session.add_point
    logic.session.add_point = lambda ras, positive=True: prompts.append(ras) or add_point(ras, positive)
    positive, _, _ = logic.promptNodes()
    local = centre + np.array([1.3, -2.1, 0.7])
    world = (moved @ np.append(local, 1.0))[:3]
    click(logic, positive, world)
    assert logic.errors == [] and len(prompts) == 1
    voxel = np.round(ras_to_ijk(prompts[0], logic.session.volume.ijk_to_ras)).astype(int)
    assert tuple(voxel) == sitk_voxel(ijk_to_ras, ball.shape, local)
    written = segment_array(logic, segment_id)
    assert written.shape == ball.shape and written[tuple(voxel[::-1])] == 1
    np.testing.assert_array_equal(written, logic.session.mask)
    assert logic.segmentationNode.GetParentTransformNode() is volume.GetParentTransformNode()


def test_only_the_changed_region_is_written_and_undo_restores_it(slicer, logic):
    volume, _, ball, centre = oblique_ball_volume(slicer)
    logic.setVolume(volume)
    segmentation = logic.ensureSegmentation()
    other = segmentation.GetSegmentation().AddEmptySegment("", "Other")
    blob = np.zeros(ball.shape, np.uint8)
    blob[10:20, 5:40, 5:35] = 1  # overlaps the ball
    slicer.util.updateSegmentBinaryLabelmapFromArray(blob, segmentation, other, volume)
    segment_id = logic.setTarget("")
    positive, negative, _ = logic.promptNodes()

    click(logic, positive, centre)
    first = segment_array(logic, segment_id)
    assert dice(first, ball) > 0.5
    click(logic, negative, centre + np.array([0.0, 0.0, 12.0]), positive=False)
    assert not np.array_equal(segment_array(logic, segment_id), first)
    assert logic.results[-1].region is not None

    logic.setTarget(other)  # away and back: the session still holds the target's history
    logic.setTarget(segment_id)
    logic.undo()
    logic.worker.wait()
    np.testing.assert_array_equal(segment_array(logic, segment_id), first)
    assert negative.GetNumberOfControlPoints() == 0 and positive.GetNumberOfControlPoints() == 1
    np.testing.assert_array_equal(segment_array(logic, other), blob)
    assert logic.errors == []

    logic.reset()
    logic.worker.wait()
    assert segment_array(logic, segment_id).sum() == 0 and positive.GetNumberOfControlPoints() == 0
    np.testing.assert_array_equal(segment_array(logic, other), blob)


def test_an_existing_segment_seeds_the_session_and_a_click_corrects_it(slicer, logic):
    volume, _, ball, centre = oblique_ball_volume(slicer)
    logic.setVolume(volume)
    segmentation = logic.ensureSegmentation()
    damaged = ball.astype(np.uint8)
    damaged[:, :, :20] = 0  # half of the ball is missing
    existing = segmentation.GetSegmentation().AddEmptySegment("", "Ball")
    slicer.util.updateSegmentBinaryLabelmapFromArray(damaged, segmentation, existing, volume)
    assert logic.setTarget(existing) == existing
    logic.worker.wait()
    np.testing.assert_array_equal(logic.session.mask, damaged)

    positive, _, _ = logic.promptNodes()
    missing = np.argwhere(ball & (damaged == 0)).mean(axis=0)[::-1]  # (i, j, k)
    click(logic, positive, (volume_matrix(volume) @ np.append(missing, 1.0))[:3])
    assert dice(segment_array(logic, existing), ball) > dice(damaged, ball)


def volume_matrix(volume) -> np.ndarray:
    from KA2ERSegmentLib.geometry import ijk_to_ras_local

    return ijk_to_ras_local(volume)


def edit_outside_the_module(slicer, logic, segment_id, ball):
    """What the Segment Editor might do to the segment: erase the ball's top slices and paint a
    blob in a far corner. Returns the edited segment and the blob."""
    edited = segment_array(logic, segment_id)
    edited[ball.shape[0] * 2 // 3:] = 0
    blob = np.zeros(ball.shape, bool)
    blob[2:8, 2:8, 0:5] = True
    edited[blob] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, logic.segmentationNode, segment_id,
                                                     logic.volumeNode)
    return edited, blob


def outside(region, shape) -> np.ndarray:
    """Voxels of a (k, j, i) grid outside ``region``."""
    mask = np.ones(shape, bool)
    mask[region] = False
    return mask


def test_an_outside_edit_followed_by_a_click_keeps_the_edit_outside_the_clicks_region(slicer, logic):
    volume, _, ball, centre = oblique_ball_volume(slicer)
    logic.setVolume(volume)
    segment_id = logic.setTarget("")
    positive, _, _ = logic.promptNodes()
    click(logic, positive, centre)
    assert logic.targetSync.in_step(segment_id)  # the module's own write is no outside edit

    edited, blob = edit_outside_the_module(slicer, logic, segment_id, ball)
    assert not logic.targetSync.in_step(segment_id)
    click(logic, positive, centre + np.array([0.0, 3.0, 0.0]))
    region = logic.results[-1].region
    assert logic.errors == [] and not blob[region].any()
    after = segment_array(logic, segment_id)
    kept = outside(region, ball.shape)
    np.testing.assert_array_equal(after[kept], edited[kept])
    np.testing.assert_array_equal(after, logic.session.mask)  # the session started from the edit
    assert logic.session.undo_depth == 1

    logic.undo()  # takes back the click, not the edit
    logic.worker.wait()
    np.testing.assert_array_equal(segment_array(logic, segment_id), edited)


def test_an_outside_edit_while_a_click_is_computed_is_seeded_with_the_clicks_answer(slicer, logic):
    volume, _, ball, centre = oblique_ball_volume(slicer)
    logic.setVolume(volume)
    segment_id = logic.setTarget("")
    positive, _, _ = logic.promptNodes()
    logic.addPoint(positive, positive.AddControlPointWorld(list(centre)), True)  # not written yet
    _, blob = edit_outside_the_module(slicer, logic, segment_id, ball)
    click(logic, positive, centre + np.array([0.0, 3.0, 0.0]))
    assert logic.errors == [] and len(logic.results) == 2
    after = segment_array(logic, segment_id)
    assert after[blob].all()
    np.testing.assert_array_equal(after, logic.session.mask)

    logic.undo()  # takes back the second click only: the first click's answer and the edit stay
    logic.worker.wait()
    after_undo = segment_array(logic, segment_id)
    assert after_undo[blob].all() and dice(after_undo, ball) > 0.5


def test_a_result_that_could_not_be_written_is_not_kept_by_the_session(slicer, logic, monkeypatch):
    volume, _, ball, centre = oblique_ball_volume(slicer)
    logic.setVolume(volume)
    segment_id = logic.setTarget("")
    positive, negative, _ = logic.promptNodes()
    click(logic, positive, centre)
    written = segment_array(logic, segment_id)
    module = sys.modules["KA2ERSegment"]
    write_region = module.write_region

    def fails_once(*args):
        monkeypatch.setattr(module, "write_region", write_region)
        raise RuntimeError("the segmentation could not be changed")

    monkeypatch.setattr(module, "write_region", fails_once)
    click(logic, negative, centre + np.array([0.0, 0.0, 12.0]), positive=False)
    assert logic.errors == ["the segmentation could not be changed"]
    np.testing.assert_array_equal(segment_array(logic, segment_id), written)
    click(logic, positive, centre + np.array([0.0, 3.0, 0.0]))  # starts again from the segment
    np.testing.assert_array_equal(segment_array(logic, segment_id), logic.session.mask)
    assert logic.session.undo_depth == 1 and negative.GetNumberOfControlPoints() == 0


def test_a_volume_chosen_in_the_parameter_node_is_given_to_the_session_before_the_next_click(
        slicer, logic):
    first, _, _, centre = oblique_ball_volume(slicer)
    logic.setVolume(first)
    logic.setTarget("")
    positive, _, _ = logic.promptNodes()
    click(logic, positive, centre)
    second, _, ball, centre = oblique_ball_volume(slicer, shape=(30, 40, 44))
    parameters = logic.parameterNode  # as the panel's selectors, or a scene being loaded, set it
    parameters.volume, parameters.segmentation, parameters.segmentId = second, None, ""
    segment_id = logic.setTarget("")
    click(logic, positive, centre)
    assert logic.errors == [] and logic.session.volume.shape == ball.shape
    assert dice(segment_array(logic, segment_id), ball) > 0.5


def test_the_choices_live_in_the_parameter_node_and_a_new_logic_carries_on_from_them(slicer, logic):
    volume, _, ball, centre = oblique_ball_volume(slicer)
    logic.setVolume(volume)
    segment_id = logic.setTarget("")
    positive, _, _ = logic.promptNodes()
    click(logic, positive, centre)
    member = logic.session.members[-1]
    logic.setMember(member)
    logic.worker.wait()
    stored = slicer.mrmlScene.GetSingletonNode("KA2ERSegment", "vtkMRMLScriptedModuleNode")
    assert stored.GetNodeReferenceID("volume") == volume.GetID()
    assert stored.GetNodeReferenceID("segmentation") == logic.segmentationNode.GetID()
    assert {name: stored.GetParameter(name) for name in ("segmentId", "source", "device", "member")} \
        == {"segmentId": segment_id, "source": "", "device": "cpu", "member": member}

    # A module reloaded, or a saved scene opened: a new Logic continues from the parameter node.
    successor = importlib.import_module("KA2ERSegment").KA2ERSegmentLogic()
    successor.errors, successor.results = [], []
    successor.onError = successor.errors.append
    successor.onResult = lambda segment_id, result: successor.results.append(result)
    try:
        successor.loadModel(successor.parameterNode.source, device=successor.parameterNode.device)
        before = segment_array(logic, segment_id)
        click(successor, positive, centre + np.array([0.0, -3.0, 0.0]))
        assert successor.errors == [] and successor.session.pinned == member
        after = segment_array(logic, segment_id)
        kept = outside(successor.results[-1].region, ball.shape)
        np.testing.assert_array_equal(after[kept], before[kept])
        np.testing.assert_array_equal(after, successor.session.mask)
    finally:
        successor.cleanup()


@pytest.mark.parametrize("removeSingletons", [0, 1], ids=["close scene", "remove singletons too"])
def test_closing_the_scene_leaves_nothing_behind(slicer, logic, removeSingletons):
    volume, _, ball, centre = oblique_ball_volume(slicer)
    logic.setVolume(volume)
    segment_id = logic.setTarget("")
    segmentation = logic.segmentationNode
    positive, _, _ = logic.promptNodes()
    logic.addPoint(positive, positive.AddControlPointWorld(list(centre)), True)  # queued
    slicer.mrmlScene.Clear(removeSingletons)
    logic.worker.wait()
    assert logic.results == [] and logic.errors == []  # the queued click wrote and said nothing
    assert not slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume).any()
    assert logic.session is None and logic.volume is None and logic.imageNode is None
    assert (logic.volumeNode, logic.segmentationNode, logic.segmentId) == (None, None, None)
    assert [observation[0] for observation in logic.Observations] == [slicer.mrmlScene] * 2
    stored = slicer.mrmlScene.GetSingletonNode("KA2ERSegment", "vtkMRMLScriptedModuleNode")
    assert logic.parameterNode.parameterNode is stored and logic.parameterNode.device == "auto"

    volume, _, _, centre = oblique_ball_volume(slicer)  # the new scene, before a model is loaded
    logic.setVolume(volume)
    logic.setTarget("")
    click(logic, logic.promptNodes()[0], centre)
    assert logic.errors == ["no model loaded: press Load model"]


def test_clicks_queue_while_the_worker_is_busy_and_a_failed_click_changes_nothing(slicer, logic):
    volume, ijk_to_ras, ball, centre = oblique_ball_volume(slicer)
    logic.setVolume(volume)
    segment_id = logic.setTarget("")
    positive, negative, _ = logic.promptNodes()
    for offset in (0.0, 3.0, -3.0):  # submitted back to back, before any finishes
        index = positive.AddControlPointWorld(list(centre + offset))
        logic.addPoint(positive, index, True)
    logic.worker.wait()
    assert len(logic.results) == 3 and logic.errors == []
    before = segment_array(logic, segment_id)

    outside = (ijk_to_ras @ np.array([-20.0, 5.0, 5.0, 1.0]))[:3]
    index = negative.AddControlPointWorld(list(outside))
    logic.addPoint(negative, index, False)
    logic.worker.wait()
    assert len(logic.errors) == 1 and "outside the image" in logic.errors[0]
    assert negative.GetNumberOfControlPoints() == 0  # the failed point is taken back
    np.testing.assert_array_equal(segment_array(logic, segment_id), before)
    np.testing.assert_array_equal(logic.session.mask, before)


def test_a_box_from_a_markups_roi_segments_the_object(slicer, logic):
    volume, ijk_to_ras, ball, centre = oblique_ball_volume(slicer)
    logic.setVolume(volume)
    segment_id = logic.setTarget("")
    _, _, box = logic.promptNodes()
    box.SetCenter(list(centre))
    box.SetSize([30.0, 30.0, 30.0])
    logic.addBox(box)
    logic.worker.wait()
    assert logic.errors == [] and dice(segment_array(logic, segment_id), ball) > 0.5


def test_the_background_embeddings_readiness_reaches_the_logic(slicer, logic):
    from KA2ERSegmentLib.status import background_text

    volume, _, _, centre = oblique_ball_volume(slicer)
    logic.setVolume(volume)
    segment_id = logic.setTarget("")
    positive, _, _ = logic.promptNodes()
    reported = []
    logic.onBackground = reported.append
    click(logic, positive, centre)
    assert logic.results and segment_array(logic, segment_id).any()
    logic.session.prefetcher.wait(600)  # a bound on a hung worker, not a timing requirement
    logic.refreshBackground()
    assert not logic.busy  # a status question is not work for the user
    logic.worker.wait()
    status = logic.background
    assert reported == [status] and status.done and status.planned > 0
    assert status.ready == status.planned and not logic.askingBackground
    assert background_text(status) == f"corrections ready in {status.planned} regions"
    assert background_text(replace(status, ready=0, done=False)) == (
        f"preparing corrections: 0 of {status.planned} regions ready")


def test_scene_errors_are_one_clear_message_and_change_nothing(slicer):
    module = importlib.import_module("KA2ERSegment")
    logic = module.KA2ERSegmentLogic()
    try:
        with pytest.raises(module.SceneError, match="no volume selected"):
            logic.ensureSegmentation()
        with pytest.raises(module.SceneError, match="no target segment"):
            logic.undo()
        assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    finally:
        logic.worker.stop()


@pytest.mark.parametrize("file, correct, misspelled, surfaces", [
    ("KA2ERSegmentLib/geometry.py", "GetNthControlPointPositionWorld", "GetNthControlPointWorldPosition",
     "raised"),  # reading the prompt, at once
    ("KA2ERSegmentLib/segments.py", "SetBinaryLabelmapToSegment", "SetBinaryLabelMapToSegment",
     "reported"),  # writing the result, after the engine answered
])
def test_a_misspelled_slicer_method_in_the_module_fails_these_tests(slicer, tmp_path, monkeypatch,
                                                                    file, correct, misspelled, surfaces):
    """The stand-in has only the catalog's methods, so a Logic calling a wrong name cannot pass."""
    copy = tmp_path / "KA2ERSegment"
    shutil.copytree(MODULE, copy, ignore=shutil.ignore_patterns("__pycache__", "Resources"))
    source = (copy / file).read_text()
    assert correct in source
    (copy / file).write_text(source.replace(correct, misspelled))
    monkeypatch.syspath_prepend(str(copy))
    for name in [n for n in sys.modules if n == "KA2ERSegment" or n.startswith("KA2ERSegmentLib")]:
        monkeypatch.delitem(sys.modules, name)
    module = importlib.import_module("KA2ERSegment")
    assert Path(module.__file__).parent == copy
    logic = module.KA2ERSegmentLogic()
    outcome = {"raised": [], "reported": []}
    logic.onError = outcome["reported"].append
    try:
        logic.loadModel("", device="cpu")
        volume, _, _, centre = oblique_ball_volume(slicer)
        logic.setVolume(volume)
        logic.setTarget("")
        positive, _, _ = logic.promptNodes()
        try:
            click(logic, positive, centre)
        except AttributeError as error:
            outcome["raised"].append(str(error))
        assert len(outcome[surfaces]) == 1 and misspelled in outcome[surfaces][0]
        assert sum(map(len, outcome.values())) == 1
    finally:
        logic.worker.stop()


def test_server_mode_gives_the_local_segment_and_clear_errors(slicer):
    """The Logic against a real ``ka2er serve`` on loopback: the same clicks write the same segment as
    the local model; a wrong token and a stopped server each give one clear message."""
    from ka2er_core import load_bundle
    from ka2er_core.server.app import create_app
    from ka2er_core.server.serve import BackgroundServer

    token = "token-for-the-slicer-logic-test"
    server = BackgroundServer(create_app(load_bundle(), token, device="cpu"))
    module = importlib.import_module("KA2ERSegment")
    segments = {}
    try:
        for source in ("", server.url):
            logic = module.KA2ERSegmentLogic()
            logic.errors = []
            logic.onError = logic.errors.append
            logic.loadModel(source, token=token, device="cpu")
            volume, _, ball, centre = oblique_ball_volume(slicer)
            logic.setVolume(volume)
            segment_id = logic.setTarget("")
            positive, negative, _ = logic.promptNodes()
            click(logic, positive, centre)
            click(logic, negative, centre + np.array([0.0, 0.0, 12.0]), positive=False)
            logic.undo()
            logic.worker.wait()
            segments[source] = segment_array(logic, segment_id)
            assert logic.errors == [] and segments[source].any()
            logic.worker.stop()
        np.testing.assert_array_equal(segments[server.url], segments[""])

        logic = module.KA2ERSegmentLogic()
        logic.errors = []
        logic.onError = logic.errors.append
        logic.setVolume(oblique_ball_volume(slicer)[0])
        logic.loadModel(server.url, token="wrong-token-for-this-server", device="cpu")
        logic.worker.wait()
        assert len(logic.errors) == 1 and "refused the token" in logic.errors[0]
        logic.worker.stop()
    finally:
        server.stop()
    logic = module.KA2ERSegmentLogic()
    logic.errors = []
    logic.onError = logic.errors.append
    logic.setVolume(oblique_ball_volume(slicer)[0])
    logic.loadModel(server.url, token=token, device="cpu")
    logic.worker.wait()
    assert len(logic.errors) == 1 and logic.errors[0].startswith("server unreachable")
    logic.worker.stop()


def test_without_overlap_other_segments_are_background_to_a_click(slicer, logic):
    """A segment painted outside the module over half of the ball: with overlap off (a choice kept
    in the parameter node), a click on the ball gives the new segment the other half only, and
    the painted segment is not touched; with overlap on the new segment takes the painted half."""
    volume, _, ball, centre = oblique_ball_volume(slicer)
    logic.setVolume(volume)
    segmentation = logic.ensureSegmentation()
    painted = ball.astype(np.uint8)
    painted[:, :, :20] = 0
    other = segmentation.GetSegmentation().AddEmptySegment("", "Painted")
    slicer.util.updateSegmentBinaryLabelmapFromArray(painted, segmentation, other, volume)
    positive, _, _ = logic.promptNodes()
    made = {}
    for overlap in (False, True):
        logic.parameterNode.overlap = overlap
        made[overlap] = segment_id = logic.setTarget("")
        click(logic, positive, centre)
        mask = segment_array(logic, segment_id)
        shared = int((mask & painted).sum())
        assert logic.errors == [] and mask.sum() > 0.2 * ball.sum()
        assert shared == 0 if not overlap else shared > 0.5 * painted.sum()
        np.testing.assert_array_equal(segment_array(logic, other), painted)
    assert logic.parameterNode.parameterNode.GetParameter("overlap") == "True"

    kept = segment_array(logic, made[False])
    for removed in (other, made[True]):  # deleted in Slicer: no longer protected, nor targets
        segmentation.GetSegmentation().RemoveSegment(removed)
    logic.parameterNode.overlap = False
    segment_id = logic.setTarget("")
    click(logic, positive, centre)
    mask = segment_array(logic, segment_id)
    assert logic.errors == [] and (mask & painted).sum() > 0.5 * painted.sum()
    assert not (mask & kept).any() and made[True] not in logic.session.targets


def test_a_curve_is_a_scribble_and_a_closed_curve_a_lasso_with_undo(slicer, logic):
    from KA2ERSegmentLib.choices import PromptKind
    from ka2er_core.modelspace.strokes import lasso_voxels

    volume, ijk_to_ras, ball, centre = oblique_ball_volume(slicer)
    moved = np.eye(4)
    moved[:3, 3] = (4.0, -6.0, 9.0)
    volume.SetAndObserveTransformNodeID(linear_transform(slicer, moved).GetID())
    logic.setVolume(volume)
    segment_id = logic.setTarget("")
    logic.worker.wait()
    sent, add_scribble = [], logic.session.add_scribble
    logic.session.add_scribble = lambda points, positive=True: sent.append(
        (np.array(points), positive)) or add_scribble(points, positive)
    world = lambda ijk: (moved @ ijk_to_ras @ np.append(ijk, 1.0))[:3]  # noqa: E731

    scribble = logic.promptNode(PromptKind.POSITIVE_SCRIBBLE)
    path = [world(p) for p in ([12.0, 22.0, 15.0], [20.0, 24.0, 15.0], [28.0, 22.0, 15.0])]
    for point in path:
        scribble.AddControlPointWorld(list(point))
    logic.addCurve(scribble, True)
    logic.worker.wait()
    assert logic.errors == [] and len(sent) == 1 and sent[0][1] is True
    np.testing.assert_allclose(sent[0][0], path, atol=1e-9)  # world RAS, the transform applied
    after_scribble = segment_array(logic, segment_id)
    assert dice(after_scribble > 0, ball) > 0.5

    lasso = logic.promptNode(PromptKind.NEGATIVE_LASSO)
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    ring = [world([20 + 4 * np.cos(a), 22 + 4 * np.sin(a), 15.0]) for a in angles]
    for point in ring:
        lasso.AddControlPointWorld(list(point))
    logic.addCurve(lasso, False)
    logic.worker.wait()
    assert logic.errors == []
    region, filled = lasso_voxels(np.array(ring), logic.volume)
    after_lasso = segment_array(logic, segment_id)
    assert filled.sum() > 30 and after_scribble[region][filled].all()
    assert not after_lasso[region][filled].any()  # the drawn region is out of the segment

    logic.undo()
    logic.worker.wait()
    np.testing.assert_array_equal(segment_array(logic, segment_id), after_scribble)

    tilted = logic.promptNode(PromptKind.POSITIVE_LASSO)
    for point in ([14.0, 18.0, 8.0], [26.0, 18.0, 15.0], [20.0, 28.0, 22.0]):
        tilted.AddControlPointWorld(list(world(point)))
    logic.addCurve(tilted, True)
    logic.worker.wait()
    assert len(logic.errors) == 1 and "one slice" in logic.errors[0]
    assert tilted.GetNumberOfControlPoints() == 0  # the refused curve is cleared
    np.testing.assert_array_equal(segment_array(logic, segment_id), after_scribble)
    assert logic.session.undo_depth == 1
