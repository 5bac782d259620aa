"""Procedural CT and MR phantoms: structures, units, anisotropic and oblique grids, seeding."""

import numpy as np
import pytest
from scipy import ndimage

from ka2er_core.data import PHANTOM_LABELS, TEST_SEEDS, TRAIN_SEEDS, ct_phantom, mr_phantom
from ka2er_core.geometry import ijk_to_ras_points

FINE = {"shape": (48, 96, 96), "spacing": (0.9, 0.9, 2.0)}  # small partial-volume effects


def centre_ras(subject, value):
    """RAS centroid (mm) of the voxels labelled ``value``."""
    kji = np.argwhere(subject.label.array == value).mean(axis=0)
    return ijk_to_ras_points(kji[::-1], subject.label.ijk_to_ras)


def volume_ml(subject, value):
    return np.count_nonzero(subject.label.array == value) * np.prod(subject.label.spacing) / 1000


@pytest.mark.parametrize("make", [ct_phantom, mr_phantom])
@pytest.mark.parametrize("seed", [TRAIN_SEEDS[0], TRAIN_SEEDS[1], TEST_SEEDS[0]])
def test_every_structure_is_present_on_the_requested_anisotropic_grid(make, seed):
    subject = make(seed)
    assert subject.image.shape == subject.label.shape == (40, 64, 64)  # the default (k, j, i)
    np.testing.assert_allclose(subject.image.spacing, (0.9, 0.9, 2.5))  # along i, j, k
    assert subject.image.grid.same_as(subject.label.grid)
    assert subject.label.labels == PHANTOM_LABELS and subject.label.array.dtype == np.uint8
    assert set(np.unique(subject.label.array)) == {0, *PHANTOM_LABELS.values()}
    sizes = {name: volume_ml(subject, value) for name, value in PHANTOM_LABELS.items()}
    assert sizes["liver"] > sizes["spine"] > sizes["lesion"] and sizes["liver"] > sizes["right kidney"]
    custom = make(seed, shape=(12, 20, 24), spacing=(1.5, 2.0, 4.0))
    assert custom.image.shape == (12, 20, 24)
    np.testing.assert_allclose(custom.image.spacing, (1.5, 2.0, 4.0))


@pytest.mark.parametrize("oblique", [False, True])
def test_structures_sit_where_anatomy_puts_them(oblique):
    subject = ct_phantom(TRAIN_SEEDS[2], oblique=oblique, **FINE)
    centre = {name: centre_ras(subject, value) for name, value in PHANTOM_LABELS.items()}
    assert centre["liver"][0] > 0  # RAS: +x is the patient's right
    assert centre["right kidney"][0] > 0 > centre["left kidney"][0]
    assert centre["spine"][1] < centre["aorta"][1] < centre["liver"][1]  # posterior to anterior
    liver, lesion = (subject.label.array == PHANTOM_LABELS[n] for n in ("liver", "lesion"))
    border = ndimage.binary_dilation(lesion) & ~lesion
    assert np.count_nonzero(liver[border]) > 0.5 * np.count_nonzero(border)  # a lesion in the liver
    assert np.count_nonzero(lesion) < 0.2 * np.count_nonzero(liver)


@pytest.mark.parametrize("make", [ct_phantom, mr_phantom])
def test_oblique_grid_is_rotated_and_flipped_but_anatomy_keeps_its_physical_size(make):
    seed = TEST_SEEDS[4]
    straight, oblique = make(seed, **FINE), make(seed, oblique=True, **FINE)
    direction = oblique.image.direction
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-9)
    assert np.abs(direction - np.diag(np.diag(direction))).max() > 0.1  # not axis-aligned
    assert np.linalg.det(direction) < 0  # one flipped axis
    np.testing.assert_allclose(oblique.image.spacing, straight.image.spacing)
    for name, value in PHANTOM_LABELS.items():
        a, b = volume_ml(straight, value), volume_ml(oblique, value)
        assert abs(a - b) < 0.15 * a, (name, a, b)
        assert np.linalg.norm(centre_ras(straight, value) - centre_ras(oblique, value)) < 2.0, name


def test_ct_is_in_hounsfield_units_with_air_fat_soft_tissue_and_bone():
    subject = ct_phantom(TRAIN_SEEDS[3], **FINE)
    image, labels = subject.image.array, subject.label.array

    def median(name):
        return np.median(image[labels == PHANTOM_LABELS[name]])

    assert np.median(image[:, :3, :3]) == pytest.approx(-1000, abs=30)  # corners: air
    assert median("spine") > 650
    assert 45 < median("liver") < 75 and 15 < median("right kidney") < 45
    assert median("lesion") < median("liver") - 20
    unlabelled_body = image[(labels == 0) & (image > -500)]
    fat = np.count_nonzero(np.abs(unlabelled_body + 100) < 40)
    soft = np.count_nonzero(np.abs(unlabelled_body - 40) < 30)
    assert fat > 0.05 * unlabelled_body.size and soft > 0.2 * unlabelled_body.size


def test_mr_has_its_own_contrast_on_the_same_anatomy():
    seed = TRAIN_SEEDS[4]
    ct, mr = ct_phantom(seed), mr_phantom(seed)
    np.testing.assert_array_equal(ct.label.array, mr.label.array)
    assert (ct.modality, mr.modality) == ("CT", "MR") and ct.task != mr.task
    assert mr.image.array.min() >= 0 and mr.image.array.dtype == np.float32

    def order(subject):
        values = {n: np.median(subject.image.array[subject.label.array == v])
                  for n, v in PHANTOM_LABELS.items()}
        return sorted(values, key=values.get)

    assert order(ct) != order(mr)


@pytest.mark.parametrize("make", [ct_phantom, mr_phantom])
def test_same_seed_is_bit_identical_and_seeds_move_the_anatomy(make):
    a, b, c = make(7), make(7), make(8)
    assert a.image.array.tobytes() == b.image.array.tobytes()
    assert a.label.array.tobytes() == b.label.array.tobytes()
    assert a.name == b.name != c.name
    assert not np.array_equal(a.label.array, c.label.array)
    assert np.linalg.norm(centre_ras(a, PHANTOM_LABELS["liver"])
                          - centre_ras(c, PHANTOM_LABELS["liver"])) > 0.1
