"""Issue 23 item 6: ``ka2er info`` on a float32 label map lists labels and counts; ``import-nnunet``
on a fold without the default checkpoint lists what the fold holds and names ``--checkpoint``; the
demo's panels pass through the target's centre where the slice through the last click would cut a
sliver of it."""

import numpy as np
import pytest

from command_line import one_error_line
from importer_fixtures import ARCH, ReferenceUNet, write_model_folder
from ka2er_core.cli import main
from ka2er_core.demo import VIEWS, panel_planes
from ka2er_core.geometry import canonical_grid, ijk_to_ras_points
from ka2er_core.info import describe_file, label_counts
from ka2er_core.io import save_volume
from ka2er_core.volume import Volume


def test_a_float_label_map_reads_as_labels_with_counts(tmp_path, capsys):
    labels = np.zeros((6, 7, 8), np.float32)
    labels[1:3, 1:3, 1:3] = 1.0  # 8 voxels
    labels[4, 4, 2:7] = 2.0  # 5 voxels
    path = save_volume(tmp_path / "labels.nii.gz", Volume(labels, np.diag([1.0, 1.0, 2.0, 1.0])))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "NIfTI label map" in out and "dtype        float32" in out
    assert "labels       2\n    label 1: 8 voxels\n    label 2: 5 voxels" in out


@pytest.mark.parametrize("values, labels", [
    (np.array([0.0, 1.0, 3.0]), {1: 1, 3: 1}),
    (np.array([0.0, 0.5, 1.0]), None),  # fractions: intensities
    (np.array([-1000.0, 40.0, 60.0]), None),  # negative: CT in HU
    (np.arange(100, dtype=np.float32), None),  # too many values for labels
    (np.array([0, 2, 2], np.int16), {2: 2}),
])
def test_which_arrays_are_label_maps(values, labels):
    assert label_counts(values.reshape(1, 1, -1)) == labels


def test_a_float_image_still_reads_as_an_image(tmp_path):
    image = np.random.default_rng(0).normal(100, 20, (4, 5, 6)).astype(np.float32)
    path = save_volume(tmp_path / "image.nrrd", Volume(image, np.eye(4)))
    text = describe_file(path)
    assert "NRRD image" in text and "labels" not in text


def test_a_fold_without_the_default_checkpoint_lists_its_files_and_names_the_option(tmp_path,
                                                                                   capsys):
    folder = tmp_path / "model"
    write_model_folder(folder, ReferenceUNet(ARCH, 3), "CTNormalization")
    fold = folder / "fold_all"
    (fold / "checkpoint_final.pth").rename(fold / "checkpoint_best.pth")
    (fold / "progress.png").write_bytes(b"png")
    assert main(["bundle", "import-nnunet", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert one_error_line(capsys) == (
        f"ka2er: error: {fold / 'checkpoint_final.pth'}: no such file (fold_all holds "
        "checkpoint_best.pth, progress.png); choose a checkpoint with --checkpoint, e.g. "
        "--checkpoint checkpoint_best.pth")
    assert main(["bundle", "import-nnunet", str(folder), "--out", str(tmp_path / "out"),
                 "--checkpoint", "checkpoint_best.pth"]) == 0
    capsys.readouterr()
    assert main(["bundle", "import-nnunet", str(folder), "--out", str(tmp_path / "out2"),
                 "--fold", "0"]) == 2
    assert one_error_line(capsys).endswith("no such file (folds here: fold_all); choose one with "
                                           "--fold (fold_all is --fold all)")


def test_a_panel_through_a_click_at_a_pole_passes_through_the_targets_centre():
    """A target long along A (an ellipsoid, like the brain from the front); a click at its anterior
    pole: the coronal slice through the click cuts a sliver, so that panel passes through the
    centre; the axial and sagittal slices through the click cut it through the middle and stay."""
    shape = (30, 40, 30)  # (k, j, i); j runs along A
    image = Volume(np.zeros(shape, np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    k, j, i = np.indices(shape)
    truth = ((k - 15) / 10) ** 2 + ((j - 20) / 17) ** 2 + ((i - 15) / 10) ** 2 <= 1
    canvas = canonical_grid(image.grid, [2.0] * 3)
    pole = ijk_to_ras_points(np.array([15.0, 36.0, 15.0]), image.ijk_to_ras)  # (i, j, k)
    planes = panel_planes(canvas, image, truth, pole)
    assert {view: through for view, (_, through) in planes.items()} == {
        "axial": "last click", "coronal": "target's centre", "sagittal": "last click"}
    coronal = VIEWS["coronal"][0]
    assert planes["coronal"][0].origin[coronal] == pytest.approx(40.0)  # j = 20: the centre, in mm
    middle = ijk_to_ras_points(np.array([15.0, 26.0, 15.0]), image.ijk_to_ras)
    assert all(through == "last click" for _, through in panel_planes(canvas, image, truth,
                                                                      middle).values())
