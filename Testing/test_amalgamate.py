"""KA2ER amalgamation training end to end on tiny phantoms: frozen experts, the student trains, the
student bundle runs alone in an InteractiveSession, checkpoints resume, DDP with 2 processes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ka2er_core import InteractiveSession
from ka2er_core.bundle import load_bundle, load_expert
from ka2er_core.data.msd import load_dataset
from ka2er_core.data.sample import write_sample_dataset
from ka2er_core.geometry import ijk_to_ras_points
from ka2er_core.io.checksum import sha256
from ka2er_core.modeling.amalgamation import AmalgamationLayer, match_expert_stages
from ka2er_core.training.amalgamate import (AmalgamatedStudent,
                                            AmalgamationSampler, AmalgamationStep, amalgamate,
                                            expert_grid, on_student_grid)
from ka2er_core.training.expert import train_expert
from ka2er_core.training.promptable import CropSampler, load_training_items, starting_model
from ka2er_core.volume import Grid

TASKS = ["Dataset003_CTPhantom", "Dataset004_MRPhantom"]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Two phantom tasks (CT, MR) and an expert for each, trained a few steps."""
    root = tmp_path_factory.mktemp("amalgamate")
    folders = write_sample_dataset(root / "data", n_train=2, n_test=1, tasks=TASKS)
    experts = [train_expert(folder, root / f"expert_{folder.name}", steps=3, batch_size=1)
               for folder in folders]
    return folders, experts


def run_cli(arguments, processes=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    return subprocess.run(launcher + ["-m", "ka2er_core.cli"] + arguments, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_on_student_grid_samples_the_shared_region():
    ramp = torch.arange(8.0).reshape(1, 1, 1, 1, 8).expand(1, 1, 8, 8, 8).contiguous()
    same = on_student_grid(ramp, (8, 8, 8), (1.0, 1.0, 1.0))
    torch.testing.assert_close(same, ramp)
    # The expert's region is twice the crop along i: the crop sees its central half.
    half = on_student_grid(ramp, (8, 8, 8), (0.5, 1.0, 1.0))[0, 0, 0, 0]
    torch.testing.assert_close(half, torch.linspace(1.75, 5.25, 8))


def test_expert_grid_shares_centre_and_covers_the_crop(tasks):
    expert = load_expert(tasks[1][0])
    crop = Grid((64, 64, 64), np.diag([1.5, 1.5, 1.5, 1.0]))
    crop.ijk_to_ras[:3, 3] = (-20.0, 5.0, 40.0)
    grid = expert_grid(crop, expert.plan)
    centre = lambda g: ijk_to_ras_points((np.asarray(g.shape[::-1]) - 1) / 2, g.ijk_to_ras)  # noqa: E731
    np.testing.assert_allclose(centre(grid), centre(crop), atol=1e-6)
    extent = np.asarray(grid.shape[::-1]) * grid.spacing
    assert np.all(extent >= 64 * 1.5 - 1e-6)
    assert np.all(grid.spacing >= np.maximum(expert.plan.spacing, 1.5) - 1e-9)
    stride = np.asarray(expert.plan.stage_factors[-1][::-1])
    assert np.all(np.asarray(grid.shape[::-1]) % stride == 0)


def test_gradients_reach_the_student_and_the_layer_but_not_the_experts(tasks):
    folders, expert_paths = tasks
    experts = [load_expert(path) for path in expert_paths]
    start = starting_model(None, None)
    model, normalization = start.model, start.normalization
    items, targets = load_training_items(folders, normalization)
    hidden = model.stages(torch.zeros(1, 1, 64, 64, 64))
    scales = model.layout.amalgamated  # the Swin backbone's 1/8, 1/16 and 1/32 stages
    expert_channels = [[e.plan.filters[i] for i in match_expert_stages((8, 16, 32), e.plan.stage_factors)]
                       for e in experts]
    layer = AmalgamationLayer([hidden[s].shape[1] for s in scales], expert_channels,
                              hidden=16, heads=2)
    step = AmalgamationStep(AmalgamatedStudent(model, layer), experts).train()
    before = [{k: v.clone() for k, v in e.state_dict().items()} for e in experts]
    sampler = AmalgamationSampler(CropSampler(items, targets, normalization, 64, 1.5, 4.0, 2), experts)
    loss, metrics = step(**sampler(0, np.random.default_rng(0)))
    loss.backward()
    assert torch.isfinite(loss) and 0 <= float(metrics["task_agnostic_weight"]) <= 1
    assert all(p.grad is None for e in experts for p in e.parameters())
    assert all(e.training is False for e in experts)
    student_grads = [p.grad for p in model.image_encoder.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in student_grads) and any(g.abs().sum() > 0 for g in student_grads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    for expert, state in zip(experts, before):  # forward in train mode changed no statistic
        for key, value in expert.state_dict().items():
            torch.testing.assert_close(value, state[key])


def test_the_student_bundle_runs_alone_and_training_resumes(tasks, tmp_path):
    folders, experts = tasks
    hashes = [sha256(path / next(iter(json.loads((path / "bundle.json").read_text())["sha256"])))
              for path in experts]
    out = tmp_path / "student"
    amalgamate(folders, experts, out, steps=2, batch_size=1, hidden=16, heads=2)
    bundle = load_bundle(out)
    assert bundle.kind == "student" and list(bundle.members) == ["general"]
    assert len(bundle.meta["training"]["experts"]) == 2
    fresh = starting_model(None, None).model  # the student alone: exactly the promptable model's weights
    assert set(bundle.default.model.state_dict()) == set(fresh.state_dict())
    for path, digest in zip(experts, hashes):
        assert sha256(path / next(iter(json.loads((path / "bundle.json").read_text())["sha256"]))) == digest

    case = load_dataset(folders[0]).test_cases[0]
    images, label = case.load()
    session = InteractiveSession(bundle, device="cpu")
    session.set_image(images[0])
    inside = np.argwhere(label.array == 1).mean(axis=0)[::-1]
    result = session.add_point(ijk_to_ras_points(inside, images[0].ijk_to_ras))
    assert session.mask.shape == images[0].shape and result.member == "general"

    result = run_cli(["amalgamate", "--dataset", str(folders[0]), "--dataset", str(folders[1]),
                      "--expert", str(experts[0]), "--expert", str(experts[1]), "--out", str(out),
                      "--steps", "3", "--batch-size", "1", "--hidden", "16", "--heads", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr and "at step 2" in result.stderr
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3


def test_two_processes_give_the_same_loss_curve_shape_and_one_checkpoint(tasks, tmp_path):
    folders, experts = tasks
    histories = {}
    for processes in (1, 2):
        out = tmp_path / f"student_{processes}"
        result = run_cli(["amalgamate", "--dataset", str(folders[0]), "--dataset", str(folders[1]),
                          "--expert", str(experts[0]), "--expert", str(experts[1]),
                          "--out", str(out), "--steps", "20", "--batch-size", "1", "--hidden", "16",
                          "--heads", "2", "--lr", "3e-3"], processes=processes)
        assert result.returncode == 0, result.stderr[-3000:]
        assert load_bundle(out).meta["training"]["world_size"] == processes
        assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [
            "model.safetensors", "optimizer.pt", "state.json"]
        histories[processes] = json.loads((out / "checkpoint" / "state.json").read_text())["history"]
    one, two = histories[1], histories[2]
    assert [h["step"] for h in one] == [h["step"] for h in two] == [10, 20]
    for history in (one, two):  # both fall, by a similar fraction
        assert history[-1]["loss"] < history[0]["loss"]
    drops = [1 - h[-1]["loss"] / h[0]["loss"] for h in (one, two)]
    assert 0.25 < drops[1] / drops[0] < 4, drops


def test_evaluate_compares_experts_and_students_in_one_table(tasks, tmp_path):
    folders, experts = tasks
    from ka2er_core.bundle import STUDENT_BUNDLE

    out = tmp_path / "evaluation"
    result = run_cli(["evaluate", "--bundle", str(experts[0]), "--bundle", str(experts[1]),
                      "--bundle", str(STUDENT_BUNDLE), "--dataset", str(folders[0]),
                      "--dataset", str(folders[1]), "--prompts", "3", "--max-cases", "1",
                      "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "comparison.json").read_text())
    comparison = saved["comparison"]
    assert comparison["methods"] == ["task experts", "demo"]
    labels = {name for folder in folders for name in load_dataset(folder).labels}
    assert {row["target"] for row in comparison["rows"]} <= labels
    assert comparison["shared_targets"] == len(comparison["rows"]) > 0
    for row in comparison["rows"]:  # an expert answers once, without prompts
        automatic = row["dice"]["task experts"]
        assert len(automatic) == 2 and automatic[0] == automatic[1]  # at 1 and 3 prompts
    assert {run["first"] for run in saved["reports"]["task experts"]["runs"]} == {"automatic"}
    for task, by_method in comparison["task_means"].items():  # each task's mean over its targets
        rows = [r for r in comparison["rows"] if r["task"] == task]
        assert by_method["demo"] == pytest.approx(np.mean([r["dice"]["demo"] for r in rows], axis=0))
    assert len(comparison["task_means"]) == 2
    table = (out / "comparison.md").read_text()
    assert "| task: target |" in table and table.count("| **mean, ") == 2
    assert (out / "comparison.png").stat().st_size > 0 and (out / "demo" / "report.json").exists()
