"""Procedural CT-like and MR-like abdominal phantoms, seeded.

Anatomy is drawn in RAS millimetres about the volume's centre (a body 320 mm wide, scaled so that it
fits the grid's field of view), then sampled at every voxel centre: an anisotropic or oblique grid sees
the same physical shapes. Label names and values are the same for every seed; positions and sizes
are jittered by the seed, and the CT and MR phantoms of one seed share their anatomy.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from ..geometry import centred_matrix, ijk_to_ras_points
from ..volume import Volume
from .fields import smooth_field
from .subject import Subject

PHANTOM_LABELS = {"liver": 1, "right kidney": 2, "left kidney": 3, "spine": 4, "aorta": 5,
                  "lesion": 6}
TISSUES = ("air", "fat", "soft tissue", "liver", "kidney", "bone", "cortical bone", "blood",
           "lesion")
# Intensity per tissue. CT in HU (unenhanced); MR in arbitrary units, T2-weighted-like (fat and
# fluid bright, cortical bone and flowing blood dark).
CT_VALUES = {"air": -1000, "fat": -100, "soft tissue": 40, "liver": 60, "kidney": 30, "bone": 700,
             "cortical bone": 1100, "blood": 45, "lesion": 10}
MR_VALUES = {"air": 0, "fat": 800, "soft tissue": 250, "liver": 350, "kidney": 650, "bone": 500,
             "cortical bone": 40, "blood": 80, "lesion": 1100}
# The anatomy below spans this box (mm along R, A, S; the organs' cranio-caudal extent plus room for
# an oblique tilt); it is scaled down uniformly when the grid's field of view is smaller.
BODY_BOX_MM = np.array([320.0, 230.0, 290.0])


def phantom_geometry(shape: Sequence[int], spacing: Sequence[float], oblique: bool,
                     rng: np.random.Generator) -> np.ndarray:
    """ijk_to_ras of a grid of ``shape`` (k, j, i) and ``spacing`` (i, j, k) centred on RAS 0.

    ``oblique`` rotates the axes (6-12 degrees of tilt, 10-25 degrees in plane) and flips i so that
    it runs towards L: a legal, non-axis-aligned, left-handed voxel grid.
    """
    direction = np.eye(3)
    if oblique:
        degrees = rng.uniform((6, 6, 10), (12, 12, 25)) * rng.choice((-1, 1), 3)
        direction = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
        direction[:, 0] *= -1
    return centred_matrix(direction, spacing, shape)


def anatomy(ras: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tissue indices (into ``TISSUES``) and labels (``PHANTOM_LABELS``) at points ``ras`` (..., 3).

    ``ras`` is in the mm of a 320-mm-wide body centred on 0; shapes are jittered by ``rng``.
    Structures are painted in order, each over the ones before.
    """
    x, y, z = ras[..., 0], ras[..., 1], ras[..., 2]
    tissue = np.zeros(ras.shape[:-1], dtype=np.uint8)
    labels = np.zeros(ras.shape[:-1], dtype=np.uint8)

    def jitter(value, amount):
        return value + rng.uniform(-amount, amount)

    def paint(where, tissue_name, label_name=None):
        tissue[where] = TISSUES.index(tissue_name)
        labels[where] = PHANTOM_LABELS[label_name] if label_name else 0

    def ellipsoid(centre, radii):
        return sum(((c - m) / r) ** 2 for c, m, r in zip((x, y, z), centre, radii)) < 1

    def tube(centre_xy, radius):  # cranio-caudal, capped inside the body box
        return ((x - centre_xy[0]) ** 2 + (y - centre_xy[1]) ** 2 < radius ** 2) & (np.abs(z) < 120)

    half_width, half_depth = jitter(155, 8), jitter(110, 8)
    paint((x / half_width) ** 2 + (y / half_depth) ** 2 < 1, "fat")  # subcutaneous fat
    inside = (x / (half_width - 14)) ** 2 + (y / (half_depth - 12)) ** 2 < 1
    paint(inside, "soft tissue")

    # Liver: a large irregular blob on the right (+x) and anterior, with a wavy outline.
    liver_centre = np.array([jitter(55, 8), jitter(10, 6), jitter(20, 10)])
    angle = np.arctan2(y - liver_centre[1], x - liver_centre[0])
    wobble = (1 + 0.15 * np.sin(3 * angle + rng.uniform(0, 2 * np.pi))
              + 0.1 * np.cos(2 * (z - liver_centre[2]) / 40))
    liver = ellipsoid(liver_centre, (75 * wobble, 60 * wobble, 70 * wobble))
    paint(liver & inside, "liver", "liver")

    # Kidneys: ellipsoids in perirenal fat, posterior, right (+x) and left.
    for name, side in (("right kidney", 1), ("left kidney", -1)):
        centre = (side * jitter(70, 6), jitter(-55, 5), jitter(-30, 10))
        radii = np.array([jitter(26, 3), jitter(21, 2), jitter(52, 5)])
        paint(ellipsoid(centre, radii + 10) & inside, "fat")
        paint(ellipsoid(centre, radii) & inside, "kidney", name)

    # Spine: a vertebral cylinder (cortical rim, cancellous core) running cranio-caudally.
    spine_xy = (jitter(0, 4), jitter(-75, 4))
    spine_radius = jitter(20, 2)
    paint(tube(spine_xy, spine_radius) & inside, "cortical bone", "spine")
    paint(tube(spine_xy, spine_radius - 4) & inside, "bone", "spine")

    # Aorta: a tube in fat, anterior to the spine and left of the midline.
    aorta_xy = (spine_xy[0] + jitter(-22, 3), spine_xy[1] + jitter(35, 3))
    aorta_radius = jitter(11, 1.5)
    paint(tube(aorta_xy, aorta_radius + 6) & inside & (labels == 0), "fat")
    paint(tube(aorta_xy, aorta_radius) & inside, "blood", "aorta")

    # Lesion: a small sphere in the liver (only its liver part is labelled).
    lesion_centre = liver_centre + rng.uniform(-15, 15, 3)
    lesion = ellipsoid(lesion_centre, (jitter(18, 4),) * 3)
    paint(lesion & (labels == PHANTOM_LABELS["liver"]), "lesion", "lesion")
    return tissue, labels


def _phantom(seed: int, modality: str, shape: Sequence[int], spacing: Sequence[float],
             oblique: bool) -> Subject:
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(f"shape (k, j, i) and spacing (i, j, k) need 3 values, got {shape}, {spacing}")
    # Separate streams: anatomy and noise are the same with or without ``oblique``.
    rng = np.random.default_rng([seed, 0])
    ijk_to_ras = phantom_geometry(shape, spacing, oblique, np.random.default_rng([seed, 1]))
    ijk = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")[::-1],
                   axis=-1)  # (k, j, i, 3) holding (i, j, k)
    field_of_view = np.asarray(shape[::-1]) * np.asarray(spacing)  # mm along i, j, k
    scale = min(1.0, float(np.min(field_of_view / BODY_BOX_MM)))
    tissue, labels = anatomy(ijk_to_ras_points(ijk, ijk_to_ras) / scale, rng)

    values = CT_VALUES if modality == "CT" else MR_VALUES
    image = np.asarray([values[name] for name in TISSUES], dtype=np.float32)[tissue]
    if modality == "CT":
        image += 10 * smooth_field(rng, shape) + rng.normal(0, 12, shape).astype(np.float32)
    else:
        image *= np.exp(0.2 * smooth_field(rng, shape, control_points=3))
        real = image + rng.normal(0, 20, shape).astype(np.float32)
        image = np.hypot(real, rng.normal(0, 20, shape).astype(np.float32))  # Rician
    return Subject(Volume(image.astype(np.float32), ijk_to_ras),
                   Volume(labels, ijk_to_ras, dict(PHANTOM_LABELS)),
                   f"{modality.lower()}_phantom_{seed:05d}", modality, f"{modality} phantom")


def ct_phantom(seed: int, *, shape: Sequence[int] = (40, 64, 64),
               spacing: Sequence[float] = (0.9, 0.9, 2.5), oblique: bool = False) -> Subject:
    """CT-like phantom in HU: float32 image and uint8 label map, both (k, j, i).

    ``shape`` is (k, j, i); ``spacing`` is mm along (i, j, k). ``oblique`` gives a rotated grid with a
    flipped axis; the anatomy (RAS mm) and the noise are the same as without it.
    """
    return _phantom(seed, "CT", shape, spacing, oblique)


def mr_phantom(seed: int, *, shape: Sequence[int] = (40, 64, 64),
               spacing: Sequence[float] = (0.9, 0.9, 2.5), oblique: bool = False) -> Subject:
    """MR-like phantom (arbitrary units, bias field, Rician noise); arguments as :func:`ct_phantom`."""
    return _phantom(seed, "MR", shape, spacing, oblique)
