"""``ka2er demo`` as a user runs it: the shipped model on a held-out MNI152 pseudo-subject, the files
it writes, what it prints, and one clear line for a wrong bundle. The demo runs once per module."""

import json
import subprocess
import sys

import numpy as np
import pytest
import slicerio
from PIL import Image

from ka2er_core import load_volume
from ka2er_core.cli import main
from ka2er_core.geometry import LPS_FROM_RAS

FILES = ("mni_t1_10000.nrrd", "result.seg.nrrd", "reference.seg.nrrd", "slices_brain.png",
         "slices_white_matter.png", "dice.png", "report.json")
PROMPTS = {"brain": 3, "white matter": 5}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    result = subprocess.run([sys.executable, "-m", "ka2er_core.cli", "demo", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out, result


def test_demo_writes_every_file(demo):
    out, _ = demo
    for name in FILES:
        assert (out / name).stat().st_size > 0, name


def test_result_segmentation_reads_back_in_slicerio_with_names_colours_and_geometry(demo):
    out, _ = demo
    volume = load_volume(out / "mni_t1_10000.nrrd")
    result = slicerio.read_segmentation(str(out / "result.seg.nrrd"))
    assert [s["name"] for s in result["segments"]] == ["brain", "white matter"]
    assert all(len(s["color"]) == 3 for s in result["segments"])
    np.testing.assert_allclose(result["ijkToLPS"], LPS_FROM_RAS @ volume.ijk_to_ras, atol=1e-6)
    assert list(result["referenceImageExtentOffset"]) == [0, 0, 0]
    assert result["voxels"].shape[-3:] == volume.shape[::-1]  # slicerio reads (i, j, k)
    reference = slicerio.read_segmentation(str(out / "reference.seg.nrrd"))
    assert [s["name"] for s in reference["segments"]] == ["brain", "white matter", "grey matter"]


def test_report_has_dice_and_latency_for_every_prompt(demo):
    out, _ = demo
    report = json.loads((out / "report.json").read_text())
    assert report["files_identical_after_readback"] is True
    for target, prompts in PROMPTS.items():
        run = report["targets"][target]
        assert len(run["dice"]) == len(run["latency_ms"]) == len(run["members"]) == prompts
        assert all(ms > 0 for ms in run["latency_ms"]), run["latency_ms"]
        assert run["prompts"][0] == ("box" if target == "brain" else "+")
    assert report["targets"]["brain"]["dice"][-1] > 0.8  # the shipped model does segment the brain


def test_pictures_are_images_of_sensible_size(demo):
    out, _ = demo
    for name in ("slices_brain.png", "slices_white_matter.png", "dice.png"):
        with Image.open(out / name) as picture:
            picture.verify()
        with Image.open(out / name) as picture:
            width, height = picture.size
            assert picture.format == "PNG"
        assert 500 <= width <= 3000 and 300 <= height <= 2000, (name, width, height)


def test_output_is_one_line_per_prompt_then_how_to_open_it(demo):
    _, result = demo
    prompt_lines = [line for line in result.stderr.splitlines() if " prompt " in line]
    assert len(prompt_lines) == sum(PROMPTS.values()), result.stderr
    assert all("Dice" in line and " ms" in line and "model: " in line for line in prompt_lines)
    assert "brain        prompt 1/3 box" in prompt_lines[0]
    assert "white matter prompt 1/5 + click" in prompt_lines[3]
    assert "files read back identical: True" in result.stdout
    assert "File > Add Data" in result.stdout and "result.seg.nrrd" in result.stdout
    assert "ka2er serve --token-file TOKEN --host 0.0.0.0 --port 8000" in result.stdout
    assert len(result.stdout.splitlines()) + len(result.stderr.splitlines()) <= 30
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr


def test_wrong_bundle_gives_one_error_line(tmp_path, capsys):
    missing = tmp_path / "no-such-bundle"
    assert main(["demo", "--bundle", str(missing), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ka2er: error: ") and str(missing) in lines[0]
    assert not (tmp_path / "out").exists()
