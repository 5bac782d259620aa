"""Training the generalist on the data engine: batches from DataLoader workers, resumable, a bundle the
session loads."""

import json

import numpy as np
import torch
from safetensors.torch import load_file

from ka2er_core.bundle import load_bundle
from ka2er_core.data.engine import EngineConfig
from ka2er_core.data.phantoms import ct_phantom
from ka2er_core.geometry import ijk_box_to_ras
from ka2er_core.inference import InteractiveSession
from ka2er_core.training.generalist import GeneralistConfig, train_generalist

FAST_ENGINE = EngineConfig(sources={"shapes": 1.0, "phantoms": 1.0})


def test_generalist_trains_in_a_worker_resumes_and_loads(tmp_path):
    out = tmp_path / "generalist"
    config = GeneralistConfig(steps=2, batch_size=1, workers=1, checkpoint_every=1, snapshot_every=2)
    train_generalist(out, config, base_spacing=2.0, max_spacing=4.0, engine_config=FAST_ENGINE)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and len(state["history"]) == 1
    snapshot = load_file(str(out / "checkpoint" / "snapshots" / "step-000002.safetensors"))
    first = load_file(str(out / "general.safetensors"))
    assert all(torch.equal(snapshot[k], first[k]) for k in first)

    # Resume: two more steps from the checkpoint, not from scratch.
    train_generalist(out, GeneralistConfig(steps=4, batch_size=1, workers=0, checkpoint_every=1),
                     base_spacing=2.0, max_spacing=4.0, engine_config=FAST_ENGINE)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and len(state["history"]) == 1 + 1
    second = load_file(str(out / "general.safetensors"))
    assert any(not torch.equal(first[k], second[k]) for k in first)

    bundle = load_bundle(out)
    assert bundle.default.base_spacing == 2.0
    assert "generalist" in json.loads((out / "bundle.json").read_text())["training"]["method"]
    session = InteractiveSession(bundle, device="cpu")
    subject = ct_phantom(10000, shape=(24, 40, 40), spacing=(3.0, 3.0, 4.0))
    session.set_image(subject.image)
    liver = subject.label.array == subject.label.labels["liver"]
    lo, hi = np.argwhere(liver).min(0), np.argwhere(liver).max(0)
    result = session.add_box(*ijk_box_to_ras(lo[::-1], hi[::-1], subject.image.ijk_to_ras))
    assert session.mask.shape == liver.shape and result.region is not None


def test_band_features_start_as_the_model_they_grow_then_train_and_load(tmp_path):
    from ka2er_core.modeling import ModelConfig
    from ka2er_core.modeling.promptable import PromptableSegmenter
    from ka2er_core.training.generalist import with_bands

    torch.manual_seed(0)
    small = ModelConfig(crop_size=32, encoder_embed_dim=6, encoder_heads=(1, 2, 2, 4), dim=32,
                        decoder_mlp_dim=64, decoder_heads=2, fine_channels=4)
    plain = PromptableSegmenter(small).eval()
    grown = with_bands(plain, 3).eval()
    image = torch.randn(1, 1, 32, 32, 32)
    coords, labels = torch.tensor([[[16.0, 16.0, 16.0]]]), torch.tensor([[1]])
    with torch.no_grad():
        before = plain(image, coords, labels)[0]
        after = grown(image, coords, labels)[0]
    assert grown.config.band_channels == 3 and torch.equal(before, after)

    out = tmp_path / "bands"
    train_generalist(out, GeneralistConfig(steps=2, batch_size=1, workers=0, checkpoint_every=1),
                     base_spacing=2.0, max_spacing=4.0, engine_config=FAST_ENGINE, band_channels=2)
    weights = load_file(str(out / "general.safetensors"))
    assert weights["image_encoder.bands.weight"].shape[0] == 2
    assert weights["mask_decoder.hyper_bands.layers.2.weight"].abs().sum() > 0  # it learned
    assert load_bundle(out).default.model.config.band_channels == 2
