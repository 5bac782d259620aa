"""The sample writer and the MSD / nnU-Net v2 reader: round trip, and one clear error per bad folder."""

import json

import nibabel as nib
import numpy as np
import pytest

from ka2er_core import Volume, load_volume, save_volume
from ka2er_core.data import (SAMPLE_TASKS, TEST_SEEDS, TRAIN_SEEDS, load_dataset,
                             write_sample_dataset)
from ka2er_core.errors import DatasetError, GeometryMismatchError

AFFINE = np.array([[0.0, -1.5, 0.0, 20.0], [1.2, 0.0, 0.0, -10.0], [0.0, 0.0, 3.0, 5.0],
                   [0.0, 0.0, 0.0, 1.0]])  # a rotated, anisotropic grid


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    messages = []
    folders = write_sample_dataset(tmp_path_factory.mktemp("sample"), n_train=2, n_test=1,
                                   progress=messages.append)
    return folders, messages


def test_sample_has_one_folder_per_task_and_reports_each_case(sample):
    folders, messages = sample
    assert [f.name for f in folders] == list(SAMPLE_TASKS)
    assert len(messages) == len(folders) * 3
    modalities = {json.loads((f / "dataset.json").read_text())["ka2er"]["modality"] for f in folders}
    assert modalities == {"CT", "MR"}


def test_sample_round_trips_through_the_reader(sample):
    folders, _ = sample
    for folder in folders:
        meta = json.loads((folder / "dataset.json").read_text())
        provenance = meta["ka2er"]
        assert all(s in TRAIN_SEEDS for s in provenance["train_seeds"])
        assert all(s in TEST_SEEDS for s in provenance["test_seeds"])
        dataset = load_dataset(folder)
        assert dataset.name == folder.name and dataset.file_ending == ".nii.gz"
        assert (len(dataset.cases), len(dataset.test_cases)) == (2, 1)
        declared = {name: value for name, value in meta["labels"].items() if name != "background"}
        assert dataset.labels == {n: tuple(v) if isinstance(v, list) else v for n, v in declared.items()}
        if any(isinstance(v, list) for v in declared.values()):  # regions need an order in nnU-Net v2
            assert len(meta["regions_class_order"]) == len(declared)
        for case in dataset.cases + dataset.test_cases:
            images, label = case.load()
            assert len(images) == 1 and images[0].grid.same_as(label.grid)
            assert label.array.dtype == np.uint8
            plain = {n: v for n, v in declared.items() if isinstance(v, int)}
            assert label.labels == plain and set(np.unique(label.array)) == {0, *plain.values()}


def test_rewriting_with_fewer_cases_leaves_a_consistent_folder(tmp_path):
    task = ["Dataset003_CTPhantom"]
    write_sample_dataset(tmp_path, n_train=3, n_test=2, tasks=task)
    (folder,) = write_sample_dataset(tmp_path, n_train=1, n_test=1, tasks=task)
    dataset = load_dataset(folder)
    assert (len(dataset.cases), len(dataset.test_cases)) == (1, 1)
    assert len(list((folder / "labelsTs").iterdir())) == 1
    with pytest.raises(ValueError, match="Dataset999"):
        write_sample_dataset(tmp_path, tasks=["Dataset999_Nothing"])


def make_v2(root, *, cases=2, channels=1, ending=".nii.gz", test_cases=0):
    """A tiny nnU-Net v2 folder: (4, 5, 6) volumes on a rotated grid, labels 0-2."""
    rng = np.random.default_rng(0)
    labels = {"background": 0, "organ": 1, "tumour": 2}
    for split, count in (("Tr", cases), ("Ts", test_cases)):
        for n in range(count):
            case = f"case_{split.lower()}{n:03d}"
            for channel in range(channels):
                image = Volume(rng.normal(size=(4, 5, 6)).astype(np.float32), AFFINE)
                save_volume(root / f"images{split}" / f"{case}_{channel:04d}{ending}", image)
            label = Volume(rng.integers(0, 3, size=(4, 5, 6)).astype(np.uint8), AFFINE)
            save_volume(root / f"labels{split}" / f"{case}{ending}", label)
    meta = {"name": "Tiny", "channel_names": {str(c): f"MR{c}" for c in range(channels)},
            "labels": labels, "numTraining": cases, "file_ending": ending}
    write_json(root, meta)
    return meta


def write_json(root, meta):
    (root / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd"])
def test_nnunet_v2_folder_with_two_channels_and_a_test_split(tmp_path, ending):
    make_v2(tmp_path, channels=2, ending=ending, test_cases=1)
    (tmp_path / "imagesTr" / f"._case_tr000_0000{ending}").write_bytes(b"macOS resource fork")
    dataset = load_dataset(tmp_path)
    assert dataset.channel_names == ["MR0", "MR1"] and dataset.labels == {"organ": 1, "tumour": 2}
    assert [c.case_id for c in dataset.cases] == ["case_tr000", "case_tr001"]
    assert dataset.test_cases[0].label_path.name == f"case_ts000{ending}"
    images, label = dataset.cases[1].load()
    assert len(images) == 2 and all(image.grid.same_as(label.grid) for image in images)
    np.testing.assert_allclose(label.ijk_to_ras, AFFINE, atol=1e-5)
    np.testing.assert_array_equal(images[1].array, load_volume(dataset.cases[1].image_paths[1]).array)


def test_missing_or_malformed_dataset_json_names_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset\.json.*missing dataset\.json"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text('{"channel_names": {"0": "CT"},')
    with pytest.raises(DatasetError, match=r"dataset\.json: invalid JSON"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("field", ["channel_names", "labels", "file_ending"])
def test_missing_required_field_is_named(tmp_path, field):
    meta = make_v2(tmp_path)
    del meta[field]
    if field == "channel_names":
        del meta["file_ending"]  # then the folder is neither nnU-Net v2 nor MSD
    write_json(tmp_path, meta)
    with pytest.raises(DatasetError, match=rf"dataset\.json: {field}: required field is missing"):
        load_dataset(tmp_path)


def test_malformed_fields_are_named(tmp_path):
    meta = make_v2(tmp_path)
    for field, value in (("channel_names", {"0": "CT", "2": "PET"}), ("labels", {"organ": "one"}),
                         ("labels", {"organ": 300}), ("file_ending", "nii.gz"), ("numTraining", 5)):
        write_json(tmp_path, {**meta, field: value})
        with pytest.raises(DatasetError, match=rf"dataset\.json: {field}"):
            load_dataset(tmp_path)


def test_missing_channel_file_is_named(tmp_path):
    make_v2(tmp_path, channels=2)
    (tmp_path / "imagesTr" / "case_tr001_0001.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"case_tr001_0001\.nii\.gz: channel_names: missing channel 1"):
        load_dataset(tmp_path)


def test_label_without_image_and_image_without_label_are_named(tmp_path):
    make_v2(tmp_path)
    (tmp_path / "imagesTr" / "case_tr001_0000.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"labelsTr/case_tr001\.nii\.gz: label without image"):
        load_dataset(tmp_path)
    make_v2(tmp_path)
    (tmp_path / "labelsTr" / "case_tr000.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"labelsTr/case_tr000\.nii\.gz: image without label"):
        load_dataset(tmp_path)


def test_undeclared_label_values_are_named_on_load(tmp_path):
    make_v2(tmp_path)
    case = load_dataset(tmp_path).cases[0]
    label = load_volume(case.label_path)
    bad = label.array.copy()
    bad[0, 0, 0] = 7
    save_volume(case.label_path, label.with_array(bad))
    with pytest.raises(DatasetError,
                       match=r"case_tr000\.nii\.gz: labels: label values \[7\] are not declared"):
        case.load()
    save_volume(case.label_path, label.with_array(bad.astype(np.float32) / 2))
    with pytest.raises(DatasetError, match=r"case_tr000\.nii\.gz: voxels: .*non-integer"):
        case.load()


def test_image_label_geometry_mismatch_names_both_files(tmp_path):
    make_v2(tmp_path)
    case = load_dataset(tmp_path).cases[0]
    label = load_volume(case.label_path)
    shifted = label.ijk_to_ras.copy()
    shifted[:3, 3] += 2.0
    save_volume(case.label_path, Volume(label.array, shifted))
    with pytest.raises(GeometryMismatchError,
                       match=r"labelsTr/case_tr000\.nii\.gz: geometry: .*imagesTr/case_tr000_0000"):
        case.load()
    save_volume(case.label_path, Volume(label.array[:, :, :-1], AFFINE))
    with pytest.raises(GeometryMismatchError, match=r"shape \(4, 5, 5\) vs \(4, 5, 6\)"):
        case.load()


def make_msd(root):
    """An MSD folder: one case whose image is a 4D NIfTI with 2 channels last, and one test image."""
    rng = np.random.default_rng(1)
    data = rng.normal(size=(6, 5, 4, 2)).astype(np.float32)  # (i, j, k, channel)
    label = (data[..., 0] > 0.5).astype(np.uint8)
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir()
    nib.save(nib.Nifti1Image(data, AFFINE), str(root / "imagesTr" / "prostate_00.nii.gz"))
    nib.save(nib.Nifti1Image(label, AFFINE), str(root / "labelsTr" / "prostate_00.nii.gz"))
    nib.save(nib.Nifti1Image(data, AFFINE), str(root / "imagesTs" / "prostate_01.nii.gz"))
    meta = {"name": "Prostate", "modality": {"0": "T2", "1": "ADC"},
            "labels": {"0": "background", "1": "PZ"}, "numTraining": 1,
            "training": [{"image": "./imagesTr/prostate_00.nii.gz",
                          "label": "./labelsTr/prostate_00.nii.gz"}],
            "test": ["./imagesTs/prostate_01.nii.gz"]}
    write_json(root, meta)
    return data, label, meta


def test_msd_four_dimensional_image_loads_as_one_volume_per_channel(tmp_path):
    data, label, _ = make_msd(tmp_path)
    dataset = load_dataset(tmp_path)
    assert dataset.channel_names == ["T2", "ADC"] and dataset.labels == {"PZ": 1}
    assert dataset.cases[0].case_id == "prostate_00" and dataset.test_cases[0].label_path is None
    images, loaded = dataset.cases[0].load()
    assert len(images) == 2
    for channel, image in enumerate(images):
        np.testing.assert_array_equal(image.array, data[..., channel].transpose(2, 1, 0))
        np.testing.assert_allclose(image.ijk_to_ras, AFFINE, atol=1e-5)
    np.testing.assert_array_equal(loaded.array, label.transpose(2, 1, 0))
    assert loaded.labels == {"PZ": 1}
    test_images, no_label = dataset.test_cases[0].load()
    assert len(test_images) == 2 and no_label is None


def test_msd_errors_name_the_file_and_entry(tmp_path):
    _, _, meta = make_msd(tmp_path)
    write_json(tmp_path, {**meta, "modality": {"0": "T2", "1": "ADC", "2": "DWI"}})
    with pytest.raises(DatasetError, match=r"prostate_00\.nii\.gz: dim: expected a 4D image with 3"):
        load_dataset(tmp_path).cases[0].load()
    entry = {"image": "./imagesTr/prostate_00.nii.gz", "label": "./labelsTr/absent.nii.gz"}
    write_json(tmp_path, {**meta, "training": [entry]})
    with pytest.raises(DatasetError, match=r"absent\.nii\.gz: training\[0\]: .*image without label"):
        load_dataset(tmp_path)
    write_json(tmp_path, {**meta, "training": [{"image": "./imagesTr/prostate_00.nii.gz"}]})
    with pytest.raises(DatasetError, match=r"dataset\.json: training\[0\]: expected"):
        load_dataset(tmp_path)
