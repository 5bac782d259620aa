"""MNI152 2009 template (shipped inside nilearn's wheel) and seeded pseudo-subjects made from it.

Labels: grey matter 1, white matter 2, other brain (mostly CSF) 3; "brain" is the union of 1-3.
Training and held-out pseudo-subjects come from disjoint seed ranges.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from ..volume import Volume
from .fields import smooth_field
from .subject import Subject

MNI_LABELS = {"grey matter": 1, "white matter": 2, "other brain": 3}
BRAIN_VALUES = (1, 2, 3)
TRAIN_SEEDS = range(0, 10_000)
TEST_SEEDS = range(10_000, 20_000)
SEQUENCES = ("t1", "t2like")

# Piecewise-linear T1 -> second-sequence intensity map (template units, 0..1): CSF becomes bright,
# grey matter stays mid, white matter becomes dark, background stays dark.
_T1_POINTS = (0.0, 0.12, 0.34, 0.64, 0.84, 1.0)
_T2_POINTS = (0.0, 0.15, 0.95, 0.62, 0.38, 0.33)


def _to_kji(image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0))


@lru_cache(maxsize=2)
def mni152(resolution: int = 2) -> tuple[Volume, Volume]:
    """The template (MR units, 0-1000) and its label map, as Volumes in (k, j, i) on MNI's RAS grid."""
    from nilearn import datasets  # imported here: it is slow to import and only needed for MNI

    template = datasets.load_mni152_template(resolution=resolution)
    grey = _to_kji(datasets.load_mni152_gm_template(resolution=resolution))
    white = _to_kji(datasets.load_mni152_wm_template(resolution=resolution))
    brain = _to_kji(datasets.load_mni152_brain_mask(resolution=resolution)) > 0
    labels = np.where(brain, MNI_LABELS["other brain"], 0).astype(np.uint8)
    labels[brain & (grey > white) & (grey > 0.3)] = MNI_LABELS["grey matter"]
    labels[brain & (white >= grey) & (white > 0.3)] = MNI_LABELS["white matter"]
    affine = np.asarray(template.affine, dtype=np.float64)
    image = Volume(_to_kji(template) * 1000.0, affine)
    return image, Volume(labels, affine, dict(MNI_LABELS))


def mni_subject(seed: int, *, resolution: int = 2, sequence: str = "t1") -> Subject:
    """A pseudo-subject: smooth elastic deformation, affine jitter, bias field and Rician-like noise.

    ``sequence="t2like"`` remaps tissue contrast to mimic a second MR sequence (CSF bright, white
    matter darker than grey). Same seed, same subject, bit for bit.
    """
    if sequence not in SEQUENCES:
        raise ValueError(f"sequence must be one of {SEQUENCES}, got {sequence!r}")
    image, labels = mni152(resolution)
    rng = np.random.default_rng(seed)
    shape = image.shape
    spacing = image.spacing[::-1]  # (k, j, i) order, mm

    # Affine jitter about the centre, in voxel units of the (isotropic) template grid.
    angles = np.deg2rad(rng.uniform(-8, 8, 3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        a, b = [x for x in range(3) if x != axis]
        step = np.eye(3)
        step[a, a], step[a, b], step[b, a], step[b, b] = c, -s, s, c
        rotation = rotation @ step
    scale = rng.uniform(0.92, 1.08, 3)
    shift = rng.uniform(-6, 6, 3) / spacing
    centre = (np.asarray(shape) - 1) / 2
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    source = (rotation * scale) @ (grid - centre[:, None]) + (centre + shift)[:, None]
    # Smooth elastic displacement, up to ~4 mm.
    for axis in range(3):
        source[axis] += (smooth_field(rng, shape) * 4.0 / spacing[axis]).ravel()

    intensity = ndimage.map_coordinates(image.array, source, order=1, mode="constant", cval=0.0)
    label = ndimage.map_coordinates(labels.array, source, order=0, mode="constant", cval=0)
    intensity = intensity.reshape(shape) / 1000.0
    if sequence == "t2like":
        intensity = np.interp(intensity, _T1_POINTS, _T2_POINTS).astype(np.float32)
    intensity *= np.exp(0.25 * smooth_field(rng, shape, control_points=3))  # bias field
    sigma = 0.025
    noisy = np.sqrt((intensity + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
    subject_image = Volume((noisy * 1000.0).astype(np.float32), image.ijk_to_ras)
    subject_label = Volume(label.reshape(shape).astype(np.uint8), image.ijk_to_ras, dict(MNI_LABELS))
    task = "MNI T1" if sequence == "t1" else "MNI T2-like"
    return Subject(subject_image, subject_label, f"mni_{sequence}_{seed:05d}", "MR", task)
