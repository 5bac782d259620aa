"""Task experts: nnU-Net-like planning, encoder features, training that resumes, bundles, automatic
segmentation on oblique volumes, and ``ka2er train-expert`` / ``ka2er segment``."""

import json
import shutil

import numpy as np
import pytest
import slicerio
import torch

from conftest import random_ijk_to_ras
from ka2er_core.bundle import BundleError, Expert, load_bundle, load_expert, save_bundle
from ka2er_core.cli import main
from ka2er_core.data.phantoms import ct_phantom
from ka2er_core.geometry import LPS_FROM_RAS, ijk_to_ras_points
from ka2er_core.inference import InteractiveSession
from ka2er_core.inference.automatic import segment_automatic, window_count
from ka2er_core.io import save_volume
from ka2er_core.modeling import ExpertPlan, PlanError, TaskExpert
from ka2er_core.training.expert import PatchSampler, PlanGridCase, train_expert
from ka2er_core.training.planning import (PATCH_VOXELS, canonical_spacing_and_shape, fingerprint,
                                          plan_expert)
from ka2er_core.volume import Volume

BALL = {"ball": 1}


def write_dataset(folder, subjects, channel, labels):
    """An nnU-Net v2 folder holding (image, label) Volumes as training cases."""
    for index, (image, label) in enumerate(subjects):
        save_volume(folder / "imagesTr" / f"case{index:03d}_0000.nii.gz", image)
        save_volume(folder / "labelsTr" / f"case{index:03d}.nii.gz", label)
    meta = {"name": folder.name, "channel_names": {"0": channel}, "labels": {"background": 0, **labels},
            "numTraining": len(subjects), "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def ball_subject(seed, shape, ijk_to_ras):
    """An MR-like image of a bright ball (radius 10-16 mm) in noise, and its label; shapes in RAS mm."""
    rng = np.random.default_rng(seed)
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")[::-1], axis=-1)
    ras = ijk_to_ras_points(ijk, ijk_to_ras)
    centre = ijk_to_ras_points((np.asarray(shape[::-1]) - 1) / 2, ijk_to_ras) + rng.uniform(-8, 8, 3)
    inside = np.linalg.norm(ras - centre, axis=-1) < rng.uniform(10, 16)
    image = np.where(inside, 300.0, 100.0) + rng.normal(0, 15, shape)
    return (Volume(image.astype(np.float32), ijk_to_ras),
            Volume(inside.astype(np.uint8), ijk_to_ras, dict(BALL)))


def oblique_ball(seed):
    """A ball subject on a rotated, flipped, anisotropic grid (different for every seed)."""
    matrix = random_ijk_to_ras(np.random.default_rng(seed), spacing=(1.7, 2.3, 2.9))
    return ball_subject(seed, (22, 30, 28), matrix)


@pytest.fixture(scope="module")
def ball_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "Dataset100_Ball"
    return write_dataset(folder, [oblique_ball(seed) for seed in range(6)], "MR", BALL)


@pytest.fixture(scope="module")
def trained(ball_dataset, tmp_path_factory):
    """An expert trained 60 steps on the ball dataset, and its progress messages."""
    out = tmp_path_factory.mktemp("expert") / "bundle"
    messages = []
    train_expert(ball_dataset, out, steps=60, batch_size=2, lr=1e-2, progress=messages.append)
    return out, messages


def tiny_plan(**changes):
    values = dict(task="t", labels={"a": 1, "b": 3}, spacing=(1.0, 1.0, 3.0), patch_size=(8, 32, 32),
                  kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
                  strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)), filters=(4, 8, 16, 16),
                  normalization={"kind": "mr", "low": -160.0, "high": 240.0, "clip": 5.0})
    return ExpertPlan(**{**values, **changes})


def test_anisotropic_ct_plan(tmp_path):
    spacing = (1.5, 1.5, 6.0)  # mm along i, j, k: k is 4x coarser
    subjects = [(s.image, s.label) for s in
                (ct_phantom(seed, shape=(14, 100, 100), spacing=spacing) for seed in (1, 2))]
    folder = write_dataset(tmp_path / "Dataset101_Aniso", subjects, "CT",
                           subjects[0][1].labels)
    fp = fingerprint(folder)
    assert fp["modality"] == "CT" and fp["spacing"] == pytest.approx(spacing)
    assert fp["foreground_intensity"]["p0.5"] < fp["foreground_intensity"]["p99.5"]
    plan = plan_expert(fp, "tiny")
    assert plan == plan_expert(folder, "tiny")
    assert plan.spacing == pytest.approx(spacing)
    assert plan.kernel_sizes[0] == (1, 3, 3) and plan.strides[1] == (1, 2, 2)  # k: no pooling first
    assert np.prod(plan.patch_size) <= PATCH_VOXELS["tiny"]
    total = plan.stage_factors[-1]
    assert all(p % t == 0 and p // t >= 4 for p, t in zip(plan.patch_size, total))
    assert plan.patch_size[0] <= 14  # never more than the image along k
    assert plan.normalization == {"kind": "ct", "low": fp["foreground_intensity"]["p0.5"],
                                  "high": fp["foreground_intensity"]["p99.5"], "clip": 5.0}
    full = plan_expert(fp, "full")
    assert full.filters[0] == 32 and max(full.filters) <= 320
    assert np.prod(full.patch_size) > np.prod(plan.patch_size)


def test_canonical_spacing_follows_the_axes_not_the_voxel_order():
    sagittal = np.zeros((4, 4))
    sagittal[:3, :3] = [[0, 0, -3.0], [0.5, 0, 0], [0, 0.7, 0]]  # i -> A, j -> S, k -> L
    sagittal[3, 3] = 1
    spacing, shape = canonical_spacing_and_shape(Volume(np.zeros((10, 20, 30), np.float32), sagittal))
    assert spacing.tolist() == [3.0, 0.5, 0.7]  # mm along R, A, S
    assert shape.tolist() == [20, 30, 10]  # along S, A, R


def test_plan_round_trip_and_clear_errors():
    plan = tiny_plan()
    assert ExpertPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert plan.num_classes == 3
    assert plan.stage_factors == [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]
    bad = [({"patch_size": [6, 32, 32]}, "patch_size"), ({"labels": {"a": 0}}, "labels"),
           ({"strides": [[2, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]}, "strides"),
           ({"filters": [4, 8]}, "kernel_sizes"), ({"normalization": {"kind": "pet"}}, "normalization"),
           ({"colour": 1}, "colour")]
    for change, field in bad:
        with pytest.raises(PlanError, match=rf"^{field}: "):
            ExpertPlan.from_dict({**plan.to_dict(), **change})
    values = plan.to_dict()
    del values["spacing"]
    with pytest.raises(PlanError, match="spacing: required field is missing"):
        ExpertPlan.from_dict(values)


def test_features_per_stage_without_the_decoder():
    torch.manual_seed(0)
    model = TaskExpert(tiny_plan()).eval()
    image = torch.randn(2, 1, 8, 32, 32)
    decoder_calls = []
    decoder = [*model.network.upsamples, model.network.output_block,
               *model.network.deep_supervision_heads]
    for module in decoder:
        module.register_forward_hook(lambda *_: decoder_calls.append(1))
    features = model.features(image)
    assert decoder_calls == []
    assert len(features) == len(model.plan.filters)
    for feature, channels, factor in zip(features, model.plan.filters, model.plan.stage_factors):
        assert tuple(feature.shape) == (2, channels, *(n // f for n, f in zip((8, 32, 32), factor)))
    assert model(image).shape == (2, 3, 8, 32, 32) and decoder_calls
    model.train()
    assert model(image).shape == (2, model.supervision_outputs, 3, 8, 32, 32)


def test_patches_forced_onto_foreground():
    classes = np.zeros((20, 40, 40), np.uint8)
    classes[2:4, 30:33, 1:3] = 2
    case = PlanGridCase(np.zeros(classes.shape, np.float32), classes,
                        {2: np.argwhere(classes == 2)})
    forced = PatchSampler([case], (8, 16, 16), batch_size=3, foreground_fraction=1.0)
    rng = np.random.default_rng(0)
    for step in range(5):
        batch = forced(step, rng)
        assert batch["images"].shape == (3, 1, 8, 16, 16) and batch["targets"].dtype == torch.int64
        assert all((target == 2).any() for target in batch["targets"])
    uniform = PatchSampler([case], (8, 16, 16), batch_size=8, foreground_fraction=0.0)
    assert not all((t == 2).any() for t in uniform(0, rng)["targets"])


def test_training_lowers_the_loss_then_resumes(trained, ball_dataset, tmp_path):
    out, messages = trained
    assert any(m.startswith("plan: ") for m in messages)
    history = json.loads((out / "checkpoint" / "state.json").read_text())["history"]
    assert [h["step"] for h in history] == [10, 20, 30, 40, 50, 60]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    bundle = load_bundle(out)
    assert bundle.kind == "expert" and bundle.meta["labels"] == ["ball"]
    assert bundle.meta["training"]["fingerprint"]["modality"] == "MR"

    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    resumed = []
    train_expert(ball_dataset, copy, steps=62, lr=1e-2, progress=resumed.append)
    assert any("resumed from" in m and "at step 60" in m for m in resumed)
    assert json.loads((copy / "checkpoint" / "state.json").read_text())["step"] == 62


def test_bundle_round_trip_and_a_changed_byte(tmp_path):
    torch.manual_seed(3)
    model = TaskExpert(tiny_plan()).eval()
    path = save_bundle(tmp_path / "bundle", Expert("t", model), kind="expert", labels=["a", "b"])
    loaded = load_bundle(path).default
    assert isinstance(loaded, Expert) and loaded.plan == model.plan
    assert isinstance(load_expert(path), TaskExpert)
    image = torch.randn(1, 1, 8, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(image), model(image), rtol=0, atol=0)
        for expected, actual in zip(model.features(image), loaded.model.features(image)):
            torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    with pytest.raises(BundleError, match="no promptable model"):
        InteractiveSession(load_bundle(path), device="cpu")

    meta = json.loads((path / "bundle.json").read_text())
    meta["members"]["t"]["architecture"]["plan"]["patch_size"] = [8, 30, 32]
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"members\.t\.architecture\.plan\.patch_size: .*multiple"):
        load_bundle(path)

    weights = path / "t.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"t\.safetensors: sha256: .*changed"):
        load_bundle(path)


def test_automatic_segmentation_of_an_oblique_volume(trained):
    out, _ = trained
    expert = load_bundle(out).default
    image, truth = oblique_ball(100)  # held out
    messages = []
    result = segment_automatic(expert, image, progress=messages.append)
    assert result.shape == image.shape and np.array_equal(result.ijk_to_ras, image.ijk_to_ras)
    assert result.array.dtype == np.uint8 and result.labels == BALL
    predicted, true = result.array == 1, truth.array == 1
    assert 2 * (predicted & true).sum() / (predicted.sum() + true.sum()) > 0.8
    assert messages[-1].startswith("segmented in")


def test_label_map_holds_the_plan_label_values():
    model = TaskExpert(tiny_plan()).eval()  # labels {"a": 1, "b": 3}: class 2 is value 3
    with torch.no_grad():
        model.network.output_block.conv.conv.bias.copy_(torch.tensor([0.0, 0.0, 100.0]))
    volume = Volume(np.zeros((6, 20, 18), np.float32), random_ijk_to_ras(np.random.default_rng(4)))
    result = segment_automatic(model, volume)
    assert np.unique(result.array).tolist() == [3] and result.labels == {"a": 1, "b": 3}


def test_window_count_matches_monai():
    from monai.inferers import sliding_window_inference

    calls = []
    image = torch.zeros(1, 1, 20, 33, 16)

    def predictor(patch):
        calls.append(patch.shape[0])
        return patch

    sliding_window_inference(image, (8, 16, 16), 1, predictor, overlap=0.5)
    assert window_count(image.shape[2:], (8, 16, 16)) == sum(calls)


def test_cli_train_expert_then_segment(ball_dataset, tmp_path, capsys):
    out = tmp_path / "expert"
    assert main(["train-expert", "--dataset", str(ball_dataset), "--out", str(out), "--steps", "2",
                 "--batch-size", "1"]) == 0
    assert "train-expert [" in capsys.readouterr().err
    image_path = tmp_path / "image.nii.gz"
    image = oblique_ball(101)[0]
    save_volume(image_path, image)
    seg = tmp_path / "ball.seg.nrrd"
    assert main(["segment", "--bundle", str(out), str(image_path), "--out", str(seg),
                 "--device", "cpu"]) == 0
    assert "ball: " in capsys.readouterr().out
    segmentation = slicerio.read_segmentation(str(seg))
    assert [s["name"] for s in segmentation["segments"]] == ["ball"]
    assert segmentation["voxels"].shape == image.shape[::-1]  # slicerio: (i, j, k)
    np.testing.assert_allclose(segmentation["ijkToLPS"], LPS_FROM_RAS @ image.ijk_to_ras, atol=1e-4)


def test_cli_bad_input_is_one_line(ball_dataset, tmp_path, capsys):
    image_path = tmp_path / "image.nii.gz"
    save_volume(image_path, ball_subject(5, (8, 8, 8), np.eye(4))[0])
    cases = [(["segment", "--bundle", str(tmp_path), str(image_path), "--out", "x.seg.nrrd"],
              "no bundle.json"),
             (["train-expert", "--dataset", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", "1"],
              "dataset.json")]
    for argv, problem in cases:
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ka2er: error: ") and problem in lines[0]


def test_segment_refuses_a_promptable_bundle(tmp_path, capsys):
    image_path = tmp_path / "image.nii.gz"
    save_volume(image_path, ball_subject(5, (8, 8, 8), np.eye(4))[0])
    assert main(["segment", "--bundle", str(load_bundle().path), str(image_path), "--out",
                 str(tmp_path / "x.seg.nrrd")]) == 2
    assert "needs prompts, not a task expert" in capsys.readouterr().err
