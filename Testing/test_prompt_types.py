"""A bundle says which prompts it takes, and everything honours it: a points-only model (an imported
SAM-Med3D) refuses boxes in one line, `/capabilities` lists its prompts, and `ka2er evaluate
--first auto` and the demo start its targets with a click."""

import numpy as np
import pytest
import torch

from importer_fixtures import TINY, write_sam_med3d_checkpoint
from ka2er_core.bundle import STUDENT_BUNDLE, load_bundle
from ka2er_core.bundle.registry import prompt_types
from ka2er_core.data.phantoms import ct_phantom
from ka2er_core.data.sample import write_sample_dataset
from ka2er_core.errors import PromptError
from ka2er_core.evaluation.report import evaluate_bundle
from ka2er_core.geometry import ijk_to_ras_points
from ka2er_core.importers.sam_med3d import import_sam_med3d
from ka2er_core.inference import InteractiveSession
from ka2er_core.modeling.sam_med3d import SamMed3D


@pytest.fixture(scope="module")
def points_only(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sam")
    checkpoint = write_sam_med3d_checkpoint(folder / "tiny.pth", SamMed3D(TINY).eval())
    return import_sam_med3d(checkpoint, folder / "bundle", progress=lambda _: None, config=TINY)


def test_bundles_say_which_prompts_they_take(points_only):
    both = ("point", "box", "scribble", "lasso")  # scribbles and lassos go as points
    assert prompt_types(load_bundle()) == both  # read off bundle.json, nothing loaded
    assert prompt_types(load_bundle(STUDENT_BUNDLE)) == both
    assert prompt_types(load_bundle(points_only)) == ("point", "scribble", "lasso")


def test_a_points_only_model_refuses_a_box_and_keeps_the_mask(points_only):
    session = InteractiveSession(load_bundle(points_only), device="cpu")
    subject = ct_phantom(10000, shape=(24, 40, 40), spacing=(3.0, 3.0, 4.0))
    session.set_image(subject.image)
    centre = ijk_to_ras_points(np.array([20.0, 20.0, 12.0]), subject.image.ijk_to_ras)
    session.add_point(centre)
    before = session.mask.copy()
    with pytest.raises(PromptError, match="points only") as refused:
        session.add_box(centre - 10, centre + 10)
    assert refused.value.field == "box"
    np.testing.assert_array_equal(session.mask, before)
    assert session.undo_depth == 1


def test_evaluate_and_serve_honour_the_prompts_a_model_takes(points_only, tmp_path):
    from ka2er_core.server.app import create_app
    from ka2er_core.server.client import RemoteSession
    from ka2er_core.server.serve import BackgroundServer

    folder = write_sample_dataset(tmp_path, n_train=1, n_test=1, tasks=["Dataset003_CTPhantom"])[0]
    report = evaluate_bundle(points_only, [folder], 2, first="auto", device="cpu")
    assert report["runs"] and {run["first"] for run in report["runs"]} == {"click"}
    with pytest.raises(PromptError, match="--first click or auto"):
        evaluate_bundle(points_only, [folder], 2, first="box", device="cpu")
    boxes = evaluate_bundle(STUDENT_BUNDLE, [folder], 1, first="auto", device="cpu")
    assert "box" in {run["first"] for run in boxes["runs"]}

    token = "p" * 32
    server = BackgroundServer(create_app(load_bundle(points_only), token, device="cpu"))
    try:
        assert RemoteSession(server.url, token=token).prompt_types == ("point", "scribble", "lasso")
    finally:
        server.stop()


def test_the_demo_starts_with_a_click_for_a_points_only_model(points_only, tmp_path):
    from ka2er_core.demo import run_demo

    report = run_demo(tmp_path / "demo", progress=lambda _: None, bundle=points_only, device="cpu")
    assert report["targets"]["brain"]["first"] == "click"
    assert report["targets"]["brain"]["prompts"][0] == "+"
