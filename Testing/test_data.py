"""Data: MNI152 pseudo-subjects, phantoms, and the MSD / nnU-Net v2 reader with its errors."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from ka2er_core import Volume, save_volume
from ka2er_core.data import (MNI_LABELS, PHANTOM_LABELS, TEST_SEEDS, TRAIN_SEEDS, ct_phantom,
                             load_dataset, mni152, mni_subject, mr_phantom)
from ka2er_core.data.sample import write_sample_dataset
from ka2er_core.errors import DatasetError, GeometryMismatchError


def test_mni_template_labels_are_disjoint_and_inside_the_brain():
    image, labels = mni152(2)
    assert image.shape == labels.shape and image.grid.same_as(labels.grid)
    assert labels.labels == MNI_LABELS
    counts = {name: int((labels.array == value).sum()) for name, value in MNI_LABELS.items()}
    assert all(n > 1000 for n in counts.values()), counts
    # Tissue classes follow T1 contrast: white matter brighter than grey, grey than CSF-like rest.
    medians = {name: np.median(image.array[labels.array == v]) for name, v in MNI_LABELS.items()}
    assert medians["white matter"] > medians["grey matter"] > medians["other brain"]
    assert np.median(image.array[labels.array == 0]) < medians["other brain"]


def test_pseudo_subjects_are_seeded():
    a, b, c = mni_subject(TRAIN_SEEDS[1]), mni_subject(TRAIN_SEEDS[1]), mni_subject(TRAIN_SEEDS[2])
    np.testing.assert_array_equal(a.image.array, b.image.array)
    np.testing.assert_array_equal(a.label.array, b.label.array)
    assert not np.array_equal(a.image.array, c.image.array)
    assert not np.array_equal(a.label.array, c.label.array)
    assert set(TRAIN_SEEDS).isdisjoint(TEST_SEEDS)
    # Deformed, not a copy of the template: labels move, but the brain stays brain-sized.
    _, template_labels = mni152(2)
    brain, template_brain = a.label.array > 0, template_labels.array > 0
    dice = 2 * (brain & template_brain).sum() / (brain.sum() + template_brain.sum())
    assert 0.6 < dice < 0.99


def test_second_sequence_flips_white_and_grey_matter_contrast():
    t1, t2 = mni_subject(TEST_SEEDS[0]), mni_subject(TEST_SEEDS[0], sequence="t2like")
    np.testing.assert_array_equal(t1.label.array, t2.label.array)  # same anatomy
    wm, gm, csf = (MNI_LABELS[n] for n in ("white matter", "grey matter", "other brain"))
    t1_median = {v: np.median(t1.image.array[t1.label.array == v]) for v in (wm, gm, csf)}
    t2_median = {v: np.median(t2.image.array[t2.label.array == v]) for v in (wm, gm, csf)}
    assert t1_median[wm] > t1_median[gm] > t1_median[csf]
    assert t2_median[csf] > t2_median[gm] > t2_median[wm]


@pytest.mark.parametrize("make", [ct_phantom, mr_phantom])
def test_phantoms_have_every_structure_and_keep_physical_size_when_oblique(make):
    straight, oblique = make(5), make(5, oblique=True)
    spacing = straight.image.spacing
    assert len(set(np.round(spacing, 3))) > 1  # anisotropic
    assert not np.allclose(np.abs(oblique.image.direction), np.eye(3), atol=0.05)
    assert np.linalg.det(oblique.image.direction) < 0  # one flipped axis
    voxel_ml = np.prod(spacing) / 1000
    for name, value in PHANTOM_LABELS.items():
        a = (straight.label.array == value).sum() * voxel_ml
        b = (oblique.label.array == value).sum() * voxel_ml
        assert a > 0, name
        assert abs(a - b) / a < 0.15, (name, a, b)
    assert make(5).image.array.tobytes() == straight.image.array.tobytes()
    assert make(6).image.array.tobytes() != straight.image.array.tobytes()


def test_ct_phantom_is_in_hounsfield_units():
    subject = ct_phantom(0)
    air = subject.image.array[0, 0, 0]
    spine = np.median(subject.image.array[subject.label.array == PHANTOM_LABELS["spine"]])
    liver = np.median(subject.image.array[subject.label.array == PHANTOM_LABELS["liver"]])
    assert air < -900 and spine > 500 and 30 < liver < 100


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    return write_sample_dataset(out, n_train=2, n_test=1)


def test_sample_dataset_loads_with_the_reader(sample):
    assert len(sample) == 4
    for folder in sample:
        dataset = load_dataset(folder)
        assert len(dataset.cases) == 2 and len(dataset.test_cases) == 1
        meta = json.loads((folder / "dataset.json").read_text())
        assert set(meta["ka2er"]["train_seeds"]).isdisjoint(meta["ka2er"]["test_seeds"])
        for case in dataset.cases + dataset.test_cases:
            images, label = case.load()
            assert len(images) == 1 and images[0].grid.same_as(label.grid)
            declared = {v for v in dataset.labels.values() if isinstance(v, int)}
            assert set(np.unique(label.array)) - {0} <= declared
    mni = load_dataset(sample[0])
    assert mni.labels["brain"] == (1, 2, 3)


def copy_dataset(sample, tmp_path):
    folder = tmp_path / "ds"
    shutil.copytree(sample[2], folder)
    return folder


def test_missing_dataset_json(tmp_path):
    with pytest.raises(DatasetError, match="dataset.json"):
        load_dataset(tmp_path)


def test_malformed_json_and_missing_field(sample, tmp_path):
    folder = copy_dataset(sample, tmp_path)
    (folder / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="invalid JSON"):
        load_dataset(folder)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {}}))
    with pytest.raises(DatasetError, match="file_ending"):
        load_dataset(folder)


def test_missing_channel_and_orphan_files(sample, tmp_path):
    folder = copy_dataset(sample, tmp_path)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT", "1": "CT late"}
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"_0001\.nii\.gz.*missing channel 1"):
        load_dataset(folder)

    folder = copy_dataset(sample, tmp_path / "b")
    label = sorted((folder / "labelsTr").iterdir())[0]
    label.unlink()
    with pytest.raises(DatasetError, match="image without label"):
        load_dataset(folder)

    folder = copy_dataset(sample, tmp_path / "c")
    image = sorted((folder / "imagesTr").iterdir())[0]
    image.unlink()
    with pytest.raises(DatasetError, match="label without image"):
        load_dataset(folder)


def test_undeclared_label_value_and_geometry_mismatch(sample, tmp_path):
    folder = copy_dataset(sample, tmp_path)
    dataset = load_dataset(folder)
    case = dataset.cases[0]
    images, label = case.load()
    bad = label.array.copy()
    bad[0, 0, 0] = 9
    save_volume(case.label_path, label.with_array(bad))
    with pytest.raises(DatasetError, match=r"\[9\].*not declared"):
        case.load()
    shifted = label.ijk_to_ras.copy()
    shifted[0, 3] += 5
    save_volume(case.label_path, Volume(label.array, shifted))
    with pytest.raises(GeometryMismatchError, match=case.label_path.name):
        case.load()


def test_msd_folder_with_four_dimensional_two_channel_images(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    data = rng.normal(size=(10, 12, 8, 2)).astype(np.float32)  # (i, j, k, channel)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "imagesTr" / "prostate_00.nii.gz"))
    label = (data[..., 0] > 1).astype(np.uint8)
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "labelsTr" / "prostate_00.nii.gz"))
    meta = {"name": "Prostate", "modality": {"0": "T2", "1": "ADC"},
            "labels": {"0": "background", "1": "PZ"},
            "training": [{"image": "./imagesTr/prostate_00.nii.gz",
                          "label": "./labelsTr/prostate_00.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    dataset = load_dataset(tmp_path)
    assert dataset.channel_names == ["T2", "ADC"] and dataset.labels == {"PZ": 1}
    images, loaded_label = dataset.cases[0].load()
    assert len(images) == 2
    for c in range(2):
        np.testing.assert_array_equal(images[c].array, data[..., c].transpose(2, 1, 0))
    np.testing.assert_array_equal(loaded_label.array, label.transpose(2, 1, 0))
    meta["training"][0]["label"] = "./labelsTr/absent.nii.gz"
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="absent.nii.gz"):
        load_dataset(tmp_path)
