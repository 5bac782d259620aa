"""Importers: a SAM-Med3D checkpoint and an nnU-Net v2 model folder become ka2er bundles.

SAM-Med3D: a full-size synthetic checkpoint (turbo's key names and shapes, random weights) imports,
loads and answers a click; renamed keys, wrong shapes, non-state-dicts and pickled objects are refused
with errors naming them. nnU-Net: a small PlainConvUNet (importer_fixtures.ReferenceUNet, its forward
with nnU-Net's module names) gives the same logits as the imported expert.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import random_ijk_to_ras
from importer_fixtures import (ARCH, INTENSITY, PATCH, TINY, ReferenceUNet, randomised, to_network,
                               to_ours, write_model_folder, write_sam_med3d_checkpoint)
from ka2er_core import Volume
from ka2er_core.bundle import load_bundle, load_expert
from ka2er_core.errors import PromptError
from ka2er_core.geometry import ijk_to_ras_points
from ka2er_core.importers import CheckpointError, import_nnunet, import_sam_med3d
from ka2er_core.importers.sam_med3d import state_dict_of
from ka2er_core.inference import InteractiveSession
from ka2er_core.modeling.expert import NnUNetExpert
from ka2er_core.modeling.normalization import Normalization
from ka2er_core.modeling.prompt_encoder import BOX_HIGH, BOX_LOW, POSITIVE
from ka2er_core.modeling.sam_med3d import GridAttention, SamMed3D, SamMed3DConfig


# ---- SAM-Med3D ----

@pytest.fixture
def turbo(tmp_path):
    """A training checkpoint shaped like sam_med3d_turbo.pth (weights plus what train.py saves next
    to them); the 400 MB of files made from it are deleted afterwards."""
    torch.manual_seed(0)
    model = SamMed3D(SamMed3DConfig()).eval()
    path = write_sam_med3d_checkpoint(tmp_path / "sam" / "sam_med3d_turbo.pth", model)
    yield path, model
    shutil.rmtree(path.parent)


def light_state() -> dict:
    """Turbo's key names and shapes as views of one small storage (the saved file stays small)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in SamMed3D(SamMed3DConfig()).state_dict().items()}
    base = torch.zeros(max(s.numel() for s in shapes.values()))
    return {k: base[:s.numel()].view(s) for k, s in shapes.items()}


def test_sam_med3d_checkpoint_imports_loads_and_answers_a_click(turbo, rng):
    path, model = turbo
    lines = []
    out = import_sam_med3d(path, path.parent / "bundle", progress=lines.append)
    assert (out / "bundle.json").exists() and len(lines) == 2
    bundle = load_bundle(out)
    member = bundle.default
    assert bundle.kind == "student" and member.name == "general" and member.crop_size == 128
    assert isinstance(member.model, SamMed3D) and member.base_spacing == member.max_spacing == 1.5
    assert member.normalization.kind == "mr"
    assert bundle.meta["members"]["general"]["architecture"]["type"] == "sam_med3d"
    name = "image_encoder.blocks.2.attn.rel_pos_d"
    torch.testing.assert_close(member.model.state_dict()[name], model.state_dict()[name])

    shape = (30, 36, 34)
    volume = Volume(rng.normal(100, 20, shape).astype(np.float32),
                    random_ijk_to_ras(rng, spacing=(1.1, 1.4, 2.0)))
    session = InteractiveSession(bundle, device="cpu")
    session.set_image(volume)
    centre = ijk_to_ras_points(np.array(shape[::-1]) / 2, volume.ijk_to_ras)
    result = session.add_point(centre, positive=True)
    assert session.mask.shape == shape and session.mask.dtype == np.uint8
    assert result.member == "general" and np.isfinite(result.score)


def test_bare_state_dict_or_training_checkpoint():
    state = {"a": torch.zeros(1)}
    assert state_dict_of(state, Path("x")) is state
    assert state_dict_of({"model_state_dict": state, "epoch": 3}, Path("x")) is state


@pytest.mark.parametrize("change, names", [
    ("rename", ["image_encoder.blocks.3.attn.qkv.weight", "image_encoder.blocks.3.attn.qkv_w.weight"]),
    ("reshape", ["mask_decoder.iou_token.weight: expected (1, 384), found (2, 384)"]),
])
def test_a_renamed_or_misshaped_key_is_named(tmp_path, change, names):
    state = light_state()
    if change == "rename":
        state["image_encoder.blocks.3.attn.qkv_w.weight"] = state.pop(names[0])
    else:
        state["mask_decoder.iou_token.weight"] = torch.zeros(2, 384)
    path = tmp_path / "bad.pth"
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(CheckpointError) as caught:
        import_sam_med3d(path, tmp_path / "out", progress=lambda line: None)
    assert all(name in str(caught.value) for name in names) and str(path) in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ([1, 2, 3], "found a list"),
    ({"epoch": 3, "state_dict": {"w": 1}}, r"found a dict with keys \['epoch', 'state_dict'\]"),
])
def test_a_checkpoint_without_a_state_dict_is_refused(tmp_path, content, message):
    path = tmp_path / "other.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        import_sam_med3d(path, tmp_path / "out", progress=lambda line: None)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable PyTorch checkpoint"):
        import_sam_med3d(tmp_path / "junk.pth", tmp_path / "out", progress=lambda line: None)


class Opaque:
    """A custom class: unpickling it means importing and building arbitrary Python objects."""


class Payload:
    """A pickled object that would run code (create a file) when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("make, needs", [(lambda marker: Opaque(), r"`\S*Opaque`"),
                                         (Payload, r"`\S*open`")])
def test_a_pickled_object_is_refused_not_run(tmp_path, make, needs):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"w": torch.zeros(1)}, "extra": make(marker)}, path)
    with pytest.raises(CheckpointError, match=f"evil.pth: refused: unpickling it needs {needs}"):
        import_sam_med3d(path, tmp_path / "out", progress=lambda line: None)
    assert not marker.exists()


def test_boxes_are_refused_points_decode():
    model = SamMed3D(TINY).eval()
    embedding = model.embed(torch.randn(1, 1, 32, 32, 32))
    coords = torch.tensor([[[10.0, 12.0, 14.0], [20.0, 22.0, 24.0]]])
    with pytest.raises(PromptError, match="no box embeddings"):
        model.decode(embedding, coords, torch.tensor([[BOX_LOW, BOX_HIGH]]))
    logits, iou = model.decode(embedding, coords[:, :1], torch.tensor([[POSITIVE]]),
                               torch.ones(1, 1, 32, 32, 32))
    assert logits.shape == (1, 1, 32, 32, 32) and iou.shape == (1,)


def test_window_attention_equals_zero_padding_the_window():
    """SAM-Med3D pads a 4^3 grid to its 6^3 window with zero tokens: same as computing real queries
    only against bias keys and values, including SAM-Med3D's relative positions."""
    torch.manual_seed(0)
    attention = GridAttention(16, 2, 6)
    for p in attention.parameters():
        p.data.normal_(0, 0.5)
    x = torch.randn(1, 4, 4, 4, 16)
    padded = nn.functional.pad(x, (0, 0, 0, 2, 0, 2, 0, 2))
    full = GridAttention(16, 2, 6)
    full.load_state_dict(attention.state_dict())
    expected = full(padded)[:, :4, :4, :4]  # every query of the window, padding included
    torch.testing.assert_close(attention(x), expected, rtol=1e-4, atol=1e-5)


# ---- nnU-Net ----

@pytest.mark.parametrize("legacy", [False, True])
def test_nnunet_expert_equals_plain_conv_unet(tmp_path, legacy):
    reference = randomised(ReferenceUNet(ARCH, 3))
    write_model_folder(tmp_path / "model", reference, "ZScoreNormalization", legacy)
    out = import_nnunet(tmp_path / "model", tmp_path / "bundle", progress=lambda line: None)
    bundle = load_bundle(out)
    expert = bundle.default
    plan = expert.plan
    assert bundle.kind == "expert" and isinstance(expert.model, NnUNetExpert)
    assert list(plan.labels.items()) == [("liver", 1), ("tumour", 2)] and plan.task == "Dataset042_Toy"
    assert plan.patch_size == (32, 24, 16) and plan.spacing == (3.0, 0.9, 0.8)  # (k, j, i), (i, j, k)
    assert plan.kernel_sizes[0] == (3, 3, 1) and plan.normalization["kind"] == "mr"
    assert bundle.meta["training"]["inference_allowed_mirroring_axes"] == [0, 1, 2]
    x = torch.randn(1, 1, *PATCH)
    with torch.inference_mode():
        expected = reference(x)
        actual = to_network(load_expert(out)(to_ours(x)))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_ct_normalisation_folds_into_the_first_convolution(tmp_path, rng):
    """nnU-Net's CT scheme (clip to p0.5/p99.5, then z-score with the foreground mean and sd) against
    our CT window: equal outputs when the mean is the window's centre, as here."""
    reference = randomised(ReferenceUNet(ARCH, 3))
    write_model_folder(tmp_path / "model", reference, "CTNormalization")
    expert = load_expert(import_nnunet(tmp_path / "model", tmp_path / "bundle", progress=lambda line: None))
    hu = rng.normal(100, 300, PATCH).astype(np.float32)
    theirs = (np.clip(hu, -200, 400) - INTENSITY["mean"]) / INTENSITY["std"]
    normalization = Normalization(**expert.plan.normalization)
    ours = Normalization.apply(hu, normalization.statistics(hu))
    assert normalization.kind == "ct" and ours.min() == -1 and ours.max() == 1
    with torch.inference_mode():
        expected = reference(torch.from_numpy(theirs)[None, None])
        actual = to_network(expert(to_ours(torch.from_numpy(ours)[None, None])))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_missing_plans_or_fold_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"plans\.json: missing"):
        import_nnunet(tmp_path, tmp_path / "out", progress=lambda line: None)
    write_model_folder(tmp_path / "model", ReferenceUNet(ARCH, 3), "ZScoreNormalization")
    with pytest.raises(CheckpointError, match=r"fold_0.checkpoint_final\.pth: no such file \(folds here: "
                                              r"fold_all\)"):
        import_nnunet(tmp_path / "model", tmp_path / "out", fold="0", progress=lambda line: None)
