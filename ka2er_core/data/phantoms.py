"""Procedural CT-like and MR-like abdominal phantoms, seeded.

Anatomy is defined in RAS millimetres around the volume's centre and scaled to its field of view, so
an oblique or anisotropic grid samples the same physical shapes. Labels are stable across seeds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..geometry import ijk_to_ras_points
from ..volume import Volume
from .fields import smooth_field
from .subject import Subject

PHANTOM_LABELS = {"liver": 1, "right kidney": 2, "left kidney": 3, "spine": 4, "aorta": 5,
                  "lesion": 6}
# Intensity of background, body and each label: CT in HU, MR in arbitrary units.
CT_VALUES = {"air": -1000.0, "body": 40.0, "liver": 65.0, "right kidney": 160.0,
             "left kidney": 160.0, "spine": 700.0, "aorta": 220.0, "lesion": 15.0}
MR_VALUES = {"air": 0.0, "body": 300.0, "liver": 520.0, "right kidney": 720.0, "left kidney": 720.0,
             "spine": 180.0, "aorta": 950.0, "lesion": 1100.0}
BODY_WIDTH_MM = 320.0  # anatomy below is drawn for a body this wide, then scaled to the grid


def phantom_geometry(shape, spacing, oblique: bool, rng: np.random.Generator) -> np.ndarray:
    """ijk_to_ras centred on the origin; ``oblique`` rotates (and flips one axis of) the grid."""
    direction = np.eye(3)
    if oblique:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)) * 0.25 + np.eye(3) * 2)
        direction = q @ np.diag(np.sign(np.diag(q)))  # close to identity, rotated by ~10-25 deg
        direction[:, 0] *= -1  # and one flipped axis
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.asarray(spacing, dtype=np.float64)
    centre_ijk = (np.asarray(shape[::-1], dtype=np.float64) - 1) / 2
    matrix[:3, 3] = -matrix[:3, :3] @ centre_ijk
    return matrix


def anatomy(ras: np.ndarray, scale: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Body mask and label map for voxel centres ``ras`` (..., 3), with seeded jitter."""
    x, y, z = (ras[..., a] / scale for a in range(3))  # mm of a 320-mm-wide body

    def jitter(value, amount):
        return value + rng.uniform(-amount, amount)

    body = (x / jitter(155, 8)) ** 2 + (y / jitter(110, 8)) ** 2 < 1
    labels = np.zeros(ras.shape[:-1], dtype=np.uint8)
    # Liver: a large irregular blob on the right (+x), anterior.
    lx, ly, lz = jitter(55, 8), jitter(10, 6), jitter(20, 10)
    angle = np.arctan2(y - ly, x - lx)
    wobble = 1 + 0.15 * np.sin(3 * angle + rng.uniform(0, 6)) + 0.1 * np.cos(2 * (z - lz) / 40)
    liver = ((x - lx) / 75) ** 2 + ((y - ly) / 60) ** 2 + ((z - lz) / 70) ** 2 < wobble ** 2
    labels[liver & body] = PHANTOM_LABELS["liver"]
    for name, side in (("right kidney", 1), ("left kidney", -1)):
        kx, ky, kz = side * jitter(70, 6), jitter(-55, 5), jitter(-30, 10)
        kidney = ((x - kx) / 28) ** 2 + ((y - ky) / 22) ** 2 + ((z - kz) / 50) ** 2 < 1
        labels[kidney & body] = PHANTOM_LABELS[name]
    sx, sy = jitter(0, 4), jitter(-75, 4)
    labels[((x - sx) ** 2 + (y - sy) ** 2 < 20 ** 2) & body] = PHANTOM_LABELS["spine"]
    ax, ay = sx + jitter(-22, 3), sy + jitter(35, 3)
    labels[((x - ax) ** 2 + (y - ay) ** 2 < 11 ** 2) & body] = PHANTOM_LABELS["aorta"]
    ex, ey, ez = lx + jitter(10, 15), ly + jitter(0, 15), lz + jitter(0, 15)
    lesion = (x - ex) ** 2 + (y - ey) ** 2 + (z - ez) ** 2 < jitter(16, 4) ** 2
    labels[lesion & (labels == PHANTOM_LABELS["liver"])] = PHANTOM_LABELS["lesion"]
    return body, labels


def phantom(seed: int, modality: str, shape: Sequence[int], spacing: Sequence[float],
            oblique: bool) -> Subject:
    rng = np.random.default_rng([seed, 0])  # anatomy and noise: the same with or without oblique
    shape = tuple(int(n) for n in shape)
    ijk_to_ras = phantom_geometry(shape, spacing, oblique, np.random.default_rng([seed, 1]))
    ijk = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape[::-1]),
                               indexing="ij"), axis=-1).transpose(2, 1, 0, 3)  # (k, j, i, 3) of (i, j, k)
    ras = ijk_to_ras_points(ijk, ijk_to_ras)
    field_of_view = min(shape[2] * spacing[0], shape[1] * spacing[1])
    body, labels = anatomy(ras, field_of_view / BODY_WIDTH_MM, rng)
    values = CT_VALUES if modality == "CT" else MR_VALUES
    image = np.where(body, values["body"], values["air"]).astype(np.float32)
    for name, value in PHANTOM_LABELS.items():
        image[labels == value] = values[name]
    if modality == "CT":
        image += 10 * smooth_field(rng, shape) + rng.normal(0, 12, shape).astype(np.float32)
    else:
        image *= np.exp(0.2 * smooth_field(rng, shape, control_points=3))
        image = np.abs(image + rng.normal(0, 25, shape).astype(np.float32))
    task = f"{modality} phantom"
    return Subject(Volume(image.astype(np.float32), ijk_to_ras),
                   Volume(labels, ijk_to_ras, dict(PHANTOM_LABELS)),
                   f"{modality.lower()}_phantom_{seed:05d}", modality, task)


def ct_phantom(seed: int, *, shape=(40, 80, 80), spacing=(4.0, 4.0, 5.0), oblique=False) -> Subject:
    """CT-like phantom in HU. ``shape`` is (k, j, i); ``spacing`` mm along (i, j, k)."""
    return phantom(seed, "CT", shape, spacing, oblique)


def mr_phantom(seed: int, *, shape=(40, 80, 80), spacing=(4.0, 4.0, 5.0), oblique=False) -> Subject:
    """MR-like phantom (arbitrary units, bias field). ``shape`` (k, j, i); ``spacing`` along (i, j, k)."""
    return phantom(seed, "MR", shape, spacing, oblique)
