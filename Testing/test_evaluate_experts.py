"""``ka2er evaluate`` with imported nnU-Net experts (issue 23 item 3): an expert scores a dataset whose
folder has another name than its nnU-Net dataset, its labels matched by name (not number, and through
``--label-map`` where names differ); what is not scored is said, with the reason, in the report and on
the console; a comparison where a method scored nothing prints "n/a" instead of crashing."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

import ka2er_core.evaluation.report as report_module
import ka2er_core.inference.automatic as automatic_module
from command_line import one_error_line
from importer_fixtures import ARCH, ReferenceUNet, randomised, write_model_folder
from ka2er_core.bundle import load_expert
from ka2er_core.cli import main
from ka2er_core.data.msd import load_dataset
from ka2er_core.data.sample import write_sample_dataset
from ka2er_core.evaluation.protocol import ProtocolRun, dice
from ka2er_core.evaluation.report import (compare, describe_skipped, evaluate_bundle,
                                          format_comparison, label_key, match_labels,
                                          merge_reports, summarise)
from ka2er_core.importers import import_nnunet

pytestmark = pytest.mark.usefixtures("one_thread")

EXPERT_LABELS = {"background": 0, "Right_Kidney": 1, "liver": 2, "tumour": 3}
"""The expert's numbering: the dataset (CT phantom) has liver 1, right kidney 2, lesion 6."""


def nnunet_expert(folder, out, dataset_name="Dataset777_Abdomen", labels=EXPERT_LABELS, answer=2):
    """An nnU-Net v2 model folder (random PlainConvUNet weights, coarse 6 mm spacing so that a
    phantom takes a few windows) imported as an expert bundle. Its segmentation head answers class
    ``answer`` everywhere (random weights would answer no structure, and every Dice would be 0)."""
    network = randomised(ReferenceUNet(ARCH, len(labels)))
    with torch.no_grad():
        head = network.decoder.seg_layers[-1]
        head.weight.zero_()
        head.bias.zero_()
        head.bias[answer] = 5.0
    write_model_folder(folder, network, "CTNormalization")
    plans = json.loads((folder / "plans.json").read_text())
    plans["dataset_name"] = dataset_name
    plans["configurations"]["3d_fullres"]["spacing"] = [6.0, 6.0, 6.0]
    (folder / "plans.json").write_text(json.dumps(plans))
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["labels"] = labels
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return import_nnunet(folder, out, progress=lambda line: None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    ct, mr = write_sample_dataset(root / "data", n_train=1, n_test=1,
                                  tasks=["Dataset003_CTPhantom", "Dataset004_MRPhantom"])
    return ct, mr, nnunet_expert(root / "model", root / "expert")


@pytest.fixture
def oracle(monkeypatch):
    """The expert answers perfectly in its own numbering: each of its labels where the dataset's label
    of that name is ("tumour" where the lesion is). What a test then reads off the report is which
    expert value scored which dataset structure."""
    def segment(expert, volume, device="cpu", progress=None):
        folder, image = str(volume.path).rsplit("/imagesTs/", 1)
        label = f"{folder}/labelsTs/{image.replace('_0000.nii', '.nii')}"
        truth = np.asarray(nib.load(label).dataobj).transpose(2, 1, 0)  # (i, j, k) -> (k, j, i)
        dataset = load_dataset(folder)
        named = {label_key(name): value for name, value in dataset.labels.items()}
        named["tumour"] = dataset.labels["lesion"]
        out = np.zeros(truth.shape, np.uint8)
        for name, value in expert.plan.labels.items():
            out[truth == named[label_key(name)]] = value
        return volume.with_array(out, dict(expert.plan.labels))

    monkeypatch.setattr(automatic_module, "segment_automatic", segment)


def scores(report):
    return {(row["task"], row["target"]): row["mean_dice"][0] for row in report["summary"]}


def test_labels_are_matched_by_name_not_number():
    dataset = {"liver": 1, "right kidney": 2, "kidneys": (2, 3), "left kidney": 3}
    pairs, unmatched = match_labels({"Right_Kidney": 1, "liver": 2, "tumour": 3}, dataset)
    assert pairs == {"right kidney": [1], "liver": [2]} and unmatched == ["tumour"]
    pairs, unmatched = match_labels({"Right_Kidney": 1, "liver": 2, "tumour": 3}, dataset,
                                    {"tumour": "Left Kidney"})
    # the region "kidneys" (2, 3) follows from its plain labels: the expert's 1 and 3
    assert pairs == {"right kidney": [1], "liver": [2], "left kidney": [3], "kidneys": [1, 3]}
    assert unmatched == []
    pairs, _ = match_labels({"a": 1, "b": 2}, {"organ": 5}, {"a": "organ", "b": "organ"})
    assert pairs == {"organ": [1, 2]}  # several expert labels for one dataset label: their union


def test_an_expert_of_another_name_scores_the_structures_of_the_same_name(setup, oracle, tmp_path,
                                                                          capsys):
    ct, mr, expert = setup
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--bundle", str(expert), "--dataset", str(ct), "--dataset", str(mr),
                 "--prompts", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    # right kidney is 2 in the dataset and 1 in the expert, liver 1 and 2: by number both would be 0
    assert scores(report) == {("Dataset003_CTPhantom", "right kidney"): 1.0,
                              ("Dataset003_CTPhantom", "liver"): 1.0}
    skipped = {(entry["task"], entry.get("label")): entry["reason"] for entry in report["skipped"]}
    assert "--label-map 'tumour=DATASET_LABEL'" in skipped[("Dataset003_CTPhantom", "tumour")]
    assert "reads CT images" in skipped[("Dataset004_MRPhantom", None)]
    assert "'MR'" in skipped[("Dataset004_MRPhantom", None)]
    assert "skipped: Dataset003_CTPhantom: expert label tumour: the expert's label 'tumour' names no " \
           "label of this dataset" in printed
    assert "skipped: Dataset004_MRPhantom: the expert reads CT images" in printed

    assert main(["evaluate", "--bundle", str(expert), "--dataset", str(ct), "--prompts", "2",
                 "--label-map", "tumour=lesion", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert scores(report) == {("Dataset003_CTPhantom", "right kidney"): 1.0,
                              ("Dataset003_CTPhantom", "liver"): 1.0,
                              ("Dataset003_CTPhantom", "lesion"): 1.0}
    assert report["skipped"] == [] and report["settings"]["label_map"] == {"tumour": "lesion"}


def test_the_expert_of_a_dataset_of_its_own_name_scores_that_one_only(setup, oracle, tmp_path):
    ct, mr, _ = setup
    expert = nnunet_expert(tmp_path / "model", tmp_path / "expert", dataset_name="Dataset003_CTPhantom",
                           labels={"background": 0, "liver": 1, "right kidney": 2})
    report = evaluate_bundle(expert, [ct, mr], 1, device="cpu")
    assert set(scores(report)) == {("Dataset003_CTPhantom", "liver"),
                                   ("Dataset003_CTPhantom", "right kidney")}
    assert report["skipped"] == [{"task": "Dataset004_MRPhantom", "reason": "not this expert's task "
                                  "(Dataset003_CTPhantom, also given with --dataset)"}]


def test_the_imported_network_itself_is_scored_by_name(setup, tmp_path):
    """No oracle: the imported network's own answer (its "liver", 2, everywhere), scored as evaluate
    scores it, equals Dice computed here by name, and differs from the by-number Dice."""
    ct, _, expert = setup
    report = evaluate_bundle(expert, [ct], 1, device="cpu")
    case = load_dataset(ct).test_cases[0]
    images, label = case.load()
    predicted = automatic_module.segment_automatic(load_expert(expert), images[0]).array
    by_name = {"right kidney": dice(predicted == 1, label.array == 2),
               "liver": dice(predicted == 2, label.array == 1)}
    by_number = {"right kidney": dice(predicted == 2, label.array == 2),
                 "liver": dice(predicted == 1, label.array == 1)}
    reported = {target: value for (_, target), value in scores(report).items()}
    assert (predicted == 2).all() and 0 < by_name["liver"] < 1
    assert reported == pytest.approx(by_name, abs=1e-4)
    assert reported != pytest.approx(by_number, abs=1e-4)


@pytest.mark.parametrize("value, problem", [
    ("tumour", "expected EXPERT_LABEL=DATASET_LABEL pairs separated by commas, got 'tumour'"),
    ("tumor=lesion", "'tumor' is not a label of the expert bundles (their labels: Right_Kidney, "
                     "liver, tumour)"),
    ("tumour=lesions", "'lesions' is not a label of the datasets (their labels: liver, right "
                       "kidney, left kidney, spine, aorta, lesion)"),
    ("tumour=lesion,tumour=aorta", "expert label 'tumour' is mapped twice ('lesion' and 'aorta')"),
])
def test_a_wrong_label_map_is_one_line_before_any_work(setup, tmp_path, capsys, monkeypatch, value,
                                                       problem):
    ct, _, expert = setup
    monkeypatch.setattr(report_module, "evaluate_bundle", None)  # nothing may run
    assert main(["evaluate", "--bundle", str(expert), "--dataset", str(ct), "--label-map", value,
                 "--out", str(tmp_path / "out")]) == 2
    assert one_error_line(capsys) == f"ka2er: error: --label-map: {problem}"
    assert not (tmp_path / "out").exists()


def test_a_label_map_without_an_expert_is_refused(setup, tmp_path, capsys):
    ct, _, _ = setup
    assert main(["evaluate", "--baseline", "--dataset", str(ct), "--label-map", "a=liver",
                 "--out", str(tmp_path / "out")]) == 2
    assert "no --bundle is a task expert" in one_error_line(capsys)


def test_an_expert_that_scores_nothing_says_why_and_writes_nothing(setup, oracle, tmp_path, capsys):
    _, mr, expert = setup
    out = tmp_path / "out"
    assert main(["evaluate", "--bundle", str(expert), "--dataset", str(mr), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"ka2er: error: {expert}: nothing was scored (Dataset004_MRPhantom: the "
                           "expert reads CT images")
    assert not out.exists()


def canned(task_target_dice, bundle, skipped=()):
    runs = [{"task": task, "case": "c1", "target": target, "first": "box",
             **ProtocolRun([d, d], [10.0, 10.0], ["m", "m"], ["box", "+"]).to_dict()}
            for task, target, d in task_target_dice]
    return summarise(runs, {"bundle": bundle, "prompts": 2, "first": "box", "split": "test"}, skipped)


def test_a_comparison_with_a_method_that_scored_nothing_prints_n_a():
    skipped = [{"task": "Dataset003_CTPhantom", "reason": "none of the expert's labels (a) names a "
                                                          "label of this dataset"}]
    reports = {"task experts": canned([], "e", skipped),
               "demo": canned([("Dataset003_CTPhantom", "liver", 0.8)], "demo")}
    comparison = compare(reports)
    table = format_comparison(comparison)
    assert comparison["shared_targets"] == 0
    assert "| Dataset003_CTPhantom: liver | n/a | 0.800 |" in table
    assert "| **mean over the 0 targets all methods have** | n/a | n/a |" in table
    assert "- task experts: Dataset003_CTPhantom: none of the expert's labels (a) names" in table
    assert "(Dice at 1 prompt)" in table and "prompts)" not in table
    two = compare({name: canned([("T", "x", 0.5)], name) for name in ("a", "b")}, at=[1, 2])
    assert "a (Dice at 1/2 prompts)" in format_comparison(two)


def test_evaluate_prints_the_comparison_when_an_expert_scored_nothing(tmp_path, capsys, monkeypatch):
    """The crash of issue 23: an expert skipped, a promptable model scored; exit 0, "n/a", and why."""
    def evaluated(bundle, folders, prompts, **kwargs):
        if bundle.name == "expert":
            report = canned([], str(bundle), [{"task": "T", "reason": "not a CT dataset"}])
            report["settings"]["first"] = "automatic"
            return report
        return canned([("T", "liver", 0.7)], str(bundle))

    monkeypatch.setattr(report_module, "evaluate_bundle", evaluated)
    assert main(["evaluate", "--bundle", str(tmp_path / "expert"), "--bundle", str(tmp_path / "demo"),
                 "--dataset", str(tmp_path), "--prompts", "1", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| T: liver | n/a | 0.700 |" in printed and "- expert: T: not a CT dataset" in printed
    saved = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert saved["comparison"]["skipped"] == [{"method": "expert", "task": "T",
                                               "reason": "not a CT dataset"}]


def test_task_experts_merged_list_only_what_none_of_them_scored():
    """Each task expert skips the other's dataset: no gap in the merged column, so not listed; an
    expert label no dataset has, and a dataset no expert scored, are."""
    other = "not this expert's task"
    reports = [canned([("T1", "liver", 0.9)], "/x/expert_a", [{"task": "T2", "reason": other},
                                                                {"task": "T3", "reason": other}]),
               canned([("T2", "brain", 0.8)], "/x/expert_b", [{"task": "T1", "reason": other},
                                                                {"task": "T2", "label": "tumour",
                                                                 "reason": "no such label"}])]
    merged = merge_reports(reports)
    assert [describe_skipped(entry) for entry in merged["skipped"]] == [
        f"expert_a: T3: {other}", "expert_b: T2: expert label tumour: no such label"]
    assert {(row["task"], row["target"]) for row in merged["summary"]} == {("T1", "liver"),
                                                                          ("T2", "brain")}
