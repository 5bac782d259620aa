"""``ka2er data``: a small sample dataset, one nnU-Net v2 folder per task, to try every command on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..io import save_volume
from ..io.atomic import atomic_write
from .mni import BRAIN_VALUES, MNI_LABELS, TEST_SEEDS, TRAIN_SEEDS, mni_subject
from .phantoms import ct_phantom, mr_phantom
from .subject import Subject

PHANTOM_GRID = {"shape": (56, 96, 96), "spacing": (3.2, 3.2, 5.0)}
"""Phantom grid of the sample: (k, j, i) and mm along (i, j, k), a 31 x 31 x 28 cm field of view."""


@dataclass(frozen=True)
class SampleTask:
    """One task of the sample: its channel name and the call that makes a subject from a seed."""

    channel: str
    generator: str  # the call, for provenance in dataset.json
    make: Callable[[int], Subject]


# Tasks split by modality or sequence, the way KA2ER splits MyoPS++ by sequence.
SAMPLE_TASKS = {
    "Dataset001_MNIT1": SampleTask("T1", "mni_subject(seed, sequence='t1')",
                                   lambda seed: mni_subject(seed, sequence="t1")),
    "Dataset002_MNIT2like": SampleTask("T2like", "mni_subject(seed, sequence='t2like')",
                                       lambda seed: mni_subject(seed, sequence="t2like")),
    "Dataset003_CTPhantom": SampleTask("CT", f"ct_phantom(seed, **{PHANTOM_GRID})",
                                       lambda seed: ct_phantom(seed, **PHANTOM_GRID)),
    "Dataset004_MRPhantom": SampleTask("MR", f"mr_phantom(seed, **{PHANTOM_GRID})",
                                       lambda seed: mr_phantom(seed, **PHANTOM_GRID)),
}


def dataset_labels(labels: dict[str, int]) -> tuple[dict, Optional[list[int]]]:
    """nnU-Net v2 ``labels`` and ``regions_class_order`` (None without regions) for a label map.

    MNI label maps also get the region "brain" (grey matter, white matter and other brain). With a
    region nnU-Net v2 trains on regions and needs ``regions_class_order``: the value each region
    writes back, later ones over earlier ones; "brain" comes first so the tissues overwrite it.
    """
    if labels != MNI_LABELS:
        return {"background": 0, **labels}, None
    ordered = {"background": 0, "brain": list(BRAIN_VALUES), **labels}
    return ordered, [MNI_LABELS["other brain"], *labels.values()]


def write_sample_dataset(out_dir, *, n_train: int = 4, n_test: int = 2,
                         tasks: Optional[Sequence[str]] = None,
                         progress: Optional[Callable[[str], None]] = None) -> list[Path]:
    """Write one nnU-Net v2 folder per task (all of ``SAMPLE_TASKS`` unless ``tasks`` names some).

    ``imagesTr``/``labelsTr`` hold ``n_train`` subjects from ``TRAIN_SEEDS``, ``imagesTs``/``labelsTs``
    ``n_test`` from the held-out ``TEST_SEEDS``, as ``.nii.gz``; ``dataset.json`` records the seeds and
    the generator under ``"ka2er"``. Files of an earlier run that this run does not write are removed,
    so a folder always matches its ``dataset.json``. ``progress(message)`` is called once per case.
    Returns the dataset folders.
    """
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got {n_train} and {n_test}")
    unknown = sorted(set(tasks or ()) - set(SAMPLE_TASKS))
    if unknown:
        raise ValueError(f"unknown sample tasks {unknown}; known: {sorted(SAMPLE_TASKS)}")
    out_dir = Path(out_dir)
    folders = []
    for folder_name in tasks or SAMPLE_TASKS:
        task = SAMPLE_TASKS[folder_name]
        folder = out_dir / folder_name
        seeds = {"Tr": list(TRAIN_SEEDS[:n_train]), "Ts": list(TEST_SEEDS[:n_test])}
        for split, split_seeds in seeds.items():
            written = set()
            for seed in split_seeds:
                subject = task.make(seed)
                written.add(save_volume(folder / f"images{split}" / f"{subject.name}_0000.nii.gz",
                                        subject.image))
                written.add(save_volume(folder / f"labels{split}" / f"{subject.name}.nii.gz",
                                        subject.label))
                if progress:
                    progress(f"{folder_name}: {subject.name} ({'train' if split == 'Tr' else 'test'})")
            for stale in {*folder.glob(f"images{split}/*.nii.gz"),
                          *folder.glob(f"labels{split}/*.nii.gz")} - written:
                stale.unlink()
        # ``subject``: the last one written (there is at least one training case).
        labels, regions_class_order = dataset_labels(subject.label.labels)
        meta = {"name": folder_name, "description": f"KA2ER sample: {subject.task}",
                "channel_names": {"0": task.channel}, "labels": labels,
                "numTraining": n_train, "file_ending": ".nii.gz",
                "ka2er": {"task": subject.task, "modality": subject.modality,
                          "generator": task.generator, "train_seeds": seeds["Tr"],
                          "test_seeds": seeds["Ts"]}}
        if regions_class_order:
            meta["regions_class_order"] = regions_class_order
        with atomic_write(folder / "dataset.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
        folders.append(folder)
    return folders
