"""Bundles: safetensors weights with a checked sha256, the same outputs after a round trip."""

import json

import pytest
import torch

from ka2er_core.bundle import BundleError, Segmenter, load_bundle, save_bundle
from ka2er_core.errors import UnreadableFileError
from ka2er_core.modeling import ModelConfig, PromptableSegmenter
from ka2er_core.modeling.normalization import Normalization


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(1)
    model = PromptableSegmenter(ModelConfig.tiny()).eval()
    path = save_bundle(tmp_path_factory.mktemp("b") / "bundle",
                       Segmenter("general", model, Normalization("ct"), 1.5, 4.0),
                       labels=["liver"], training={"steps": 1})
    return path, model


def test_round_trip_gives_the_same_predictions(saved):
    path, model = saved
    bundle = load_bundle(path)
    assert bundle.kind == "student" and bundle.meta["labels"] == ["liver"]
    loaded = bundle.default
    assert loaded.normalization.kind == "ct" and loaded.base_spacing == 1.5
    image = torch.randn(1, 1, 64, 64, 64)
    coords, labels = torch.tensor([[[30.0, 31.0, 32.0]]]), torch.tensor([[1]])
    with torch.inference_mode():
        expected, _ = model(image, coords, labels)
        actual, _ = loaded.model(image, coords, labels)
    torch.testing.assert_close(actual, expected)


def test_one_changed_byte_is_caught_and_named(saved, tmp_path):
    path, _ = saved
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in path.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    weights = copy / "general.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"general\.safetensors: sha256: .*changed"):
        load_bundle(copy)


def test_missing_or_wrong_manifest(tmp_path, saved):
    with pytest.raises(UnreadableFileError, match="no bundle.json"):
        load_bundle(tmp_path)
    path, _ = saved
    meta = json.loads((path / "bundle.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format_version"):
        load_bundle(tmp_path)
