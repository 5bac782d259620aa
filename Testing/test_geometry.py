"""RAS <-> IJK against SimpleITK (an independent reader of the same files), crops and resampling."""

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import random_ijk_to_ras
from ka2er_core import Volume, load_volume
from ka2er_core.geometry import (LPS_FROM_RAS, canonical_grid, crop_grid, ijk_to_ras_points,
                                 is_oblique, lps_to_ras, orientation_code, ras_box_to_ijk,
                                 ras_to_ijk, ras_to_lps, resample)

SHAPE_KJI = (9, 11, 13)


def write_nrrd_in_space(path, array, ijk_to_ras, space):
    """Write with pynrrd directly (not our writer), in LPS or RAS world coordinates."""
    to_space = LPS_FROM_RAS if space == "left-posterior-superior" else np.eye(4)
    matrix = to_space @ ijk_to_ras
    header = {"space": space, "space directions": matrix[:3, :3].T, "space origin": matrix[:3, 3],
              "kinds": ["domain"] * 3, "encoding": "raw" if space.startswith("right") else "gzip"}
    nrrd.write(str(path), array, header, index_order="C")


def permuted_flipped_ijk_to_ras(rng: np.random.Generator) -> np.ndarray:
    """Axis-permuted, flipped, anisotropic geometry whose entries float32 stores exactly."""
    matrix = np.eye(4)
    signs = rng.choice([-1.0, 1.0], size=3)
    matrix[:3, :3] = np.eye(3)[rng.permutation(3)] * signs * rng.choice([0.5, 0.75, 1.25, 3.0], 3)
    matrix[:3, 3] = rng.integers(-400, 400, size=3) / 4
    return matrix


# NRRD stores float64 text; NIfTI stores float32, and ITK re-orthonormalises an oblique sform, so
# oblique NIfTI agrees to float32 resolution (~3e-8 relative, 1e-5 mm within 150 mm of the origin).
@pytest.mark.parametrize("fmt, oblique, tolerance_mm", [
    ("nrrd-lps", True, 1e-6), ("nrrd-ras", True, 1e-6),
    ("nifti-sform", False, 1e-6), ("nifti-sform+qform", False, 1e-6),
    ("nifti-sform", True, 1e-5), ("nifti-sform+qform", True, 1e-5)])
def test_ras_to_ijk_matches_simpleitk(tmp_path, rng, fmt, oblique, tolerance_mm):
    for trial in range(3):
        if oblique:
            ijk_to_ras = random_ijk_to_ras(rng, spacing=rng.uniform(0.4, 3.5, size=3))
        else:
            ijk_to_ras = permuted_flipped_ijk_to_ras(rng)
        array = rng.normal(size=SHAPE_KJI).astype(np.float32)
        if fmt.startswith("nifti"):
            path = tmp_path / f"v{trial}.nii.gz"
            image = nib.Nifti1Image(array.transpose(2, 1, 0), ijk_to_ras)
            image.set_sform(ijk_to_ras, code=1)
            image.set_qform(ijk_to_ras, code=1 if fmt.endswith("qform") else 0)
            nib.save(image, str(path))
        else:
            path = tmp_path / f"v{trial}.nrrd"
            space = "left-posterior-superior" if fmt == "nrrd-lps" else "right-anterior-superior"
            write_nrrd_in_space(path, array, ijk_to_ras, space)
        volume = load_volume(path)
        reference = sitk.ReadImage(str(path))
        np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reference))
        np.testing.assert_allclose(volume.spacing, reference.GetSpacing(), atol=1e-6)

        points = ijk_to_ras_points(rng.uniform(-2, 14, size=(50, 3)), volume.ijk_to_ras)
        ours = ras_to_ijk(points, volume.ijk_to_ras)
        theirs = np.array([reference.TransformPhysicalPointToContinuousIndex(tuple(p))
                           for p in ras_to_lps(points)])
        # Agreement in mm: index differences scaled by the voxel size.
        assert np.abs((ours - theirs) * volume.spacing).max() < tolerance_mm
        nearest = np.array([reference.TransformPhysicalPointToIndex(tuple(p))
                            for p in ras_to_lps(points)])
        np.testing.assert_array_equal(np.floor(ours + 0.5).astype(int), nearest)


def test_ras_lps_round_trip(rng):
    points = rng.normal(size=(10, 3)) * 100
    np.testing.assert_array_equal(lps_to_ras(ras_to_lps(points)), points)
    np.testing.assert_array_equal(ras_to_lps(points)[:, :2], -points[:, :2])


def test_orientation_codes_match_nibabel(rng):
    for _ in range(20):
        matrix = random_ijk_to_ras(rng)
        assert orientation_code(matrix) == "".join(nib.aff2axcodes(matrix))
    assert orientation_code(np.diag([-1.0, -1.0, 1.0, 1.0])) == "LPS"
    assert not is_oblique(np.diag([-0.5, 2.0, 3.0, 1.0]))
    assert is_oblique(random_ijk_to_ras(rng))


def test_box_bounds_enclose_the_box(rng):
    ijk_to_ras = random_ijk_to_ras(rng)
    a, b = np.array([10.0, -5.0, 3.0]), np.array([-4.0, 8.0, 3.0])  # one slice thick in S
    lo, hi = ras_box_to_ijk(a, b, ijk_to_ras)
    inside = rng.uniform(np.minimum(a, b), np.maximum(a, b), size=(200, 3))
    ijk = ras_to_ijk(inside, ijk_to_ras)
    assert np.all(ijk >= lo - 1e-9) and np.all(ijk <= hi + 1e-9)


def test_resample_to_canonical_and_back_is_identity_on_masks(rng):
    ijk_to_ras = random_ijk_to_ras(rng, spacing=(1.0, 1.0, 1.0))
    shape = (30, 32, 34)
    k, j, i = np.indices(shape)
    mask = (((i - 17) / 10) ** 2 + ((j - 16) / 8) ** 2 + ((k - 15) / 9) ** 2 < 1).astype(np.uint8)
    volume = Volume(mask, ijk_to_ras)
    canonical = canonical_grid(volume.grid, (0.5, 0.5, 0.5))
    assert not is_oblique(canonical.ijk_to_ras)
    on_canonical = resample(mask, ijk_to_ras, canonical, order=0)
    assert on_canonical.dtype == np.uint8
    # The physical volume of the object is preserved (0.125 mm^3 voxels vs 1 mm^3).
    assert abs(on_canonical.sum() * 0.125 - mask.sum()) / mask.sum() < 0.03
    back = resample(on_canonical, canonical.ijk_to_ras, volume.grid, order=0)
    dice = 2 * (back & mask).sum() / (back.sum() + mask.sum())
    assert dice > 0.97


def test_resample_linear_reproduces_a_linear_ramp(rng):
    ijk_to_ras = random_ijk_to_ras(rng, spacing=(0.8, 1.2, 2.0))
    shape = (20, 24, 28)
    ras = ijk_to_ras_points(np.stack(np.indices(shape)[::-1], -1).reshape(-1, 3), ijk_to_ras)
    gradient = np.array([0.3, -0.2, 0.5])
    ramp = (ras @ gradient).reshape(shape).astype(np.float64)
    centre = ijk_to_ras_points(np.array([14.0, 12.0, 10.0]), ijk_to_ras)
    crop = crop_grid(centre, (6, 7, 8), (1.0, 1.0, 1.0))
    assert crop.shape == (6, 7, 8)
    np.testing.assert_allclose(ras_to_ijk(centre, crop.ijk_to_ras), [3.5, 3.0, 2.5])
    values = resample(ramp, ijk_to_ras, crop, order=1, dtype=np.float64)
    crop_ras = ijk_to_ras_points(np.stack(np.indices(crop.shape)[::-1], -1).reshape(-1, 3),
                                 crop.ijk_to_ras)
    np.testing.assert_allclose(values.ravel(), crop_ras @ gradient, atol=1e-9)
