"""``ka2er evaluate`` defaults that failed (issue 23 item 4): a dataset without labelled held-out
cases is one error naming the folder and ``--split train`` (it was exit 0 with an empty report); a
label of separate parts (both kidneys) gets its first box around its largest part (one box around
both scored Dice 0 for every model), while a target in one piece keeps its own box."""

import json
import shutil

import numpy as np
import pytest

from command_line import one_error_line
from ka2er_core.cli import main
from ka2er_core.data import PHANTOM_LABELS, ct_phantom
from ka2er_core.data.sample import write_sample_dataset
from ka2er_core.errors import DatasetError
from ka2er_core.evaluation.baseline import RandomWalkerSession
from ka2er_core.evaluation.protocol import run_protocol
from ka2er_core.evaluation.report import load_datasets
from ka2er_core.geometry import foreground_bounds, ijk_to_ras_points
from ka2er_core.inference.result import Result
from ka2er_core.modelspace.clicks import first_box, first_prompts, largest_component


@pytest.fixture(scope="module")
def no_test_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("no-test")
    return write_sample_dataset(root, n_train=1, n_test=0, tasks=["Dataset003_CTPhantom"])[0]


def test_a_dataset_without_held_out_cases_is_one_line_pointing_to_split_train(no_test_cases, tmp_path,
                                                                            capsys):
    assert not (no_test_cases / "imagesTs").exists()
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--baseline", "--dataset", str(no_test_cases), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"ka2er: error: {no_test_cases}: no held-out test cases with labels to "
                           "score (no imagesTs/ folder); add them, or score the training cases with "
                           "--split train")
    assert not out.exists()


def test_test_images_without_labels_are_named_too(no_test_cases, tmp_path):
    folder = shutil.copytree(no_test_cases, tmp_path / "dataset")
    (folder / "imagesTs").mkdir()
    for image in (folder / "imagesTr").iterdir():
        shutil.copy(image, folder / "imagesTs" / image.name)
    with pytest.raises(DatasetError, match=r"\(imagesTs/ holds 1 cases, labelsTs/ none of their "
                                           r"labels\); .* --split train"):
        load_datasets([folder], "test")
    assert [d.root for d in load_datasets([folder], "train")] == [folder]


def test_split_train_scores_the_training_cases(no_test_cases, tmp_path, capsys):
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--baseline", "--dataset", str(no_test_cases), "--split", "train",
                 "--prompts", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["split"] == "train" and {r["case"] for r in report["runs"]} == {
        "ct_phantom_00000"}


def two_blobs():
    mask = np.zeros((20, 30, 40), bool)
    mask[5:12, 5:15, 3:12] = True  # 7 * 10 * 9 = 630 voxels
    mask[6:10, 8:14, 25:33] = True  # 4 * 6 * 8 = 192 voxels
    return mask


def test_the_first_box_goes_around_the_largest_part():
    mask = two_blobs()
    assert largest_component(mask).sum() == 630
    lo, hi = first_box(mask)
    assert lo.tolist() == [5, 5, 3] and hi.tolist() == [11, 14, 11]
    one = np.zeros_like(mask)
    one[2:9, 4:6, 7:30] = True
    one[9, 6, 30] = True  # touching by a corner only: still one piece
    assert all((a == b).all() for a, b in zip(first_box(one), foreground_bounds(one)))
    assert first_box(np.zeros_like(mask)) is None


class Recording:
    """A session that records the box it is given and answers nothing."""

    prompt_types = frozenset({"box", "point"})

    def __init__(self, shape):
        self.mask = np.zeros(shape, np.uint8)
        self.boxes = []

    def set_target(self, name):
        pass

    def add_box(self, corner_a, corner_b):
        self.boxes.append((corner_a, corner_b))
        return Result(region=(), score=0.0, member="none", latency_ms=0.0)

    def add_point(self, ras, positive=True):
        return Result(region=(), score=0.0, member="none", latency_ms=0.0)


def test_the_protocol_boxes_the_largest_part_on_the_volume_grid():
    subject = ct_phantom(3, oblique=True)
    kidneys = np.isin(subject.label.array, [PHANTOM_LABELS["right kidney"], PHANTOM_LABELS["left kidney"]])
    session = Recording(kidneys.shape)
    run_protocol(session, subject.image, kidneys, 1, "box", target="kidneys")
    low, high = np.minimum(*session.boxes[0]), np.maximum(*session.boxes[0])

    def inside(value):  # share of the kidney's voxel centres inside the box (RAS)
        ras = ijk_to_ras_points(np.argwhere(subject.label.array == value)[:, ::-1], subject.image.ijk_to_ras)
        return np.mean(np.all((ras >= low - 1e-6) & (ras <= high + 1e-6), axis=1))

    # the larger kidney (377 voxels against 301) whole, the other not at all
    assert inside(PHANTOM_LABELS["left kidney"]) == 1.0 and inside(PHANTOM_LABELS["right kidney"]) == 0.0


def test_both_kidneys_in_one_label_are_no_longer_dice_0():
    """The random walker on one label of both kidneys: one box around both gave 0.000 at every
    prompt; a box around the larger kidney, then a click on the other, does not."""
    subject = ct_phantom(3, oblique=True)
    kidneys = np.isin(subject.label.array, [PHANTOM_LABELS["right kidney"], PHANTOM_LABELS["left kidney"]])
    session = RandomWalkerSession()
    session.set_image(subject.image)
    run = run_protocol(session, subject.image, kidneys, 2, "box", target="kidneys")
    assert run.prompts == ["box", "+"]
    assert run.dice[0] > 0.5 and run.dice[1] > run.dice[0]


def test_first_prompts_read_the_same_boxes():
    """A region of two separate parts gets the box of its larger part: the same box as that part's own
    target, which then starts with a click (a box would name the region)."""
    label = np.zeros((20, 30, 40), np.uint8)
    label[5:12, 5:15, 3:12] = 1
    label[6:10, 8:14, 25:33] = 2
    kinds = first_prompts(label, {"both": (1, 2), "large": (1,), "small": (2,)})
    assert kinds == {"both": {"box"}, "large": {"click"}, "small": {"box", "click"}}
