"""Partially labelled data: annotated_labels in dataset.json, what each trainer draws from such cases,
and KA2ER's soft-label distillation from the task expert on the labels a case leaves unannotated."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from ka2er_core.bundle import load_expert
from ka2er_core.bundle.store import read_manifest
from ka2er_core.data.msd import load_dataset
from ka2er_core.data.partial import drop_annotations
from ka2er_core.data.sample import write_sample_dataset
from ka2er_core.errors import DatasetError
from ka2er_core.evaluation.report import evaluate_bundle
from ka2er_core.inference.automatic import segment_automatic
from ka2er_core.io import load_volume, save_volume
from ka2er_core.modeling.normalization import Normalization
from ka2er_core.training.expert import train_expert
from ka2er_core.training.losses import per_item_dice_bce, weighted_mean
from ka2er_core.modeling.amalgamation import AmalgamationLayer, match_expert_stages
from ka2er_core.training.amalgamate import (AmalgamatedStudent,
                                            AmalgamationSampler, AmalgamationStep)
from ka2er_core.training.promptable import CropSampler, load_training_items, starting_model
from ka2er_core.training.soft_labels import ExpertSoftLabels
from ka2er_core.volume import Volume

WHITE = 2  # white matter's label value in the MNI sample tasks


def shrink(folder, size=(48, 56, 48)):
    """Cut every image and label map of a dataset folder to its central ``size`` (k, j, i) voxels, in
    place, geometry kept: the expert's sliding windows then take seconds, not minutes."""
    for path in sorted(folder.glob("*Tr/*.nii.gz")) + sorted(folder.glob("*Ts/*.nii.gz")):
        volume = load_volume(path)
        low = [(n - s) // 2 for n, s in zip(volume.shape, size)]
        array = volume.array[tuple(slice(lo, lo + s) for lo, s in zip(low, size))]
        matrix = volume.ijk_to_ras.copy()
        matrix[:3, 3] = volume.ijk_to_ras[:3] @ np.array([*low[::-1], 1.0])
        save_volume(path, Volume(np.ascontiguousarray(array), matrix))


def copy_of(folder, tmp_path):
    """A copy of a dataset folder for a test that changes it."""
    return shutil.copytree(folder, tmp_path / folder.name)


@pytest.fixture(scope="module")
def partial(tmp_path_factory, one_thread):
    """MNI T1, 3 training cases of which 2 leave white matter unannotated, and an expert (which
    trains on the fully labelled case only)."""
    root = tmp_path_factory.mktemp("partial")
    folder = write_sample_dataset(root / "data", n_train=3, n_test=1, tasks=["Dataset001_MNIT1"])[0]
    shrink(folder)
    changed = drop_annotations(folder, {"white matter": 2 / 3, "no such label": 1.0}, seed=0)
    messages = []
    expert = train_expert(folder, root / "expert", steps=20, batch_size=2, progress=messages.append)
    return folder, changed, expert, messages


def test_annotated_labels_mark_what_a_case_leaves_unknown(partial):
    folder, changed, _, _ = partial
    assert len(changed) == 2 and all(names == ["grey matter", "other brain"]
                                     for names in changed.values())
    dataset = load_dataset(folder)
    for case in dataset.cases:
        _, label = case.load()
        if case.case_id in changed:
            assert case.unannotated_values == {WHITE}
            assert not (label.array == WHITE).any()  # dropped from the label map
            assert not case.annotates("white matter") and not case.annotates("brain")
            assert case.annotates("grey matter") and case.annotates("other brain")
        else:
            assert case.annotated is None and (label.array == WHITE).any()
            assert all(case.annotates(name) for name in dataset.labels)
    assert all(case.annotated is None for case in dataset.test_cases)  # held-out: fully labelled


@pytest.mark.parametrize("value, field, message", [
    (["grey matter"], "annotated_labels", "expected {case id"),
    ({"nobody": ["grey matter"]}, "annotated_labels.nobody", "no case 'nobody'"),
    ({"mni_t1_00000": "grey matter"}, "annotated_labels.mni_t1_00000", "list of label names"),
    ({"mni_t1_00000": ["brain"]}, "annotated_labels.mni_t1_00000", "'brain' is not a plain label"),
])
def test_bad_annotated_labels_name_the_field(partial, tmp_path, value, field, message):
    folder = copy_of(partial[0], tmp_path)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["annotated_labels"] = value
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError) as caught:
        load_dataset(folder)
    assert caught.value.field == field and message in str(caught.value)
    assert str(folder / "dataset.json") in str(caught.value)


def test_a_label_map_contradicting_annotated_labels_is_refused(partial, tmp_path):
    changed = partial[1]
    folder = copy_of(partial[0], tmp_path)
    meta = json.loads((folder / "dataset.json").read_text())
    full = next(c for c in load_dataset(folder).cases if c.case_id not in changed)
    meta["annotated_labels"] = {**changed, full.case_id: ["grey matter"]}
    (folder / "dataset.json").write_text(json.dumps(meta))
    case = next(c for c in load_dataset(folder).cases if c.case_id == full.case_id)
    with pytest.raises(DatasetError, match="does not annotate") as caught:
        case.load()
    assert caught.value.field == "annotated_labels" and str(case.label_path) in str(caught.value)


def test_the_expert_trains_on_fully_labelled_cases_only(partial, tmp_path):
    folder, changed, expert, messages = partial
    assert any(f"left out {len(changed)} partially labelled cases" in m for m in messages)
    assert read_manifest(expert)["training"]["cases"] == 1
    folder = copy_of(folder, tmp_path)
    every = drop_annotations(folder, {"white matter": 1.0})  # now no case is fully labelled
    assert len(every) == 3
    with pytest.raises(DatasetError, match="fully labelled") as caught:
        train_expert(folder, tmp_path / "none", steps=1, batch_size=1)
    assert caught.value.field == "annotated_labels"


def draws(sampler, n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [sampler.sample(rng) for _ in range(n)]


def test_without_soft_labels_unannotated_targets_are_never_drawn(partial):
    folder = partial[0]
    items, targets = load_training_items([folder], Normalization("auto"),
                                         target_weights={"white matter": 20, "brain": 20})
    sampler = CropSampler(items, targets, Normalization("auto"), 32, 4.0, 8.0, 1)
    samples = draws(sampler)
    from_partial = [s for s in samples if s.source.unannotated]
    assert from_partial and not any(s.soft for s in samples)
    assert {s.target for s in from_partial} <= {"grey matter", "other brain"}
    assert {"white matter", "brain"} & {s.target for s in samples if not s.source.unannotated}


def test_soft_labels_are_the_experts_probabilities_given_the_annotations(partial):
    folder, _, expert_path, _ = partial
    expert = load_expert(expert_path)
    items, targets = load_training_items([folder], Normalization("auto"))
    item = next(i for i in items if i.unannotated)
    soft = ExpertSoftLabels([expert])
    assert soft.covers(item, (WHITE,)) and soft.covers(item, (1, 2, 3)) and soft.covers(item, (1,))
    label = item.label.array
    white = soft.probability(item, (WHITE,))
    brain = soft.probability(item, (1, 2, 3))
    assert soft.probability(item, (1,)) is None  # grey matter is annotated: no soft label
    assert white.shape == label.shape and white.min() >= 0 and white.max() <= 1
    assert np.all(white[label > 0] == 0)  # annotated tissue cannot be white matter
    np.testing.assert_array_equal(brain[label > 0], 1)  # annotated grey matter and other brain
    np.testing.assert_allclose(brain[label == 0], white[label == 0], atol=1e-3)
    # Where the expert's own segmentation says white matter over background, the conditioned
    # probability clears one half, and the completed label map says white matter.
    automatic = segment_automatic(expert, item.image).array
    says_white = (automatic == WHITE) & (label == 0)
    assert says_white.sum() > 100  # the expert has learnt something of white matter
    completed = soft.completed_label(item)
    np.testing.assert_array_equal(completed[label > 0], label[label > 0])
    assert np.all(white[says_white] >= 0.5 - 1e-3)
    decided = np.abs(white - 0.5) > 1e-3  # soft labels are stored as float16
    np.testing.assert_array_equal((completed == WHITE)[decided], ((white > 0.5) & (label == 0))[decided])
    # Without an expert for the task nothing is covered.
    assert not ExpertSoftLabels([]).covers(item, (WHITE,))


def test_with_soft_labels_unannotated_targets_are_drawn_with_soft_truths(partial):
    folder, _, expert_path, _ = partial
    items, targets = load_training_items([folder], Normalization("auto"),
                                         target_weights={"white matter": 20})
    sampler = CropSampler(items, targets, Normalization("auto"), 32, 4.0, 8.0, 1,
                          soft_labels=ExpertSoftLabels([load_expert(expert_path)]))
    samples = draws(sampler)
    soft = [s for s in samples if s.soft]
    assert soft and all(s.source.unannotated for s in soft)
    assert {s.target for s in soft} == {"white matter", "brain"}  # brain unites white matter too
    assert all(s.truth.dtype == np.float32 and 0 <= s.truth.min() and s.truth.max() <= 1
               and (s.truth > 0.5).any() for s in soft)
    assert all(s.truth.dtype == bool for s in samples if not s.soft)
    batch = sampler(0, np.random.default_rng(3))  # collate takes soft truths (and damages them)
    assert batch["truths"].dtype == torch.float32


def test_item_weights_scale_each_items_loss():
    logits = torch.randn(3, 1, 4, 4, 4, requires_grad=True)
    target = torch.rand(3, 1, 4, 4, 4)  # soft labels
    per_item = per_item_dice_bce(logits, target)
    assert per_item.shape == (3,)
    weights = torch.tensor([1.0, 0.0, 0.5])
    loss = weighted_mean(per_item, weights)
    torch.testing.assert_close(loss, (per_item[0] + 0.5 * per_item[2]) / 3)
    loss.backward()
    assert logits.grad[1].abs().max() == 0 and logits.grad[0].abs().max() > 0
    torch.testing.assert_close(weighted_mean(per_item.detach()), per_item.detach().mean())


def test_soft_items_count_soft_label_weight_in_the_segmentation_losses(partial):
    folder, _, expert_path, _ = partial
    expert = load_expert(expert_path)
    start = starting_model(None, None, 4.0, 8.0)
    items, targets = load_training_items([folder], start.normalization,
                                         target_weights={"white matter": 20})
    crops = CropSampler(items, targets, start.normalization, start.crop_size, 4.0, 8.0, 2,
                        max_extra_clicks=0, correct_probability=0,
                        soft_labels=ExpertSoftLabels([expert]))
    sampler = AmalgamationSampler(crops, [expert])
    batch = next(b for b in (sampler(s, np.random.default_rng(s)) for s in range(40)) if b["soft"].all())
    channels = [h.shape[1] for h in start.model.stages(torch.zeros(1, 1, 64, 64, 64))]
    layout = start.model.layout
    factors = [layout.stage_factors[s] for s in layout.amalgamated]
    expert_channels = [[expert.plan.filters[i]
                        for i in match_expert_stages(factors, expert.plan.stage_factors)]]
    layer = AmalgamationLayer([channels[s] for s in layout.amalgamated], expert_channels, hidden=16,
                              heads=2)
    trainable = AmalgamatedStudent(start.model, layer)
    results = {}
    for weight in (0.0, 1.0):
        step = AmalgamationStep(trainable, [expert], distill_weight=0.5, soft_label_weight=weight)
        torch.manual_seed(0)
        with torch.no_grad():
            results[weight] = step.eval()(**batch)
    loss, metrics = results[0.0]
    assert float(metrics["soft_items"]) == 1.0
    # Every item soft at weight 0: only the distillation term is left.
    torch.testing.assert_close(loss, 0.5 * metrics["distill"])
    assert float(results[1.0][0]) > float(loss) + 0.1


def test_evaluation_skips_targets_a_case_does_not_annotate(partial, tmp_path):
    folder = copy_of(partial[0], tmp_path)
    drop_annotations_test(folder, load_dataset(folder).test_cases[0])
    report = evaluate_bundle(None, [folder], prompts=1, baseline=True)
    targets = {run["target"] for run in report["runs"]}
    assert targets == {"grey matter", "other brain"}


def drop_annotations_test(folder, case):
    """Make the held-out ``case`` annotate grey matter and other brain only."""
    volume = load_volume(case.label_path)
    save_volume(case.label_path, volume.with_array(np.where(volume.array == WHITE, 0, volume.array)
                                                   .astype(volume.array.dtype)))
    meta = json.loads((folder / "dataset.json").read_text())
    meta["annotated_labels"][case.case_id] = ["grey matter", "other brain"]
    (folder / "dataset.json").write_text(json.dumps(meta))


def test_amalgamate_distils_soft_labels_from_the_command_line(partial, tmp_path):
    folder, _, expert, _ = partial
    out = tmp_path / "student"
    arguments = ["amalgamate", "--dataset", str(folder), "--expert", str(expert), "--out", str(out),
                 "--steps", "4", "--batch-size", "2", "--hidden", "16", "--heads", "2",
                 "--base-spacing", "4", "--max-spacing", "8", "--soft-label-weight", "1",
                 "--target-weight", "white matter=20"]
    done = subprocess.run([sys.executable, "-m", "ka2er_core.cli"] + arguments, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "soft labels (weight 1): 2 partially labelled cases, 2 of them covered" in done.stderr
    assert "soft_items" in done.stderr
    training = read_manifest(out)["training"]
    assert training["soft_label_weight"] == 1 and "expert soft labels" in training["method"]
    assert training["final"]["soft_items"] > 0
    bad = subprocess.run([sys.executable, "-m", "ka2er_core.cli"] + arguments[:-4]
                         + ["--soft-label-weight", "-1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--soft-label-weight: expected a number >= 0" in bad.stderr
