"""Point features: clicks carry the fine encoder features under them; old models gain them silently."""

from dataclasses import replace

import torch

from ka2er_core.modeling import ModelConfig, PromptableSegmenter
from ka2er_core.modeling.prompt_encoder import BOX_HIGH, BOX_LOW, NEGATIVE, PAD, POSITIVE
from ka2er_core.bundle import Segmenter, save_bundle
from ka2er_core.modeling.normalization import Normalization
from ka2er_core.training.promptable import starting_model, with_point_features


def crop_with_two_tissues(size=64):
    """(1, 1, S, S, S): dark where i < S/2, bright elsewhere, with a little noise."""
    torch.manual_seed(0)
    image = torch.full((1, 1, size, size, size), -1.0)
    image[..., size // 2:] = 1.0
    return image + 0.05 * torch.randn_like(image)


def test_a_model_without_point_features_gains_them_and_answers_as_before():
    config = replace(ModelConfig.tiny(), point_features=False)
    assert ModelConfig.from_dict({k: v for k, v in config.to_dict().items()
                                  if k != "point_features"}) == config  # bundles made before it
    torch.manual_seed(1)
    old = PromptableSegmenter(config).eval()
    assert old.point_features is None
    upgraded = with_point_features(old).eval()
    assert upgraded.config.point_features and upgraded.point_features is not None
    assert with_point_features(upgraded) is upgraded
    image = crop_with_two_tissues()
    coords = torch.tensor([[[10.0, 30, 30], [50, 30, 30]]])
    labels = torch.tensor([[POSITIVE, NEGATIVE]])
    with torch.no_grad():
        before = old(image, coords, labels)
        after = upgraded(image, coords, labels)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)


def test_fine_tuning_adds_point_features_only_when_asked(tmp_path):
    config = replace(ModelConfig.tiny(), point_features=False)
    save_bundle(tmp_path / "old", Segmenter("general", PromptableSegmenter(config).eval(),
                                            Normalization("mr"), 1.5, 4.0))
    assert starting_model(None, tmp_path / "old").model.point_features is None
    assert starting_model(None, tmp_path / "old", point_features=True).model.point_features is not None
    assert starting_model(None, None).model.point_features is not None  # new models have them


def test_point_features_tell_the_tissue_under_each_click_and_learn():
    model = PromptableSegmenter(ModelConfig.tiny())
    features = model.point_features
    image = crop_with_two_tissues()
    embedding = model.embed(image)
    coords = torch.tensor([[[10.0, 30, 30], [12, 34, 28], [50, 30, 30], [5, 5, 5], [60, 60, 60],
                            [0, 0, 0]]])
    labels = torch.tensor([[POSITIVE, POSITIVE, NEGATIVE, BOX_LOW, BOX_HIGH, PAD]])
    assert torch.count_nonzero(features(embedding, coords, labels)) == 0  # starts silent
    # Learning: a loss on the decoded mask reaches the projection (zero weights, non-zero inputs).
    logits, _ = model.decode(embedding, coords, labels)
    logits.mean().backward()
    assert features.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        torch.nn.init.normal_(features.proj.weight)
        tokens = features(embedding, coords, labels)[0]
    same_tissue = (tokens[0] - tokens[1]).norm()
    other_tissue = (tokens[0] - tokens[2]).norm()
    assert other_tissue > 2 * same_tissue  # the dark clicks agree, the bright one differs
    assert torch.count_nonzero(tokens[3:]) == 0  # box corners and padding carry none
