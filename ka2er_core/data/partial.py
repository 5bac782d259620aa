"""Partially labelled datasets: some training cases leave some labels unannotated.

Real collections often are (one hospital outlines the brain, another also the white matter). This
turns a fully labelled dataset folder into such a one, for testing and measuring what trainers do with
it: the chosen cases' voxels of the dropped labels become 0 in their label maps, and
``dataset.json``'s ``annotated_labels`` lists what each of them still annotates (see
:mod:`ka2er_core.data.msd`). Held-out cases stay fully labelled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Union

import numpy as np

from ..errors import DatasetError
from ..io import load_volume, save_volume
from ..io.atomic import atomic_write
from .msd import load_dataset


def drop_annotations(folder: Union[str, Path], fractions: Mapping[str, float], seed: int = 0
                     ) -> dict[str, list[str]]:
    """Leave each plain label of ``fractions`` unannotated in that fraction of the training cases of
    ``folder`` (rounded; cases drawn with ``seed``), in place. Returns {case id: labels it still
    annotates} for the cases changed; labels the dataset does not have are skipped."""
    folder = Path(folder)
    dataset = load_dataset(folder)
    plain = {name: value for name, value in dataset.labels.items() if isinstance(value, int)}
    for name, fraction in fractions.items():
        if not 0 <= fraction <= 1:
            raise DatasetError(f"{name!r}: expected a fraction in [0, 1], got {fraction}",
                               field="fractions")
    rng = np.random.default_rng(seed)
    annotated = {case.case_id: set(case.annotated if case.annotated is not None else plain)
                 for case in dataset.cases}
    for name, fraction in fractions.items():
        if name not in plain:
            continue
        chosen = rng.permutation(len(dataset.cases))[: round(fraction * len(dataset.cases))]
        for index in chosen:
            annotated[dataset.cases[int(index)].case_id].discard(name)
    changed = {}
    for case in dataset.cases:
        keep = annotated[case.case_id]
        dropped = [plain[name] for name in plain if name not in keep]
        if case.annotated is None and not dropped:
            continue
        label = load_volume(case.label_path)
        array = np.where(np.isin(label.array, dropped), 0, label.array).astype(label.array.dtype)
        save_volume(case.label_path, label.with_array(array))
        changed[case.case_id] = sorted(keep)
    meta = dict(dataset.meta)
    meta["annotated_labels"] = {**meta.get("annotated_labels", {}), **changed}
    with atomic_write(folder / "dataset.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return changed
