"""``ka2er evaluate --protocol cvpr25`` (issue 22 item 6): the CVPR 2025 interactive 3D challenge's box
(z-range plus the middle slice's 2D box), its clicks (distance-transform centre of the largest
26-connected error), its metrics (DSC/NSD AUC over the 5 clicks' predictions: 0..4, final DSC/NSD,
NSD at 2 mm, spacing-aware), in report.json, the table and the comparison."""

import json

import numpy as np
import pytest

from command_line import one_error_line
from conftest import random_ijk_to_ras
from ka2er_core.cli import main
from ka2er_core.data.sample import write_sample_dataset
from ka2er_core.evaluation import cvpr25
from ka2er_core.evaluation.cvpr25 import (auc, challenge_box, challenge_click, challenge_scores,
                                          run_cvpr25, surface_dice)
from ka2er_core.evaluation.report import compare, format_comparison, format_table, summarise
from ka2er_core.geometry import ras_box_to_ijk, ras_to_ijk
from ka2er_core.inference.result import Result
from ka2er_core.volume import Volume


def pyramid(shape=(12, 40, 50)) -> np.ndarray:
    """Slices 2..9, each a rectangle that grows with the slice (the widest at the bottom), plus one
    extra-wide slice 2 so that the middle slice's box is not the 3D bounding box."""
    mask = np.zeros(shape, bool)
    for k in range(2, 10):
        mask[k, 20 - k: 21 + k, 25 - 2 * k: 26 + 2 * k] = True
    mask[2, 5:35, 3:47] = True
    return mask


def test_the_box_is_the_z_range_and_the_middle_slices_2d_box():
    mask = pyramid()
    z = np.where(mask)[0]
    middle = z[len(z) // 2]  # as the challenge's get_boxes.py picks it
    lo, hi = challenge_box(mask)
    rows, columns = np.where(mask[middle])
    assert lo.tolist() == [2, rows.min(), columns.min()]
    assert hi.tolist() == [9, rows.max(), columns.max()]
    assert (hi[1] - lo[1], hi[2] - lo[2]) != (29, 43)  # not the wide slice 2's extent


class Shift:
    """A stand-in for the challenge's seeded ``np.random.randint(0, 6, 1)``."""

    def __init__(self, value):
        self.value = value

    def randint(self, low, high, size):
        assert (low, high, size) == (0, 6, 1)
        return np.array([self.value])


def test_the_box_is_widened_by_the_shift_scaled_to_the_slice_and_clipped():
    mask = np.zeros((6, 256, 512), bool)
    mask[1:5, 3:100, 200:300] = True
    lo, hi = challenge_box(mask, Shift(5))  # 5 px per 256: 5 rows, 10 columns
    assert lo.tolist() == [1, 0, 190] and hi.tolist() == [4, 104, 309]  # row 3 - 5 clipped to 0
    lo, hi = challenge_box(mask, np.random.RandomState(2025))
    assert lo[0] == 1 and hi[0] == 4 and 0 <= 3 - lo[1] <= 5 and 0 <= 200 - lo[2] <= 10


def test_box_margins_are_seeded_by_case_and_target():
    def draw(case, target):
        return cvpr25.box_rng(case, target).randint(0, 6, 1)[0]
    assert draw("case_1", "liver") == draw("case_1", "liver")
    assert len({draw(f"case_{n}", "liver") for n in range(20)}) > 1


class Recorder:
    """A session that records its prompts and answers with ``answers`` in turn (the last repeats)."""

    prompt_types = ("point", "box")

    def __init__(self, shape, answers):
        self.answers, self.boxes, self.points = list(answers), [], []
        self.mask = np.zeros(shape, np.uint8)

    def set_target(self, name):
        pass

    def _answer(self):
        self.mask = (self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]).astype(np.uint8)
        return Result(None, float("nan"), "recorder", 1.0)

    def add_box(self, corner_a, corner_b):
        self.boxes.append((np.asarray(corner_a), np.asarray(corner_b)))
        return self._answer()

    def add_point(self, ras, positive=True):
        self.points.append((np.asarray(ras), positive))
        return self._answer()


@pytest.mark.parametrize("oblique", [False, True])
def test_on_an_oblique_anisotropic_grid_the_box_sent_holds_the_voxel_box(oblique, rng):
    mask = pyramid()
    matrix = random_ijk_to_ras(rng) if oblique else np.diag([0.7, 1.1, 3.0, 1.0])
    image = Volume(np.zeros(mask.shape, np.float32), matrix)
    session = Recorder(mask.shape, [mask])
    run = run_cvpr25(session, image, mask)
    lo, hi = challenge_box(mask)
    low, high = ras_box_to_ijk(*session.boxes[0], matrix)  # (i, j, k)
    if oblique:  # the RAS box a user draws around the voxel box encloses it
        assert np.all(low[::-1] <= lo + 1e-6) and np.all(high[::-1] >= hi - 1e-6)
    else:
        np.testing.assert_allclose(low[::-1], lo, atol=1e-6)
        np.testing.assert_allclose(high[::-1], hi, atol=1e-6)
    # a perfect answer: no click is needed, every score stays 1, AUC = 4 (5 clicks, unit steps)
    assert run.prompts == ["box"] + ["none"] * 5 and not session.points
    result = run.to_dict()
    assert result["dice"] == [1.0] * 6 and result["nsd"] == [1.0] * 6
    assert (result["dsc_auc"], result["nsd_auc"], result["final_dsc"], result["final_nsd"]) == (
        4.0, 4.0, 1.0, 1.0)
    assert result["noc90"] == 1


def test_the_click_is_at_the_distance_centre_of_the_largest_error_and_signed():
    truth = np.zeros((20, 20, 30), bool)
    truth[5:15, 5:15, 2:12] = True
    prediction = np.zeros_like(truth)
    kji, positive = challenge_click(prediction, truth)
    assert positive and np.all(np.abs(kji - [9.5, 9.5, 6.5]) <= 0.5)
    prediction = truth.copy()
    prediction[2:19, 2:19, 13:30] = True  # a false positive larger than anything missed (a cube)
    prediction[5:7, 5:7, 2:4] = False
    kji, positive = challenge_click(prediction, truth)
    assert not positive and np.all(np.abs(kji - [10, 10, 21]) <= 0.5)
    # the image border counts as outside: a slab on the border is clicked in its middle
    truth = np.zeros((9, 9, 9), bool)
    truth[2:7, 2:7, :5] = True  # without it, i = 0, 1 and 2 would tie
    kji, positive = challenge_click(np.zeros_like(truth), truth)
    assert positive and kji.tolist() == [4, 4, 2]
    assert challenge_click(truth, truth) is None


def test_the_auc_over_the_clicks_predictions_by_hand():
    assert auc([0, 0.25, 0.5, 0.75, 1.0]) == 2.0 and auc([1.0] * 5) == 4.0 and auc([0.3]) is None
    # the box's prediction (0.5) is left out, as the challenge does
    scores = challenge_scores([0.5, 0, 0.25, 0.5, 0.75, 1.0], [0.2, 0, 0, 0, 0, 0.5], clicks=5)
    assert scores == {"dsc_auc": 2.0, "nsd_auc": 0.25, "final_dsc": 1.0, "final_nsd": 0.5}


def test_nsd_is_spacing_aware_in_array_order():
    truth = np.zeros((20, 20, 20), bool)
    truth[5:15, 5:15, 5:15] = True
    moved = np.roll(truth, 1, axis=0)  # one slice off along k
    assert surface_dice(moved, truth, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert surface_dice(moved, truth, (1.0, 3.0, 3.0)) == pytest.approx(1.0)  # 1 mm along k
    # 3 mm along k: the two k faces (each 10 x 10 mm of 2 x 100 + 4 x 300 mm^2) are 3 mm off
    assert 0.8 < surface_dice(moved, truth, (3.0, 1.0, 1.0)) < 0.9  # about 1 - 200 / 1400
    assert surface_dice(np.zeros_like(truth), truth, (1, 1, 1)) == 0.0


def test_nsd_is_zero_where_dice_is_at_most_a_fifth_and_a_miss_is_clicked(rng):
    truth = pyramid()
    image = Volume(np.zeros(truth.shape, np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
    sliver = np.zeros_like(truth)
    sliver[5, 18:21, 20:30] = True  # inside the target, Dice < 0.2
    session = Recorder(truth.shape, [sliver, truth])
    run = run_cvpr25(session, image, truth)
    assert run.dice[0] < 0.2 and run.nsd[0] == 0.0 and run.nsd[1:] == [1.0] * 5
    assert run.prompts[:3] == ["box", "+", "none"] and session.points[0][1] is True
    kji = ras_to_ijk(session.points[0][0][None], image.ijk_to_ras)[0][::-1]
    assert truth[tuple(np.round(kji).astype(int))] and not sliver[tuple(np.round(kji).astype(int))]


def run_dict(dice, nsd):
    prompts = ["box"] + ["+"] * (len(dice) - 1)
    return {"task": "T", "target": "t", "case": "c", "first": "box", "dice": dice, "nsd": nsd,
            "latency_ms": [1.0] * len(dice), "members": ["m"] * len(dice), "prompts": prompts,
            "noc85": None, "noc90": None, **challenge_scores(dice, nsd, len(dice) - 1)}


def test_summary_table_and_comparison_carry_the_challenge_metrics():
    first = summarise([run_dict([1.0] * 6, [1.0] * 6), run_dict([0.5, 0, 0.25, 0.5, 0.75, 1.0],
                                                                 [0.0] * 6)], {"prompts": 6})
    row = first["summary"][0]
    assert (row["dsc_auc"], row["nsd_auc"], row["final_dsc"], row["final_nsd"]) == (3.0, 2.0, 1.0, 0.5)
    assert row["mean_nsd"] == [0.5] * 6
    assert "DSC AUC 3.000 NSD AUC 2.000 final DSC 1.000 final NSD 0.500" in format_table(first)
    second = summarise([run_dict([1.0] * 6, [1.0] * 6)], {"prompts": 6})
    comparison = compare({"a": first, "b": second})
    assert comparison["cvpr25"]["mean_over_shared_targets"] == {"a": [3.0, 2.0, 1.0, 0.5],
                                                                "b": [4.0, 4.0, 1.0, 1.0]}
    text = format_comparison(comparison)
    assert "| T: t | 3.000 / 2.000 / 1.000 / 0.500 | 4.000 / 4.000 / 1.000 / 1.000 |" in text
    # the default protocol's reports have none of it
    plain = summarise([{k: v for k, v in run_dict([1.0] * 2, [1.0] * 2).items()
                        if k not in ("nsd", *cvpr25.METRICS)}], {"prompts": 2})
    assert "nsd_auc" not in plain["summary"][0] and "DSC AUC" not in format_table(plain)
    assert "cvpr25" not in compare({"a": plain, "b": plain})


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("cvpr25")
    return write_sample_dataset(root, n_train=1, n_test=1, tasks=["Dataset003_CTPhantom"])[0]


def test_cli_cvpr25_baseline_writes_the_metrics(phantom, tmp_path, capsys):
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--protocol", "cvpr25", "--baseline", "--dataset", str(phantom),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["protocol"] == "cvpr25" and report["settings"]["prompts"] == 6
    assert report["settings"]["first"] == "box"
    for run in report["runs"]:
        assert run["prompts"][0] == "box" and len(run["dice"]) == len(run["nsd"]) == 6
        assert 0 <= run["dsc_auc"] <= 4 and 0 <= run["nsd_auc"] <= 4
        assert run["final_dsc"] == run["dice"][-1] and run["final_nsd"] == run["nsd"][-1]
    for row in report["summary"]:
        assert {"dsc_auc", "nsd_auc", "final_dsc", "final_nsd", "mean_dice", "noc90"} <= set(row)
        line = next(line for line in printed.splitlines() if f" {row['target']} " in line)
        assert f"DSC AUC {row['dsc_auc']:.3f}" in line and f"final NSD {row['final_nsd']:.3f}" in line
        assert "NoC90" in line


def test_bad_protocol_and_first_with_cvpr25_are_exit_2(phantom, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--protocol", "cvpr24", "--dataset", str(phantom)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("argument --protocol: invalid choice: 'cvpr24' (choose from 'default', "
                            "'cvpr25')")
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--protocol", "cvpr25", "--first", "click", "--baseline", "--dataset",
                 str(phantom), "--out", str(out)]) == 2
    assert "--first is for the default protocol" in one_error_line(capsys) and not out.exists()
