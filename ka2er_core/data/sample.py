"""``ka2er data``: a small sample dataset, one nnU-Net v2 folder per task, to try every command on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..io import save_volume
from ..io.atomic import atomic_write
from .mni import BRAIN_VALUES, MNI_LABELS, TEST_SEEDS, TRAIN_SEEDS, mni_subject
from .phantoms import PHANTOM_LABELS, ct_phantom, mr_phantom
from .subject import Subject

# Tasks split by modality or sequence, the way KA2ER splits MyoPS++ by sequence.
SAMPLE_TASKS = {
    "Dataset001_MNIT1": ("MR", "T1", lambda seed: mni_subject(seed, sequence="t1")),
    "Dataset002_MNIT2like": ("MR", "T2like", lambda seed: mni_subject(seed, sequence="t2like")),
    "Dataset003_CTPhantom": ("CT", "CT", lambda seed: ct_phantom(seed)),
    "Dataset004_MRPhantom": ("MR", "MR", lambda seed: mr_phantom(seed)),
}


def labels_json(subject: Subject) -> dict:
    """nnU-Net v2 ``labels``: background, each label, and for MNI the "brain" region."""
    labels = {"background": 0, **subject.label.labels}
    if subject.label.labels == MNI_LABELS:
        labels["brain"] = list(BRAIN_VALUES)
    return labels


def write_sample_dataset(out_dir, *, n_train: int = 4, n_test: int = 2,
                         tasks: Optional[Sequence[str]] = None,
                         progress: Optional[Callable[[str], None]] = None) -> list[Path]:
    """Write the sample ``tasks`` (default: all of ``SAMPLE_TASKS``) under ``out_dir``: training seeds
    in imagesTr/labelsTr, held-out seeds in imagesTs/labelsTs."""
    out_dir = Path(out_dir)
    folders = []
    for folder_name in tasks or SAMPLE_TASKS:
        modality, channel, make = SAMPLE_TASKS[folder_name]
        folder = out_dir / folder_name
        splits = (("Tr", TRAIN_SEEDS[:n_train]), ("Ts", TEST_SEEDS[:n_test]))
        subject = None
        for split, seeds in splits:
            for seed in seeds:
                subject = make(seed)
                case = f"{folder_name.split('_', 1)[1].lower()}_{seed:05d}"
                save_volume(folder / f"images{split}" / f"{case}_0000.nii.gz", subject.image)
                save_volume(folder / f"labels{split}" / f"{case}.nii.gz", subject.label)
                if progress:
                    progress(f"{folder_name}: {case} ({split})")
        meta = {"name": folder_name, "channel_names": {"0": channel}, "labels": labels_json(subject),
                "numTraining": n_train, "file_ending": ".nii.gz",
                "ka2er": {"task": subject.task, "modality": modality,
                          "train_seeds": list(splits[0][1]), "test_seeds": list(splits[1][1])}}
        with atomic_write(folder / "dataset.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
        folders.append(folder)
    return folders
