"""Bring your own models (issue 23): an imported SAM-Med3D and an imported nnU-Net v2 expert go
through every command, each run as a user runs it (a ``ka2er`` subprocess): import -> finetune ->
train-gate (the import as the general model, the fine-tune as member) -> a session routes a click ->
amalgamate (the import as the KA2ER student, the nnU-Net as expert) -> evaluate (``--first auto``)
-> serve + RemoteSession click -> demo ``--bundle``.

The SAM-Med3D checkpoint has SAM-Med3D's architecture and key names with random weights, at a
reduced width (:data:`SMALL`; the importer reads the sizes off the weights), so that the chain runs
in about a minute on two CPU cores.
"""

import dataclasses
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from importer_fixtures import ARCH, TINY, ReferenceUNet, randomised, write_model_folder, \
    write_sam_med3d_checkpoint
from ka2er_core.bundle import load_bundle
from ka2er_core.data.sample import write_sample_dataset
from ka2er_core.geometry import ijk_to_ras_points
from ka2er_core.io import load_volume
from ka2er_core.modeling.sam_med3d import SamMed3D, SamMed3DConfig
from ka2er_core.modelspace.clicks import component_centre

SMALL = dataclasses.replace(TINY, decoder_heads=6)
"""SAM-Med3D's layout on 32^3 crops (8^3 patches -> 4^3 tokens, 24 wide, 2 blocks); 6 decoder heads,
what the importer infers for a 24-wide decoder (heads leave no trace in the weights)."""
CT = "Dataset003_CTPhantom"


def ka2er(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``ka2er ARGS`` in a subprocess; it must exit 0."""
    done = subprocess.run([sys.executable, "-m", "ka2er_core.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (args[:2], done.stderr[-3000:])
    assert "Traceback" not in done.stderr
    return done


def architecture(bundle: Path, member: str = "general") -> SamMed3DConfig:
    """The SAM-Med3D sizes a bundle's member records in bundle.json."""
    entry = json.loads((bundle / "bundle.json").read_text())["members"][member]["architecture"]
    assert entry["type"] == "sam_med3d"
    return SamMed3DConfig.from_dict(entry)


def changed(a: Path, b: Path) -> bool:
    """Whether two single-member bundles' weights differ."""
    first, second = load_file(a / "general.safetensors"), load_file(b / "general.safetensors")
    assert first.keys() == second.keys()
    return any(not torch.equal(first[k], second[k]) for k in first)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def organ_click(folder: Path) -> tuple:
    """The first test case's image and the RAS centre of its largest liver component."""
    image = load_volume(next((folder / "imagesTs").glob("*.nii.gz")))
    label = load_volume(next((folder / "labelsTs").glob("*.nii.gz")))
    kji, _ = component_centre(label.array == 1)
    return image, ijk_to_ras_points(kji[::-1].astype(float), image.ijk_to_ras)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The imported SAM-Med3D and the CT phantom dataset (2 training cases, 1 held out)."""
    root = tmp_path_factory.mktemp("byo")
    torch.manual_seed(0)
    checkpoint = write_sam_med3d_checkpoint(root / "sam_med3d_small.pth", SamMed3D(SMALL))
    done = ka2er("bundle", "import-sam-med3d", checkpoint, "--out", root / "sam")
    assert done.stdout.strip().splitlines()[-1] == str(root / "sam")
    folder = write_sample_dataset(root / "data", n_train=2, n_test=1, tasks=[CT])[0]
    return root, root / "sam", folder


def test_an_imported_sam_med3d_and_nnunet_expert_work_in_every_command(imported):
    root, sam, folder = imported
    assert architecture(sam) == SMALL  # sizes read off the weights

    # fine-tune the points-only model: click-first prompts
    ka2er("finetune", "--bundle", sam, "--dataset", folder, "--out", root / "ct", "--steps", 2)
    member = json.loads((root / "ct" / "bundle.json").read_text())
    assert architecture(root / "ct") == SMALL and changed(sam, root / "ct")
    assert "click-first" in member["training"]["method"] and "liver" in member["labels"]

    # the import as the general model of a moe, the fine-tune as its member
    ka2er("train-gate", "--general", sam, "--member", root / "ct", "--dataset", folder,
          "--out", root / "moe", "--steps", 2, "--validation-crops", 2)
    gate = json.loads((root / "moe" / "bundle.json").read_text())["gate"]
    assert gate["members"] == ["general", "ct"]
    assert gate["stage_channels"] == [SMALL.encoder_dim] and gate["dim"] == SMALL.dim
    assert gate["prompt_stages"] == [0] and gate["fine_channels"] == 0

    # a session routes a click: the loaded gate reads the ViT embedding
    from ka2er_core.inference import InteractiveSession

    moe = load_bundle(root / "moe")
    seen = []
    forward = moe.gate.forward
    moe.gate.forward = lambda features: seen.append(tuple(features.shape)) or forward(features)
    image, click = organ_click(folder)
    session = InteractiveSession(moe, device="cpu")
    session.set_image(image)
    result = session.add_point(click)
    assert seen == [(1, 2 * SMALL.encoder_dim + 4 * SMALL.dim + SMALL.encoder_dim)]
    assert result.member in ("general", "ct") and session.mask.shape == image.array.shape

    # the import as the KA2ER student of an imported nnU-Net expert
    write_model_folder(root / "nnunet", randomised(ReferenceUNet(ARCH, 3)), "CTNormalization")
    ka2er("bundle", "import-nnunet", root / "nnunet", "--out", root / "expert")
    ka2er("amalgamate", "--init", sam, "--expert", root / "expert", "--dataset", folder,
          "--out", root / "student", "--steps", 2, "--hidden", 8, "--heads", 2)
    training = json.loads((root / "student" / "bundle.json").read_text())["training"]
    assert architecture(root / "student") == SMALL and changed(sam, root / "student")
    assert training["amalgamated_scales"] == 1  # the ViT's one token grid ...
    assert training["amalgamation_sources"] == ARCH["n_stages"]  # ... takes every expert stage
    student = load_bundle(root / "student").default.model  # the bundle round trip
    saved = load_file(root / "student" / "general.safetensors")
    assert isinstance(student, SamMed3D)
    assert all(torch.equal(value, saved[name]) for name, value in student.state_dict().items())

    # evaluate with the default first prompt: a click for a points-only model
    ka2er("evaluate", "--bundle", root / "student", "--dataset", folder, "--prompts", 2,
          "--out", root / "evaluation")
    report = json.loads((root / "evaluation" / "report.json").read_text())
    assert report["runs"] and {run["first"] for run in report["runs"]} == {"click"}

    # serve the moe; a remote session clicks
    from ka2er_core.server.client import RemoteSession

    token = root / "token"
    token.write_text("t" * 40)
    token.chmod(0o600)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ka2er_core.cli", "serve", "--bundle",
                               str(root / "moe"), "--port", str(port), "--token-file", str(token),
                               "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer /health in 60 s"
                time.sleep(0.3)
        remote = RemoteSession(url, token="t" * 40)
        assert remote.prompt_types == ("point", "scribble", "lasso")
        remote.set_image(image)
        answer = remote.add_point(click)
        assert answer.member in ("general", "ct") and remote.mask.shape == image.array.shape
    finally:
        server.terminate()
        server.wait(timeout=30)

    # the demo on a points-only bundle starts its targets with a click
    ka2er("demo", "--bundle", root / "student", "--out", root / "demo", "--device", "cpu")
    demo = json.loads((root / "demo" / "report.json").read_text())
    assert {target["first"] for target in demo["targets"].values()} == {"click"}
    assert (root / "demo" / "result.seg.nrrd").is_file()


def test_a_points_only_model_trains_on_clicks_and_names_what_no_click_can_start(imported):
    from ka2er_core.errors import DatasetError
    from ka2er_core.modeling.normalization import Normalization
    from ka2er_core.modeling.prompt_encoder import PAD, POSITIVE
    from ka2er_core.training.promptable import CropSampler, TargetSpec, load_training_items

    _, _, folder = imported
    items, targets = load_training_items([folder], Normalization("ct"))
    rng = np.random.default_rng(0)
    points = CropSampler(items, targets, Normalization("ct"), 32, 1.5, 1.5, 4, max_extra_clicks=0,
                         correct_probability=0, prompt_types=("point",))
    both = CropSampler(items, targets, Normalization("ct"), 32, 1.5, 1.5, 4, max_extra_clicks=0,
                       correct_probability=0)
    kinds = {kind for _ in range(6) for kind in points(0, rng)["labels"].ravel().tolist()}
    assert kinds <= {POSITIVE, PAD} and POSITIVE in kinds
    assert any((both(0, rng)["labels"] > POSITIVE).any() for _ in range(6))  # boxes, otherwise

    region = [TargetSpec(CT, "abdomen", (1, 2, 3))] + [
        dataclasses.replace(t, weight=0.0) for t in targets if t.values[0] in (1, 2, 3)]
    CropSampler(items, region, Normalization("ct"), 32, 1.5, 1.5, 2)  # a box names the region
    with pytest.raises(DatasetError, match="points only"):
        CropSampler(items, region, Normalization("ct"), 32, 1.5, 1.5, 2, prompt_types=("point",))
