"""The real-scan check: ``../shared/realcheck`` (INIA19 T1 template, NeuroMaps labels) as an nnU-Net v2
folder for ``ka2er evaluate``.

Evaluation only: nothing in training reads this module or the folder it writes. The twelve largest
labels by voxel count (background excluded) become targets 1..12, named after their NeuroMaps value
("NeuroMaps 55"); the image and the label map keep their grid. The one case is written as the test
split (``imagesTs``/``labelsTs``), so ``ka2er evaluate`` reads it with its default ``--split test``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import DatasetError
from ..io import load_volume, save_volume
from ..io.atomic import atomic_write
from ..volume import Volume

IMAGE_FILE = "inia19-t1-brain.nii.gz"
LABEL_FILE = "inia19-NeuroMaps.nii.gz"
TARGETS = 12
DATASET_NAME = "Dataset900_RealCheckINIA19"


def largest_labels(label: np.ndarray, count: int = TARGETS) -> list[int]:
    """The ``count`` label values (background 0 excluded) with the most voxels, largest first."""
    values, voxels = np.unique(label, return_counts=True)
    order = [int(values[i]) for i in np.argsort(-voxels, kind="stable") if values[i] != 0]
    return order[:count]


def write_realcheck_dataset(source: Union[str, Path], out_dir: Union[str, Path]) -> Path:
    """Write ``out_dir/Dataset900_RealCheckINIA19`` from the realcheck folder ``source``; returns it."""
    source, folder = Path(source), Path(out_dir) / DATASET_NAME
    missing = [name for name in (IMAGE_FILE, LABEL_FILE) if not (source / name).is_file()]
    if missing:
        raise DatasetError(f"expected {' and '.join(missing)} (the realcheck folder)", path=source)
    image = load_volume(source / IMAGE_FILE)
    atlas = load_volume(source / LABEL_FILE)
    values = largest_labels(atlas.array)
    label = np.zeros(atlas.shape, np.uint8)
    for index, value in enumerate(values, start=1):
        label[atlas.array == value] = index
    names = {f"NeuroMaps {value}": index for index, value in enumerate(values, start=1)}
    save_volume(folder / "imagesTs" / "inia19_0000.nii.gz", image)
    save_volume(folder / "labelsTs" / "inia19.nii.gz", Volume(label, atlas.ijk_to_ras, names))
    # nnU-Net v2 wants a training split; the check has none: the same case stands in, and
    # ``ka2er train`` must never be pointed at this folder (the description says so).
    save_volume(folder / "imagesTr" / "inia19_0000.nii.gz", image)
    save_volume(folder / "labelsTr" / "inia19.nii.gz", Volume(label, atlas.ijk_to_ras, names))
    meta = {"name": DATASET_NAME,
            "description": "Real-scan check (evaluation only, never train on it): INIA19 macaque T1 "
                           "template, its twelve largest NeuroMaps labels",
            "channel_names": {"0": "T1"}, "labels": {"background": 0, **names},
            "numTraining": 1, "file_ending": ".nii.gz",
            "ka2er": {"task": "real check", "modality": "MR", "source": str(source),
                      "neuromaps_values": values, "evaluation_only": True}}
    with atomic_write(folder / "dataset.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return folder
