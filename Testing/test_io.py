"""Volume and segmentation files: exact round trips, Slicer's .seg.nrrd read back by slicerio, and
one clear error per kind of bad input."""

import gzip
import os

import nibabel as nib
import nrrd
import numpy as np
import pytest
import slicerio

from conftest import random_ijk_to_ras
from ka2er_core import Volume, load_segmentation, load_volume, save_segmentation, save_volume
from ka2er_core.errors import (GeometryMismatchError, InvalidSpacingError, NonFiniteVoxelsError,
                               NotThreeDimensionalError, SingularDirectionError,
                               UnreadableFileError)
from ka2er_core.geometry import LPS_FROM_RAS
from ka2er_core.io.segmentation import OverlappingSegmentsError


def float32_exact(matrix):
    return matrix.astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_save_load_round_trip_is_exact(tmp_path, rng, suffix, dtype):
    ijk_to_ras = random_ijk_to_ras(rng, spacing=(0.6, 1.3, 2.7))
    if suffix.startswith(".nii"):  # NIfTI stores the matrix as float32
        ijk_to_ras = float32_exact(ijk_to_ras)
    array = (rng.normal(size=(7, 9, 11)) * 100).astype(dtype)
    path = save_volume(tmp_path / f"vol{suffix}", Volume(array, ijk_to_ras))
    loaded = load_volume(path)
    assert loaded.array.dtype == array.dtype
    np.testing.assert_array_equal(loaded.array, array)
    np.testing.assert_array_equal(loaded.ijk_to_ras, ijk_to_ras)
    assert loaded.path == str(path)


def test_nrrd_is_written_in_lps_like_slicer(tmp_path, rng):
    ijk_to_ras = random_ijk_to_ras(rng)
    save_volume(tmp_path / "v.nrrd", Volume(np.zeros((3, 4, 5), np.int16), ijk_to_ras))
    array, header = nrrd.read(str(tmp_path / "v.nrrd"))  # pynrrd's default: (i, j, k)
    assert array.shape == (5, 4, 3)
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space directions"].T, (LPS_FROM_RAS @ ijk_to_ras)[:3, :3])


def test_raw_and_gzip_nrrd_read_the_same(tmp_path, rng):
    array = rng.integers(0, 1000, size=(4, 5, 6)).astype(np.int16)
    for encoding in ("raw", "gzip"):
        header = {"space": "RAS", "space directions": np.diag([1.0, 2.0, 3.0]),
                  "space origin": np.array([1.0, 2.0, 3.0]), "encoding": encoding}
        nrrd.write(str(tmp_path / f"{encoding}.nrrd"), array, header, index_order="C")
        loaded = load_volume(tmp_path / f"{encoding}.nrrd")
        np.testing.assert_array_equal(loaded.array, array)
        np.testing.assert_array_equal(loaded.spacing, [1.0, 2.0, 3.0])


def make_masks(shape):
    k, j, i = np.indices(shape)
    liver = ((i - 10) ** 2 + (j - 9) ** 2 + (k - 6) ** 2) < 25
    kidney = (abs(i - 3) < 2) & (abs(j - 4) < 3) & (abs(k - 3) < 2)
    tumor = ((i - 12) ** 2 + (j - 9) ** 2 + (k - 6) ** 2) < 6  # overlaps the liver
    return {"Liver": liver, "Kidney": kidney, "Tumor": tumor}


def test_seg_nrrd_read_back_by_slicerio(tmp_path, rng):
    shape = (12, 16, 18)
    reference = Volume(np.zeros(shape, np.int16), random_ijk_to_ras(rng))
    masks = make_masks(shape)
    colors = {"Liver": (0.8, 0.3, 0.2)}
    path = save_segmentation(tmp_path / "out.seg.nrrd", masks, reference=reference, colors=colors)

    seg = slicerio.read_segmentation(str(path))
    np.testing.assert_allclose(seg["ijkToLPS"], LPS_FROM_RAS @ reference.ijk_to_ras, atol=1e-12)
    by_name = {s["name"]: s for s in seg["segments"]}
    assert list(by_name) == ["Liver", "Kidney", "Tumor"]
    assert [by_name[n]["labelValue"] for n in by_name] == [1, 2, 3]
    assert by_name["Liver"]["color"] == pytest.approx(colors["Liver"])
    assert by_name["Tumor"]["layer"] != by_name["Liver"]["layer"]  # overlap -> separate layers
    voxels = seg["voxels"]  # slicerio: (layer, i, j, k)
    for name, mask in masks.items():
        s = by_name[name]
        layer = voxels[s["layer"]] if voxels.ndim == 4 else voxels
        np.testing.assert_array_equal(layer.transpose(2, 1, 0) == s["labelValue"], mask)

    ours = load_segmentation(path)
    assert list(ours.masks) == ["Liver", "Kidney", "Tumor"]
    for name, mask in masks.items():
        np.testing.assert_array_equal(ours.masks[name].astype(bool), mask)
    np.testing.assert_allclose(ours.ijk_to_ras, reference.ijk_to_ras, atol=1e-12)


def test_seg_nrrd_without_overlap_is_one_layer_and_a_label_map(tmp_path, rng):
    shape = (12, 16, 18)
    reference = Volume(np.zeros(shape, np.int16), random_ijk_to_ras(rng))
    masks = {k: v for k, v in make_masks(shape).items() if k != "Tumor"}
    path = save_segmentation(tmp_path / "two.seg.nrrd", masks, reference=reference)
    assert slicerio.read_segmentation(str(path))["voxels"].ndim == 3
    label_map = load_volume(path)
    assert label_map.labels == {"Liver": 1, "Kidney": 2}
    np.testing.assert_array_equal(label_map.array == 1, masks["Liver"])
    np.testing.assert_array_equal(label_map.array == 2, masks["Kidney"])


def test_seg_nrrd_with_overlap_as_label_map_says_how_to_read_it(tmp_path, rng):
    shape = (12, 16, 18)
    reference = Volume(np.zeros(shape, np.int16), random_ijk_to_ras(rng))
    path = save_segmentation(tmp_path / "o.seg.nrrd", make_masks(shape), reference=reference)
    with pytest.raises(OverlappingSegmentsError, match="load_segmentation"):
        load_volume(path)


def test_nifti_label_map(tmp_path, rng):
    shape = (12, 16, 18)
    reference = Volume(np.zeros(shape, np.int16), float32_exact(random_ijk_to_ras(rng)))
    masks = {k: v for k, v in make_masks(shape).items() if k != "Tumor"}
    path = save_segmentation(tmp_path / "labels.nii.gz", masks, reference=reference)
    loaded = load_volume(path)
    np.testing.assert_array_equal(loaded.array, masks["Liver"] * 1 + masks["Kidney"] * 2)
    np.testing.assert_array_equal(loaded.ijk_to_ras, reference.ijk_to_ras)
    with pytest.raises(OverlappingSegmentsError, match="Tumor"):
        save_segmentation(tmp_path / "bad.nii.gz", make_masks(shape), reference=reference)
    assert not (tmp_path / "bad.nii.gz").exists()


def test_mask_on_another_grid_is_refused(tmp_path, rng):
    reference = Volume(np.zeros((4, 5, 6), np.int16), np.eye(4))
    with pytest.raises(GeometryMismatchError, match=r"'Liver'.*\(4, 5, 6\)"):
        save_segmentation(tmp_path / "x.seg.nrrd", {"Liver": np.ones((4, 5, 7))}, reference)
    shifted = Volume(np.ones((4, 5, 6), np.uint8), np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(GeometryMismatchError, match="different grid"):
        save_segmentation(tmp_path / "x.seg.nrrd", {"Liver": shifted}, reference)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "keep.seg.nrrd"
    reference = Volume(np.zeros((4, 5, 6), np.int16), np.eye(4))
    save_segmentation(path, {"A": np.ones((4, 5, 6))}, reference)
    before = path.read_bytes()

    import ka2er_core.io.nrrd_format as nrrd_format

    def failing_write(*args, **kwargs):
        with open(args[0], "wb") as partial:
            partial.write(b"NRRD0005\npartial")
        raise OSError("disk full")

    monkeypatch.setattr(nrrd_format.nrrd, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_segmentation(path, {"B": np.zeros((4, 5, 6))}, reference)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.seg.nrrd"]


# ---- bad input: one error type per kind, naming the file and the field ----

def test_truncated_nifti(tmp_path, rng):
    path = tmp_path / "t.nii.gz"
    save_volume(path, Volume(rng.normal(size=(20, 20, 20)).astype(np.float32), np.eye(4)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableFileError, match="t.nii.gz"):
        load_volume(path)


def test_truncated_nrrd(tmp_path, rng):
    path = tmp_path / "t.nrrd"
    save_volume(path, Volume(rng.normal(size=(20, 20, 20)).astype(np.float32), np.eye(4)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(UnreadableFileError, match="t.nrrd"):
        load_volume(path)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(UnreadableFileError, match="no such file"):
        load_volume(tmp_path / "absent.nrrd")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(UnreadableFileError, match=r"x.png: extension: .*\.nii\.gz"):
        load_volume(tmp_path / "x.png")


def test_two_dimensional_image(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 9), np.float32), np.eye(4)), str(tmp_path / "s.nii"))
    with pytest.raises(NotThreeDimensionalError, match="s.nii: dim: expected a 3D volume"):
        load_volume(tmp_path / "s.nii")
    nrrd.write(str(tmp_path / "s.nrrd"), np.zeros((8, 9), np.float32))
    with pytest.raises(NotThreeDimensionalError, match="s.nrrd"):
        load_volume(tmp_path / "s.nrrd")


def test_multi_frame_nifti_is_not_3d_but_one_frame_is(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.float32), np.eye(4)), str(tmp_path / "f.nii"))
    with pytest.raises(NotThreeDimensionalError, match=r"\(4, 5, 6, 3\)"):
        load_volume(tmp_path / "f.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 1), np.float32), np.eye(4)), str(tmp_path / "o.nii"))
    assert load_volume(tmp_path / "o.nii").shape == (6, 5, 4)


def test_nan_voxels(tmp_path):
    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    array[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / "n.nii.gz"))
    with pytest.raises(NonFiniteVoxelsError, match="n.nii.gz: voxels: 2 voxels are NaN or Inf"):
        load_volume(tmp_path / "n.nii.gz")


def test_zero_spacing_and_singular_direction(tmp_path):
    header = {"space": "LPS", "space directions": np.diag([1.0, 0.0, 1.0])}
    nrrd.write(str(tmp_path / "z.nrrd"), np.zeros((3, 3, 3), np.int16), header)
    with pytest.raises(InvalidSpacingError, match="z.nrrd: spacing"):
        load_volume(tmp_path / "z.nrrd")
    header = {"space": "LPS", "space directions": np.array([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]])}
    nrrd.write(str(tmp_path / "s.nrrd"), np.zeros((3, 3, 3), np.int16), header)
    with pytest.raises(SingularDirectionError, match="s.nrrd: direction"):
        load_volume(tmp_path / "s.nrrd")
    with pytest.raises(InvalidSpacingError):
        Volume(np.zeros((2, 2, 2)), np.diag([1.0, -0.0, 1.0, 1.0]))


def test_unsupported_nrrd_space(tmp_path):
    header = {"space": "scanner-xyz", "space directions": np.eye(3)}
    nrrd.write(str(tmp_path / "x.nrrd"), np.zeros((3, 3, 3), np.int16), header)
    with pytest.raises(UnreadableFileError, match="x.nrrd: space: unsupported space"):
        load_volume(tmp_path / "x.nrrd")


def test_gzip_stream_is_validated_not_trusted(tmp_path):
    path = tmp_path / "g.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header" * 30))
    with pytest.raises(UnreadableFileError, match="g.nii.gz"):
        load_volume(path)
