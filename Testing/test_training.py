"""The shared training loop: two processes under torchrun (DDP, gloo), checkpoints that resume."""

import json
import os
import subprocess
import sys

import pytest

from ka2er_core.bundle import load_bundle
from ka2er_core.data.sample import write_sample_dataset


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    return write_sample_dataset(out, n_train=2, n_test=1, tasks=["Dataset003_CTPhantom"])[0]


def train(dataset, out, steps, processes=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    command = launcher + ["-m", "ka2er_core.cli", "train", "--dataset", str(dataset), "--out", str(out),
                          "--steps", str(steps), "--batch-size", "1"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_processes_under_torchrun_then_resume(phantom_dataset, tmp_path):
    out = tmp_path / "bundle"
    result = train(phantom_dataset, out, 2, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = load_bundle(out)
    assert bundle.meta["training"]["world_size"] == 2
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2

    resumed = train(phantom_dataset, out, 3)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "at step 2" in resumed.stderr
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3
