"""Outputs that cannot be written, on the command line (issue 19, items 6 and 7): an output under a
file, a file where a folder goes (or the reverse), a read-only folder, a full disk, a folder where a
picture goes: one line naming the file and the option, exit 2, no traceback; a failed ``ka2er demo``
leaves its old folder as it was, and nothing the user had is lost."""

import errno
import json
import os

import numpy as np
import pytest

import ka2er_core.demo as demo_module
import ka2er_core.evaluation.report as report_module
from command_line import one_error_line
from ka2er_core.bundle import STUDENT_BUNDLE
from ka2er_core.cli import main
from ka2er_core.evaluation.protocol import ProtocolRun
from ka2er_core.io.atomic import atomic_write
from ka2er_core.volume import Volume


@pytest.fixture
def canned_evaluation(monkeypatch):
    """``evaluate`` without running a model: one run of two prompts (its writing is under test)."""
    def evaluated(bundle, folders, prompts, **kwargs):
        run = ProtocolRun([0.5, 0.8], [20.0, 10.0], ["general"] * 2, ["box", "+"])
        return report_module.summarise(
            [{"task": "Dataset001", "case": "c1", "target": "liver", "first": "box",
              **run.to_dict()}], {"bundle": "demo", "prompts": prompts, "first": "box",
                                  "split": "test"})

    monkeypatch.setattr(report_module, "evaluate_bundle", evaluated)


def demo_run() -> demo_module.DemoRun:
    """What :func:`~ka2er_core.demo.segment_subject` returns, small and made up (the writing of
    the demo's files is under test, not the model)."""
    grid = np.zeros((12, 14, 16), np.float32)
    grid[3:9, 4:10, 5:11] = 100
    image = Volume(grid, np.diag([2.0, 2.0, 2.0, 1.0]))
    brain = grid > 0
    white = np.zeros_like(brain)
    white[5:7, 6:8, 7:9] = True
    references = {"brain": brain, "white matter": white, "grey matter": brain & ~white}
    runs = {"brain": ProtocolRun([0.7, 0.8, 0.9], [30.0, 10.0, 10.0], ["general"] * 3,
                                 ["box", "+", "-"]),
            "white matter": ProtocolRun([0.5] * 5, [10.0] * 5, ["general"] * 5, ["+"] * 5)}
    prompts = {"brain": [("box", np.array([[10.0, 8, 6], [20, 18, 16]])),
                         ("+", np.array([[14.0, 12, 10]])), ("-", np.array([[12.0, 12, 10]]))],
               "white matter": [("+", np.array([[15.0, 13, 11]]))] * 5}
    masks = {"brain": brain.astype(np.uint8), "white matter": white.astype(np.uint8)}
    return demo_module.DemoRun("tiny", "cpu", "made up", image, references, masks, runs, prompts)


@pytest.fixture
def canned_demo(monkeypatch):
    monkeypatch.setattr(demo_module, "segment_subject", lambda model, device, progress: demo_run())
    return ["demo", "--bundle", str(STUDENT_BUNDLE)]


def test_the_demo_replaces_an_old_report_only_when_every_file_is_written(tmp_path, capsys,
                                                                         monkeypatch, canned_demo):
    out = tmp_path / "ka2er-demo"
    assert main([*canned_demo, "--out", str(out)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == sorted(demo_module.FILES)
    old = {p.name: p.read_bytes() for p in out.iterdir()}

    def dice_on_a_full_disk(path, runs, seed):  # the last picture, all other files written
        with atomic_write(path) as tmp:
            tmp.write_bytes(b"half a picture")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(demo_module, "draw_dice", dice_on_a_full_disk)
    assert main([*canned_demo, "--out", str(out)]) == 2
    assert one_error_line(capsys).endswith(f"{out / 'dice.png'}: cannot write (No space left on "
                                           "device)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # the old report, nothing new
    assert [p.name for p in tmp_path.iterdir()] == ["ka2er-demo"]  # no temporary folder left

    monkeypatch.undo()  # segment_subject is real again: the folder is refused before it runs
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "--bundle", str(tmp_path / "no-such-bundle"), "--out", str(out)]) == 2
    assert one_error_line(capsys).endswith(f"{out / 'notes.txt'}: ka2er demo replaces its folder "
                                           "whole, and 'notes.txt' is not a file it writes: choose "
                                           "another --out, or move it away")
    assert (out / "notes.txt").read_text() == "mine" and (out / "report.json").read_bytes() == old[
        "report.json"]


def test_a_file_written_into_the_demo_folder_is_named_where_it_would_have_been(
        tmp_path, capsys, monkeypatch, canned_demo):
    """The failure names the file under --out, not under the temporary folder that is gone."""
    import ka2er_core.io as io_module

    def no_permission(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(io_module, "write_nrrd", no_permission)
    out = tmp_path / "new" / "ka2er-demo"
    assert main([*canned_demo, "--out", str(out)]) == 2
    assert one_error_line(capsys).endswith(f"{out / demo_module.IMAGE_FILE}: cannot write "
                                           "(Permission denied)")
    assert list(tmp_path.iterdir()) == []  # not even the folder "new" it made for the output


@pytest.mark.parametrize("command", ["demo", "evaluate", "segment", "data", "export"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(command, tmp_path, capsys,
                                                                     monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    a_folder = tmp_path / "a-folder"
    a_folder.mkdir()
    option = "--monai" if command == "export" else "--out"
    run = {"demo": ["demo"], "evaluate": ["evaluate", "--dataset", str(tmp_path)],
           "segment": ["segment", str(tmp_path / "image.nrrd"), "--bundle", str(tmp_path)],
           "data": ["data"], "export": ["bundle", "export", str(STUDENT_BUNDLE)]}[command]
    wanted = "a file" if command == "segment" else "a folder"
    cases = [(a_file / "out", f"cannot write under {a_file}: it is a file, not a folder"),
             (a_folder if command == "segment" else a_file,
              f"expected {wanted}, found {'a folder' if command == 'segment' else 'a file'}")]
    for out, problem in cases:
        assert main([*run, option, str(out)]) == 2
        assert one_error_line(capsys).endswith(f"{out}: {option}: {problem}")

    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only folder (as root,
    out = tmp_path / "new" / "out"                                # chmod cannot make one)
    assert main([*run, option, str(out)]) == 2
    assert one_error_line(capsys).endswith(f"{out}: {option}: cannot write into {tmp_path} "
                                           "(permission denied)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder"]
    assert a_file.read_text() == "mine" and list(a_folder.iterdir()) == []


def test_evaluate_with_a_folder_where_its_picture_goes_is_one_line(tmp_path, capsys,
                                                                   canned_evaluation):
    out = tmp_path / "evaluation"
    (out / "dice.png").mkdir(parents=True)
    (out / "dice.png" / "mine.txt").write_text("mine")
    assert main(["evaluate", "--dataset", str(tmp_path), "--out", str(out)]) == 2
    assert one_error_line(capsys).endswith(f"{out / 'dice.png'}: expected a file, found a folder")
    assert (out / "dice.png" / "mine.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left

    (out / "dice.png" / "mine.txt").unlink()
    (out / "dice.png").rmdir()
    assert main(["evaluate", "--dataset", str(tmp_path), "--out", str(out)]) == 0
    assert (out / "dice.png").is_file() and json.loads((out / "report.json").read_text())["summary"]


def test_evaluate_names_a_file_where_a_method_folder_goes(tmp_path, capsys):
    """With several bundles, evaluate writes one folder per method under --out: a file there is one
    line naming it, exit 2, no traceback."""
    from ka2er_core.bundle import STUDENT_BUNDLE
    from ka2er_core.cli import main
    from ka2er_core.data.sample import write_sample_dataset

    folder = write_sample_dataset(tmp_path / "data", n_train=1, n_test=1, tasks=["Dataset003_CTPhantom"])[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "random_walker").write_text("not a folder")
    code = main(["evaluate", "--dataset", str(folder), "--baseline", "--bundle",
                 str(STUDENT_BUNDLE), "--prompts", "1", "--out", str(out)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(error)
    assert "random_walker" in error[-1]
