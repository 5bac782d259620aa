"""Files that cannot be read as they claim, and saves that fail (issue 19, items 6 and 7): complex
voxels and two segments of one name are refused naming the file and the field; a failed save leaves
no half-written file or folder and the file it was replacing as it was."""

import errno
import os

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import ka2er_core.io as io_module
import ka2er_core.io.segmentation as segmentation_module
from ka2er_core import Volume, load_segmentation, load_volume, save_segmentation, save_volume
from ka2er_core.cli import main
from ka2er_core.errors import UnreadableFileError, UnwritableFileError
from ka2er_core.io.atomic import atomic_write
from ka2er_core.io.segmentation import seg_nrrd_content


def test_complex_voxels_are_refused_naming_the_file_and_the_type(tmp_path, capsys):
    path = tmp_path / "raw.nii.gz"
    data = np.ones((4, 5, 6), np.complex64) * (1 + 2j)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(UnreadableFileError) as caught:
        load_volume(path)
    assert str(caught.value).startswith(f"{path}: dtype: complex64 voxels are not supported")
    assert main(["info", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"ka2er: error: {caught.value}"]


def test_two_segments_of_one_name_are_refused_not_merged(tmp_path):
    """Merging them (the second mask replacing the first under one name) would lose voxels."""
    first, second = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    first[1, 1, 1] = second[2, 2, 2] = True
    array, header = seg_nrrd_content({"Liver": first, "Liver 2": second}, np.eye(4), None)
    header["Segment1_Name"] = "Liver"
    path = tmp_path / "twice.seg.nrrd"
    nrrd.write(str(path), np.ascontiguousarray(array), header, index_order="C")
    for read in (load_segmentation, load_volume):
        with pytest.raises(UnreadableFileError) as caught:
            read(path)
        assert str(caught.value) == (f"{path}: Segment1_Name: segments 0 and 1 are both named "
                                     "'Liver'; rename one (in Slicer's Segment Editor) so that each "
                                     "name is one segment")

    header["Segment1_Name"] = "Liver 2"  # the same file with distinct names reads both
    nrrd.write(str(path), np.ascontiguousarray(array), header, index_order="C")
    masks = load_segmentation(path).masks
    assert masks["Liver"].sum() == 1 and masks["Liver 2"].sum() == 1


def disk_full_after_half(path, array, header):
    """A NRRD writer on a disk that fills up half way through the file."""
    with open(path, "wb") as stream:
        stream.write(b"NRRD0004\n# half a file")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_save_leaves_nothing_half_written(tmp_path, monkeypatch):
    image = Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.eye(4))
    mask = image.array > 30
    existing = save_segmentation(tmp_path / "result.seg.nrrd", {"Liver": mask}, reference=image)
    before = existing.read_bytes()

    for writer in (io_module, segmentation_module):
        monkeypatch.setattr(writer, "write_nrrd", disk_full_after_half)
    nested = tmp_path / "new" / "deeper" / "result.seg.nrrd"
    for path in (existing, nested):
        with pytest.raises(UnwritableFileError) as caught:
            save_segmentation(path, {"Liver": ~mask}, reference=image)
        assert str(caught.value) == f"{path}: cannot write (No space left on device)"
    with pytest.raises(UnwritableFileError):
        save_volume(tmp_path / "image.nrrd", image)
    assert existing.read_bytes() == before  # the file it was replacing, as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.seg.nrrd"]  # no temporary file,
    #                                                                           no folder it made


def test_saving_where_a_folder_or_a_file_stands_is_one_clear_error(tmp_path):
    image = Volume(np.zeros((3, 4, 5), np.float32), np.eye(4))
    (tmp_path / "picture.nrrd").mkdir()
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(UnwritableFileError, match="picture.nrrd: expected a file, found a folder"):
        save_volume(tmp_path / "picture.nrrd", image)
    under_a_file = tmp_path / "a-file" / "image.nrrd"
    with pytest.raises(UnwritableFileError) as caught:
        save_volume(under_a_file, image)
    assert str(caught.value) == (f"{under_a_file}: cannot write under {tmp_path / 'a-file'}: it is "
                                 "a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "picture.nrrd"]
    assert (tmp_path / "a-file").read_text() == "mine"


def test_a_written_file_has_a_normal_files_mode(tmp_path):
    """A writer that makes its own file (safetensors does, private) still leaves a file others may
    read, as any file the user saves (bundles' weight files were 0600)."""
    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "weights.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(umask)
    assert (tmp_path / "weights.safetensors").stat().st_mode & 0o777 == 0o644
