"""MNI152 template labels and seeded pseudo-subjects (3 mm grids to stay fast)."""

import numpy as np
import pytest

from ka2er_core.data import (BRAIN_VALUES, MNI_LABELS, TEST_SEEDS, TRAIN_SEEDS, mni152,
                             mni_subject)
from ka2er_core.geometry import ijk_to_ras_points

RESOLUTION = 3


def medians(subject):
    """Median intensity per label name."""
    return {name: float(np.median(subject.image.array[subject.label.array == value]))
            for name, value in MNI_LABELS.items()}


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_template_is_nilearns_in_k_j_i_order_with_its_ras_affine():
    from nilearn import datasets

    image, labels = mni152(RESOLUTION)
    nilearn_image = datasets.load_mni152_template(resolution=RESOLUTION)
    data = np.asarray(nilearn_image.dataobj, dtype=np.float32)  # (i, j, k)
    assert image.shape == data.shape[::-1]
    np.testing.assert_allclose(image.ijk_to_ras, nilearn_image.affine)
    i, j, k = (n // 3 for n in data.shape)
    assert image.array[k, j, i] == pytest.approx(1000 * data[i, j, k], rel=1e-5)
    assert labels.grid.same_as(image.grid) and labels.array.dtype == np.uint8
    with pytest.raises(ValueError):  # the cached template cannot be changed by a caller
        image.array[0, 0, 0] = 1


def test_template_labels_are_disjoint_tissues_filling_the_brain_mask():
    from nilearn import datasets

    image, labels = mni152(RESOLUTION)
    assert labels.labels == MNI_LABELS and set(MNI_LABELS.values()) == set(BRAIN_VALUES)
    assert set(np.unique(labels.array)) == {0, *BRAIN_VALUES}
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=RESOLUTION).dataobj) > 0
    np.testing.assert_array_equal(labels.array > 0, brain.transpose(2, 1, 0))
    counts = {name: np.count_nonzero(labels.array == value) for name, value in MNI_LABELS.items()}
    assert all(n > 0.05 * brain.sum() for n in counts.values()), counts
    # Overlapping tissue probabilities are resolved one way: the more probable tissue wins.
    grey = np.asarray(datasets.load_mni152_gm_template(resolution=RESOLUTION).dataobj).transpose(2, 1, 0)
    white = np.asarray(datasets.load_mni152_wm_template(resolution=RESOLUTION).dataobj).transpose(2, 1, 0)
    assert np.all(grey[labels.array == MNI_LABELS["grey matter"]]
                  >= white[labels.array == MNI_LABELS["grey matter"]])
    assert np.all(white[labels.array == MNI_LABELS["white matter"]]
                  >= grey[labels.array == MNI_LABELS["white matter"]])
    # T1 contrast of the template: white brighter than grey, grey than the CSF-like rest.
    tissue = {name: np.median(image.array[labels.array == v]) for name, v in MNI_LABELS.items()}
    assert tissue["white matter"] > tissue["grey matter"] > tissue["other brain"]


def test_same_seed_is_bit_identical_and_other_seeds_differ():
    a, b = (mni_subject(TRAIN_SEEDS[7], resolution=RESOLUTION) for _ in range(2))
    c = mni_subject(TRAIN_SEEDS[8], resolution=RESOLUTION)
    assert a.image.array.tobytes() == b.image.array.tobytes()
    assert a.label.array.tobytes() == b.label.array.tobytes()
    assert np.array_equal(a.image.ijk_to_ras, b.image.ijk_to_ras) and a.name == b.name
    assert not np.array_equal(a.image.array, c.image.array)
    assert not np.array_equal(a.label.array, c.label.array)
    assert a.image.array.dtype == np.float32 and a.label.array.dtype == np.uint8
    assert a.image.grid.same_as(a.label.grid) and a.label.labels == MNI_LABELS
    assert (a.modality, a.task) == ("MR", "MNI T1")


def test_subjects_are_deformed_by_a_few_millimetres_not_scrambled():
    _, template = mni152(RESOLUTION)
    template_brain = template.array > 0
    for seed in (TRAIN_SEEDS[0], TEST_SEEDS[0]):
        subject = mni_subject(seed, resolution=RESOLUTION)
        brain = subject.label.array > 0
        assert 0.75 < dice(brain, template_brain) < 0.99
        for value in BRAIN_VALUES:  # every tissue survives, its centre moves by a few mm
            moved = np.argwhere(subject.label.array == value).mean(axis=0)[::-1]
            fixed = np.argwhere(template.array == value).mean(axis=0)[::-1]
            shift = np.linalg.norm(ijk_to_ras_points(moved, template.ijk_to_ras)
                                   - ijk_to_ras_points(fixed, template.ijk_to_ras))
            assert shift < 15, (seed, value, shift)


def test_second_sequence_reorders_tissue_contrast_on_the_same_anatomy():
    seed = TEST_SEEDS[3]
    t1 = mni_subject(seed, resolution=RESOLUTION)
    t2 = mni_subject(seed, resolution=RESOLUTION, sequence="t2like")
    np.testing.assert_array_equal(t1.label.array, t2.label.array)
    first, second = medians(t1), medians(t2)
    assert first["white matter"] > first["grey matter"] > first["other brain"]
    assert second["other brain"] > second["grey matter"] > second["white matter"]
    assert t2.task != t1.task and t2.name != t1.name


def test_seed_ranges_are_disjoint_and_sequences_are_checked():
    assert TRAIN_SEEDS.stop <= TEST_SEEDS.start and len(TRAIN_SEEDS) and len(TEST_SEEDS)
    with pytest.raises(ValueError, match="t2like"):
        mni_subject(0, resolution=RESOLUTION, sequence="flair")
