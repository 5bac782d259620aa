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


def test_target_weights_steer_which_targets_are_drawn(phantom_dataset):
    from collections import Counter

    import numpy as np

    from ka2er_core.cli import build_parser
    from ka2er_core.errors import DatasetError
    from ka2er_core.modeling.normalization import Normalization
    from ka2er_core.training.promptable import CropSampler, load_training_items

    normalization = Normalization("auto")
    items, targets = load_training_items([phantom_dataset], normalization,
                                         target_weights={"liver": 0, "lesion": 5})
    sampler = CropSampler(items, targets, normalization, 32, 3.0, 6.0, 1)
    rng = np.random.default_rng(0)
    drawn = Counter(sampler.sample(rng).target for _ in range(80))
    others = len([t for t in targets if t.name not in ("liver", "lesion")])
    assert drawn["liver"] == 0
    assert drawn["lesion"] / 80 > 0.5 * 5 / (5 + others)  # expected share 5 / (5 + others)
    assert set(drawn) - {"lesion"}  # the weight-1 targets are still drawn

    with pytest.raises(DatasetError, match="target_weights.*'white matter'"):
        load_training_items([phantom_dataset], normalization, target_weights={"white matter": 2})
    with pytest.raises(DatasetError, match="every target of"):
        load_training_items([phantom_dataset], normalization,
                            target_weights={t.name: 0 for t in targets})
    args = build_parser().parse_args(["train", "--dataset", "d", "--out", "o",
                                      "--target-weight", "white matter=3"])
    assert args.target_weight == [("white matter", 3.0)]
    gate_args = build_parser().parse_args(["train-gate", "--general", "g", "--member", "m",
                                           "--dataset", "d", "--out", "o",
                                           "--target-weight", "liver=2", "--target-weight", "spine=0"])
    assert gate_args.target_weight == [("liver", 2.0), ("spine", 0.0)]
    for bad in ("white matter", "liver=-1", "=2", "liver=x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["finetune", "--bundle", "b", "--dataset", "d", "--out", "o",
                                       "--target-weight", bad])
