"""``ka2er demo``: the offline demo on a held-out MNI152 pseudo-subject.

This build runs the data-and-geometry part: it writes the subject as NRRD and its reference labels as
a Slicer segmentation, reads both back, and walks a point and a crop through RAS, voxel and model
space. The model-based interactive session is added by the shipped-models work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .data.mni import BRAIN_VALUES, MNI_LABELS, TEST_SEEDS, mni_subject
from .geometry import crop_grid, ijk_to_ras_points, orientation_code, ras_to_ijk, resample
from .info import describe
from .io import load_segmentation, load_volume, save_segmentation, save_volume
from .training.clicks import component_centre


def run_demo(out: Path, progress: Callable[[str], None] = print) -> dict:
    """Run the demo, writing into ``out``; returns what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    seed = TEST_SEEDS[0]
    progress(f"making the held-out MNI152 pseudo-subject (seed {seed}, never used in training)")
    subject = mni_subject(seed)
    image_path = save_volume(out / f"mni_t1_{seed}.nrrd", subject.image)
    labels = subject.label.array
    segments = {"brain": np.isin(labels, BRAIN_VALUES),
                "white matter": labels == MNI_LABELS["white matter"],
                "grey matter": labels == MNI_LABELS["grey matter"]}
    seg_path = save_segmentation(out / "reference.seg.nrrd", segments, reference=subject.image,
                                 colors={"brain": (0.9, 0.8, 0.5), "white matter": (0.95, 0.95, 0.9),
                                         "grey matter": (0.6, 0.4, 0.4)})
    progress(f"wrote {image_path.name} and {seg_path.name}; reading them back")
    volume = load_volume(image_path)
    readback = load_segmentation(seg_path)
    identical = (np.array_equal(volume.array, subject.image.array)
                 and all(np.array_equal(readback.masks[n] > 0, m) for n, m in segments.items()))
    print(describe(image_path))

    # A click at the centre of the white matter, through RAS and back.
    centre_kji, _ = component_centre(segments["white matter"])
    ras = ijk_to_ras_points(centre_kji[::-1].astype(float), volume.ijk_to_ras)
    ijk = ras_to_ijk(ras, volume.ijk_to_ras)
    # A 64^3 model-space crop at 2.5 mm around it, and the white matter back on the volume grid.
    crop = crop_grid(ras, (64, 64, 64), (2.5, 2.5, 2.5))
    on_crop = resample(segments["white matter"].astype(np.uint8), volume.ijk_to_ras, crop, order=0)
    back = resample(on_crop, crop.ijk_to_ras, volume.grid, order=0) > 0
    truth = segments["white matter"]
    dice = 2 * (back & truth).sum() / (back.sum() + truth.sum())
    results = {"files_identical_after_readback": bool(identical),
               "click_ras": ras.round(2).tolist(), "click_ijk": ijk.round(3).tolist(),
               "orientation": orientation_code(volume.ijk_to_ras),
               "white_matter_dice_after_crop_round_trip": float(dice)}
    print()
    print(f"files read back identical: {identical}")
    print(f"white-matter centre: RAS {results['click_ras']} mm -> voxel (i, j, k) {results['click_ijk']}")
    print(f"white matter through a 64^3 crop at 2.5 mm and back: Dice {dice:.3f} "
          "(the resolution cost of that crop)")
    print()
    print("This build of the demo covers data and geometry only; interactive segmentation with the "
          "shipped model is not part of it yet.")
    print(f"Open in 3D Slicer: drag {image_path.resolve()} and {seg_path.resolve()} into the window, or")
    print(f'  Slicer --python-code "slicer.util.loadVolume(r\'{image_path.resolve()}\'); '
          f'slicer.util.loadSegmentation(r\'{seg_path.resolve()}\')"')
    return results
