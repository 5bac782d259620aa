"""The data engine's scenes as an nnU-Net v2 folder: what ``ka2er train-gate`` learns from when a
generalist joins a moe (where it, not the task members, should answer), and a check of any model
on the engine's own distribution.

Each case is one :class:`~ka2er_core.data.engine.Scene` (training seeds, so nothing here is a
held-out check); its targets that do not overlap one another, up to :data:`MAX_OBJECTS`, are
written as labels 1..n, named "object 1".."object n" (a case annotates only the objects it has).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ..io import save_volume
from ..io.atomic import atomic_write
from ..volume import Volume
from .engine import DataEngine, Scene

DATASET_NAME = "Dataset950_EngineScenes"
MAX_OBJECTS = 8
SEED_OFFSET = 950_000
"""Scene seeds are SEED_OFFSET + case: apart from the generalist's training stream (seeded by its
run seed, rank and step)."""


def scene_case(scene: Scene) -> Optional[Volume]:
    """The scene's non-overlapping targets as one label map on its image's grid (None: none)."""
    label = np.zeros(scene.image.shape, dtype=np.uint8)
    for target in scene.targets:
        mask = target.mask(scene)
        if label.max() >= MAX_OBJECTS or (label[mask] > 0).any():
            continue
        label[mask] = label.max() + 1
    if not label.any():
        return None
    return Volume(label, scene.image.ijk_to_ras)


def write_scene_dataset(out_dir: Union[str, Path], cases: int, test: int = 0,
                        progress: Optional[Callable[[str], None]] = None) -> Path:
    """Write ``out_dir/Dataset950_EngineScenes`` with ``cases`` training and ``test`` test cases;
    returns it."""
    folder = Path(out_dir) / DATASET_NAME
    engine = DataEngine()
    written = {"Tr": 0, "Ts": 0}
    seed = SEED_OFFSET
    for split, count in (("Tr", cases), ("Ts", test)):
        while written[split] < count:
            seed += 1
            scene = engine.scene(np.random.default_rng(seed))
            label = scene_case(scene)
            if label is None:
                continue
            name = f"scene_{seed:06d}"
            save_volume(folder / f"images{split}" / f"{name}_0000.nii.gz", scene.image)
            save_volume(folder / f"labels{split}" / f"{name}.nii.gz", label)
            written[split] += 1
            if progress:
                progress(f"{split} {name}: {scene.source}, {int(label.array.max())} objects")
    meta = {"name": DATASET_NAME, "description": "The data engine's scenes (training distribution)",
            "channel_names": {"0": "any"},
            "labels": {"background": 0, **{f"object {n}": n for n in range(1, MAX_OBJECTS + 1)}},
            "numTraining": cases, "file_ending": ".nii.gz",
            "ka2er": {"task": "engine scenes", "generator": "DataEngine().scene(seed)",
                      "first_seed": SEED_OFFSET + 1}}
    with atomic_write(folder / "dataset.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return folder
