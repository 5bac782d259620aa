"""The ``ka2er`` command as a user runs it: a real subprocess, its output and exit code."""

import subprocess
import sys

import nibabel as nib
import numpy as np

from ka2er_core import Volume, save_segmentation, save_volume


def ka2er(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ka2er_core.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_for_every_command():
    for command in ([], ["info"], ["data"], ["demo"]):
        result = ka2er(*command, "--help")
        assert result.returncode == 0, result.stderr
        assert "usage: ka2er" in result.stdout


def test_info_reports_geometry_intensity_and_labels(tmp_path):
    matrix = np.diag([-0.5, -0.5, 2.0, 1.0])
    matrix[:3, 3] = [10, 20, -30]
    image = Volume(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 7, matrix)
    save_volume(tmp_path / "ct.nrrd", image)
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:4, 2:5] = True
    save_segmentation(tmp_path / "seg.seg.nrrd", {"Liver": mask}, reference=image)
    save_segmentation(tmp_path / "labels.nii.gz", {"Liver": mask, "Spleen": ~mask}, reference=image)

    result = ka2er("info", tmp_path / "ct.nrrd", tmp_path / "seg.seg.nrrd", tmp_path / "labels.nii.gz")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "size (i j k) 6 x 5 x 4 voxels" in out
    assert "spacing      0.5 x 0.5 x 2 mm" in out
    assert "orientation  LPS (axis-aligned)" in out
    assert "min -7, max 112" in out
    assert "Liver (label 1): 18 voxels" in out
    assert "label 1: 18 voxels" in out and f"label 2: {120 - 18} voxels" in out


def test_info_on_truncated_nifti_and_2d_image_gives_one_line_each(tmp_path):
    good = tmp_path / "good.nii.gz"
    save_volume(good, Volume(np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32),
                             np.eye(4)))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:3000])
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), str(flat))

    for path in (truncated, flat):
        result = ka2er("info", path)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("ka2er: error: ") and str(path) in lines[0]
        assert "Traceback" not in result.stderr
    assert "2D" in ka2er("info", flat).stderr or "3D" in ka2er("info", flat).stderr


def test_bad_arguments_exit_non_zero():
    assert ka2er("data", "--out", "x", "--train", "0").returncode == 2
    assert ka2er("no-such-command").returncode == 2


def test_data_command_writes_folders_the_reader_loads(tmp_path):
    from ka2er_core.data import load_dataset

    result = ka2er("data", "--out", tmp_path / "sample", "--train", 1, "--test", 1)
    assert result.returncode == 0, result.stderr
    folders = result.stdout.split()
    assert len(folders) == 4 and "Dataset001_MNIT1" in folders[0]
    assert "Dataset001_MNIT1" in result.stderr  # progress per case
    for folder in folders:
        dataset = load_dataset(folder)
        images, label = dataset.cases[0].load()
        assert label.array.any()

