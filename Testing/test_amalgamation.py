"""The adaptive amalgamation layer: shapes, learned expert selection, gradient flow, stage matching."""

import pytest
import torch
from torch import nn

from ka2er_core.modeling.amalgamation import AmalgamationLayer, match_expert_stages

STUDENT_CHANNELS = (8, 16, 32)
STUDENT_SIZES = ((4, 4, 4), (2, 2, 2), (1, 1, 1))


@pytest.mark.parametrize("num_experts", [1, 3])
def test_shapes_and_weights(num_experts):
    torch.manual_seed(0)
    expert_channels = [[5 + e, 7, 9 + 2 * e] for e in range(num_experts)]
    # Experts on their own grids: finer, anisotropic, coarser than the student's.
    expert_sizes = [((2, 8, 8), (1, 4, 4), (2, 2, 2)), ((3, 5, 4), (2, 2, 2), (1, 1, 1)),
                    ((8, 8, 8), (1, 1, 1), (1, 2, 2))]
    student = [torch.randn(2, c, *s) for c, s in zip(STUDENT_CHANNELS, STUDENT_SIZES)]
    experts = [[torch.randn(2, c, *s) for c, s in zip(expert_channels[e], expert_sizes[e])]
               for e in range(num_experts)]
    layer = AmalgamationLayer(STUDENT_CHANNELS, expert_channels, hidden=16, heads=4)
    out = layer(student, experts)

    for s, features in enumerate(student):
        locations = features.shape[2:].numel()
        assert out.gold[s].shape == features.shape
        assert torch.equal(out.gold[s], features)  # zero-initialised way back: gold starts as the student
        assert out.student_hidden[s].shape == out.gold_hidden[s].shape == (2, 16, *features.shape[2:])
        assert out.expert_weights[s].shape == (2, locations, num_experts + 1)
        assert out.scale_weights[s].shape == (2, locations, 3)
        for weights in (out.expert_weights[s], out.scale_weights[s]):
            assert (weights >= 0).all()
            torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))

    with pytest.raises(ValueError):
        layer(student, experts + [experts[0]])
    with pytest.raises(ValueError):
        AmalgamationLayer(STUDENT_CHANNELS, [[8, 8]])


def test_expert_weights_learn_to_select_the_task_expert():
    """Task A targets expert 0's features, task B expert 1's; expert 2 is a distractor. The student's
    features carry the task as a constant offset; the experts' features are noise."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    channels, sizes = (4, 8), ((4, 4, 4), (2, 2, 2))
    layer = AmalgamationLayer(channels, [channels] * 3, hidden=16, heads=2)
    task_offsets = 2 * torch.randn(2, max(channels), generator=generator)

    def batch(n):
        task = torch.arange(n) % 2
        student = [torch.randn(n, c, *s, generator=generator) + task_offsets[task, :c, None, None, None]
                   for c, s in zip(channels, sizes)]
        experts = [[torch.randn(n, c, *s, generator=generator) for c, s in zip(channels, sizes)]
                   for _ in range(3)]
        targets = [torch.where(task[:, None, None, None, None] == 0, experts[0][s], experts[1][s])
                   for s in range(len(channels))]
        return task, student, experts, targets

    def mean_weight_on_task_expert():
        task, student, experts, _ = batch(16)
        with torch.no_grad():
            out = layer(student, experts)
        return [min(weights[task == t][..., t].mean().item() for t in (0, 1))
                for weights in out.expert_weights]

    assert max(mean_weight_on_task_expert()) < 0.5  # untrained: no selection yet
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(200):
        _, student, experts, targets = batch(8)
        out = layer(student, experts)
        loss = sum(nn.functional.mse_loss(gold - features, target)
                   for gold, features, target in zip(out.gold, student, targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert min(mean_weight_on_task_expert()) > 0.6


def test_gradients_reach_student_and_layer_not_frozen_experts():
    torch.manual_seed(0)
    # Student grids 8^3, 4^3, 2^3: every attention sees more than one key. (Over a single key the
    # softmax is the constant 1, so q and k get no gradient in exact arithmetic; that case is
    # test_single_token_scale_passes_values_through.)
    image = torch.randn(2, 1, 32, 32, 32)
    strides = (4, 8, 16)
    student_net = nn.ModuleList(nn.Conv3d(1, c, k, stride=k) for c, k in zip(STUDENT_CHANNELS, strides))
    expert_nets = [nn.ModuleList(nn.Conv3d(1, 6, k, stride=k) for k in ((2, 4, 4), (4, 8, 8), (8, 8, 8)))
                   for _ in range(2)]
    for net in expert_nets:
        net.requires_grad_(False)
    layer = AmalgamationLayer(STUDENT_CHANNELS, [[6, 6, 6]] * 2, hidden=16, heads=2)
    optimizer = torch.optim.SGD([*student_net.parameters(), *layer.parameters()], lr=0.1)

    def run():
        with torch.no_grad():
            experts = [[conv(image) for conv in net] for net in expert_nets]
        return layer([conv(image) for conv in student_net], experts)

    def task_loss(out):  # stands in for the segmentation loss on what the decoder gets
        return sum(gold.pow(2).mean() for gold in out.gold)

    # One step moves the zero-initialised way back, after which the whole layer gets gradient.
    task_loss(run()).backward()
    optimizer.step()
    optimizer.zero_grad()
    task_loss(run()).backward()
    for name, p in [*student_net.named_parameters(), *layer.named_parameters()]:
        assert p.grad is not None, name
        if p.dim() > 1:
            assert p.grad.abs().sum() > 0, name
    for net in expert_nets:
        assert all(p.grad is None for p in net.parameters())

    optimizer.zero_grad(set_to_none=True)
    out = run()
    layer.distillation_loss(out).backward()
    for scale in layer.scales:
        assert scale.student_in.weight.grad.abs().sum() > 0
        gold_side = [scale.experts_in, scale.self_attention, scale.expert_attention,
                     scale.scale_attention, scale.mlp, scale.student_out]
        assert all(p.grad is None for part in gold_side for p in part.parameters())
    assert all(p.grad.abs().sum() > 0 for p in student_net.parameters())
    # The detach cuts gradient only: the value is the plain MSE.
    expected = torch.stack([nn.functional.mse_loss(own, gold)
                            for own, gold in zip(out.student_hidden, out.gold_hidden)]).mean()
    torch.testing.assert_close(layer.distillation_loss(out), expected)


def test_single_token_scale_passes_values_through():
    """A crop small enough to leave one token at the coarsest scale (e.g. 32^3 at 1/32) is legal:
    self-attention over it returns the projected value whatever q and k are."""
    torch.manual_seed(0)
    layer = AmalgamationLayer((8,), [[6]], hidden=16, heads=2)
    scale = layer.scales[0]
    tokens = torch.randn(3, 1, 16)
    attention = scale.self_attention
    expected = attention.out(attention.v(tokens))
    torch.testing.assert_close(attention(tokens, tokens, tokens), expected)
    out = layer([torch.randn(3, 8, 1, 1, 1)], [[torch.randn(3, 6, 2, 2, 2)]])
    assert out.gold[0].shape == (3, 8, 1, 1, 1)
    assert torch.isfinite(out.gold_hidden[0]).all()


def test_match_expert_stages():
    isotropic = [(1, 1, 1), (2, 2, 2), (4, 4, 4), (8, 8, 8), (16, 16, 16), (32, 32, 32)]
    assert match_expert_stages([8, 16, 32], isotropic) == [3, 4, 5]
    assert match_expert_stages([8, 16, 32], isotropic[:5]) == [3, 4, 4]  # no 1/32 stage: the deepest
    # nnU-Net on anisotropic data: in-plane pooling first, then through-plane too.
    anisotropic = [(1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8), (4, 16, 16), (4, 32, 32)]
    assert match_expert_stages([8, 16, 32], anisotropic) == [3, 4, 5]
    assert match_expert_stages([2, 4], anisotropic) == [1, 2]
    # Equidistant stages: the deeper one (larger index) wins, also when the logarithms are inexact.
    assert match_expert_stages([8], [(4, 4, 4), (16, 16, 16)]) == [1]
    assert match_expert_stages([6], [(3, 3, 3), (12, 12, 12)]) == [1]
    with pytest.raises(ValueError):
        match_expert_stages([8], [])
