"""The module's Logic against the vtk-based Slicer stand-in, with the real engine and shipped model:
markups to RAS prompts (SimpleITK as the geometry reference), changed regions written in the volume's
geometry, undo mirrored in the segment, other segments untouched, failures leave the scene as it was.
"""

import importlib
import shutil
import sys
import tomllib
import types
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
    positive, _, _ = logic.promptNodes()
    local = centre + np.array([1.3, -2.1, 0.7])
    world = (moved @ np.append(local, 1.0))[:3]
    click(logic, positive, world)
    assert logic.errors == []
    prompt = logic.session.targets[segment_id].prompts[-1].low
    voxel = np.round(ras_to_ijk(prompt, logic.session.volume.ijk_to_ras)).astype(int)
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
    dice = 2 * (first & ball).sum() / (first.sum() + ball.sum())
    assert dice > 0.5, dice
    click(logic, negative, centre + np.array([0.0, 0.0, 12.0]), positive=False)
    assert not np.array_equal(segment_array(logic, segment_id), first)
    assert logic.results[-1].region is not None

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
    corrected = segment_array(logic, existing)

    def dice(mask):
        return 2 * (mask & ball).sum() / (mask.sum() + ball.sum())

    assert dice(corrected) > dice(damaged)


def volume_matrix(volume) -> np.ndarray:
    from KA2ERSegmentLib.geometry import ijk_to_ras_local

    return ijk_to_ras_local(volume)


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
    written = segment_array(logic, segment_id)
    assert logic.errors == []
    assert 2 * (written & ball).sum() / (written.sum() + ball.sum()) > 0.5


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


def test_dependencies_are_installed_once_with_consent(slicer, monkeypatch):
    from KA2ERSegmentLib import dependencies

    monkeypatch.setitem(dependencies.REQUIREMENTS, "ka2er_not_installed", "ka2er-not-installed>=1")
    asked, installed = [], []
    declining = dependencies.DependencyInstaller(lambda text: asked.append(text) or False,
                                                 installed.append)
    assert declining.ensure() is False and declining.ensure() is False
    assert len(asked) == 1 and "ka2er-not-installed>=1" in asked[0] and installed == []

    agreeing = dependencies.DependencyInstaller(lambda text: True, installed.append)
    with pytest.raises(RuntimeError, match="still missing after installing: ka2er_not_installed"):
        agreeing.ensure()
    assert installed == ["ka2er-not-installed>=1"]  # only what is missing


def test_a_server_session_does_not_ask_for_torch(slicer, monkeypatch):
    from KA2ERSegmentLib import dependencies

    find_spec = dependencies.importlib.util.find_spec
    monkeypatch.setattr(dependencies.importlib.util, "find_spec",
                        lambda name: None if name in ("torch", "monai") else find_spec(name))
    asked = []
    installer = dependencies.DependencyInstaller(lambda text: asked.append(text) or False, print)
    assert installer.ensure(model=False) is True and asked == []
    assert installer.ensure() is False and "torch" in asked[0] and "monai" in asked[0]


def test_the_module_requires_what_pyproject_requires():
    sys.path.insert(0, str(MODULE))
    try:
        from KA2ERSegmentLib.dependencies import REQUIREMENTS
    finally:
        sys.path.remove(str(MODULE))
    pyproject = tomllib.loads((MODULE.parent / "pyproject.toml").read_text())
    assert sorted(REQUIREMENTS.values()) == sorted(pyproject["project"]["dependencies"])


@pytest.mark.parametrize("file, correct, misspelled", [
    ("KA2ERSegmentLib/geometry.py", "GetNthControlPointPositionWorld", "GetNthControlPointWorldPosition"),
    ("KA2ERSegmentLib/segments.py", "SetBinaryLabelmapToSegment", "SetBinaryLabelMapToSegment"),
])
def test_a_misspelled_slicer_method_in_the_module_fails_these_tests(slicer, tmp_path, monkeypatch,
                                                                    file, correct, misspelled):
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
    errors = []
    logic.onError = errors.append
    try:
        logic.loadModel("", device="cpu")
        volume, _, _, centre = oblique_ball_volume(slicer)
        logic.setVolume(volume)
        logic.setTarget("")
        positive, _, _ = logic.promptNodes()
        try:
            click(logic, positive, centre)
        except AttributeError as error:  # raised at once (the prompt) ...
            errors.append(str(error))
        assert len(errors) == 1 and misspelled in errors[0]  # ... or reported (the write)
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
