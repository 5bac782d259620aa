"""A synthetic family the generalist never trains on, as an nnU-Net v2 folder for ``ka2er evaluate``.

Branching vessel trees (:func:`~ka2er_core.data.shapes.branching`, in
:data:`~ka2er_core.data.engine.HELD_OUT_FAMILIES`) rendered by the engine's renderer among other
shapes, on oblique and thick-sliced grids; one target per case, "vessel tree", the tree's voxels
(what the other shapes do not cover). Seeds come from the held-out range, so nothing here was drawn
in training even where the families overlap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np

from ..io import save_volume
from ..io.atomic import atomic_write
from ..volume import Volume
from .engine import acquire
from .mni import TEST_SEEDS
from .render import render
from .shapes import Canvas, GENERATORS, shape_scene

DATASET_NAME = "Dataset901_HeldOutVesselTrees"
TARGET = "vessel tree"


def vessel_tree_case(seed: int) -> tuple[Volume, Volume]:
    """A scene of training families with one vessel tree painted over them: image and label map."""
    rng = np.random.default_rng([seed, 901])
    spacing = np.full(3, float(rng.uniform(0.6, 1.5)))
    shape = tuple(int(n) for n in rng.integers(64, 97, 3))
    scene = shape_scene(rng, shape, spacing, [f for f in GENERATORS if f != "branching"], objects=(1, 4))
    tree = GENERATORS["branching"](Canvas(shape, spacing), rng)
    label = scene.label.copy()
    tree_value = int(label.max()) + 1
    label[tree] = tree_value
    modality = "ct" if rng.random() < 0.3 else "mr"
    image = render(label, spacing, rng, {v: 0 for v in scene.background}, modality)
    volume, maps = acquire(image, {"label": (label == tree_value).astype(np.uint8)}, spacing, rng)
    return volume, Volume(maps["label"], volume.ijk_to_ras, {TARGET: 1})


def write_heldout_dataset(out_dir: Union[str, Path], cases: int = 6) -> Path:
    """Write ``out_dir/Dataset901_HeldOutVesselTrees`` (``cases`` test cases; one training case so
    that the folder is a valid nnU-Net v2 dataset); returns it."""
    folder = Path(out_dir) / DATASET_NAME
    seeds = {"Ts": list(TEST_SEEDS[:cases]), "Tr": [TEST_SEEDS[cases]]}
    for split, split_seeds in seeds.items():
        for seed in split_seeds:
            image, label = vessel_tree_case(seed)
            save_volume(folder / f"images{split}" / f"tree_{seed:05d}_0000.nii.gz", image)
            save_volume(folder / f"labels{split}" / f"tree_{seed:05d}.nii.gz", label)
    meta = {"name": DATASET_NAME, "description": "Held-out synthetic family: branching vessel trees",
            "channel_names": {"0": "any"}, "labels": {"background": 0, TARGET: 1},
            "numTraining": 1, "file_ending": ".nii.gz",
            "ka2er": {"task": "held-out vessel trees", "generator": "vessel_tree_case(seed)",
                      "test_seeds": seeds["Ts"], "train_seeds": seeds["Tr"]}}
    with atomic_write(folder / "dataset.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return folder
