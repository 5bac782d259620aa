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
TASKS = {"t1": "MNI T1", "t2like": "MNI T2-like"}

# Piecewise-linear T1 -> second-sequence intensity map (template units, 0..1; template medians: other
# brain 0.40, grey 0.66, white 0.84): CSF becomes brightest, grey matter mid, white matter dark.
_T1_POINTS = (0.0, 0.12, 0.34, 0.64, 0.84, 1.0)
_T2_POINTS = (0.0, 0.15, 0.95, 0.62, 0.38, 0.33)

ROTATION_DEG = 8.0   # affine jitter: rotation about each axis, up to
SCALE = 0.08         # scale per axis, 1 +- this
SHIFT_MM = 6.0       # translation per axis, up to
ELASTIC_MM = 3.0     # smooth elastic displacement, standard deviation per axis
BIAS = 0.2           # multiplicative bias field exp(BIAS * smooth field)
NOISE = 0.025        # Rician noise, fraction of the template's maximum
FIELD_STEP = 4       # smooth fields are computed on a grid this many times coarser, then upsampled


def _kji(image) -> np.ndarray:
    """A nibabel image's (i, j, k) data as a float32 (k, j, i) array."""
    return np.ascontiguousarray(np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0))


def mni152(resolution: int = 2) -> tuple[Volume, Volume]:
    """The template (MR units 0-1000, float32) and its uint8 label map (``MNI_LABELS``).

    Both are (k, j, i) on MNI's RAS grid at ``resolution`` mm (nilearn resamples its 1 mm template).
    Each brain-mask voxel takes the most probable of grey matter, white matter and the rest
    (1 - GM - WM) from nilearn's tissue probability templates, so the classes never overlap (nilearn's
    thresholded GM and WM masks do). Cached; the arrays are read-only.
    """
    return _load_mni152(int(resolution))


@lru_cache(maxsize=2)
def _load_mni152(resolution: int) -> tuple[Volume, Volume]:
    try:
        from nilearn import datasets  # slow to import and only needed here
    except ImportError as err:
        raise ImportError("the MNI152 data needs nilearn: pip install 'ka2er-segment[data]'") from err

    template = datasets.load_mni152_template(resolution=resolution)
    grey = _kji(datasets.load_mni152_gm_template(resolution=resolution))
    white = _kji(datasets.load_mni152_wm_template(resolution=resolution))
    brain = _kji(datasets.load_mni152_brain_mask(resolution=resolution)) > 0
    rest = 1.0 - grey - white
    tissue = np.argmax(np.stack([grey, white, rest]), axis=0)  # 0 grey, 1 white, 2 rest
    labels = np.where(brain, tissue + 1, 0).astype(np.uint8)
    intensity = _kji(template) * 1000.0
    affine = np.asarray(template.affine, dtype=np.float64)
    for array in (intensity, labels):
        array.setflags(write=False)
    return Volume(intensity, affine), Volume(labels, affine, dict(MNI_LABELS))


def _smooth(rng: np.random.Generator, shape: tuple[int, int, int], control_points: int) -> np.ndarray:
    """A smooth seeded field (float32, about unit variance) of ``shape``, made coarse then upsampled."""
    coarse = smooth_field(rng, tuple(-(-n // FIELD_STEP) for n in shape), control_points)
    zoom = [n / c for n, c in zip(shape, coarse.shape)]
    return ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """3x3 rotation: product of rotations by ``angles`` (radians) about each axis in turn."""
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        a, b = [x for x in range(3) if x != axis]
        step = np.eye(3)
        step[a, a] = step[b, b] = np.cos(angle)
        step[a, b], step[b, a] = -np.sin(angle), np.sin(angle)
        rotation = rotation @ step
    return rotation


def mni_subject(seed: int, *, resolution: int = 2, sequence: str = "t1") -> Subject:
    """A pseudo-subject on the template's grid: (k, j, i) float32 image and uint8 label map.

    The template and its labels are pulled through one seeded transform: affine jitter (rotation,
    scale, translation about the grid centre) plus a smooth elastic displacement of a few mm
    (linear interpolation for the image, nearest neighbour for the labels); then a multiplicative
    smooth bias field and Rician noise. ``sequence="t2like"`` remaps tissue contrast to mimic a second
    MR sequence (CSF brightest, grey matter brighter than white). Same seed, same subject, bit for bit.
    """
    if sequence not in SEQUENCES:
        raise ValueError(f"sequence must be one of {SEQUENCES}, got {sequence!r}")
    template, template_labels = mni152(resolution)
    rng = np.random.default_rng(seed)
    shape = template.shape
    spacing = template.spacing[::-1]  # mm along (k, j, i); the MNI grid is axis-aligned and isotropic

    # Where each output voxel samples the template, in (k, j, i) voxel coordinates.
    linear = _rotation(np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG, 3)))
    linear = (linear * rng.uniform(1 - SCALE, 1 + SCALE, 3)).astype(np.float32)
    centre = (np.asarray(shape, dtype=np.float32) - 1) / 2
    shift = rng.uniform(-SHIFT_MM, SHIFT_MM, 3) / spacing
    source = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None]
    source = linear @ source + (centre + shift).astype(np.float32)[:, None]
    for axis in range(3):
        source[axis] += (_smooth(rng, shape, 5) * (ELASTIC_MM / spacing[axis])).ravel()

    intensity = ndimage.map_coordinates(template.array, source, order=1, mode="constant", cval=0.0)
    labels = ndimage.map_coordinates(template_labels.array, source, order=0, mode="constant", cval=0)
    intensity = intensity.reshape(shape) / 1000.0
    if sequence == "t2like":
        intensity = np.interp(intensity, _T1_POINTS, _T2_POINTS).astype(np.float32)
    intensity *= np.exp(BIAS * _smooth(rng, shape, 3))
    real = intensity + rng.normal(0, NOISE, shape).astype(np.float32)
    imaginary = rng.normal(0, NOISE, shape).astype(np.float32)
    image = (np.sqrt(real ** 2 + imaginary ** 2) * 1000.0).astype(np.float32)

    affine = template.ijk_to_ras
    return Subject(Volume(image, affine), Volume(labels.reshape(shape), affine, dict(MNI_LABELS)),
                   f"mni_{sequence}_{seed:05d}", "MR", TASKS[sequence])
