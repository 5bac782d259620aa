"""Soft labels from task experts for the labels a partially labelled case leaves unannotated.

Where a case's label map says background, an unannotated label may still be there. The frozen expert
of the case's task fills it in: its softmax probabilities, conditioned on what the case does annotate
(a voxel labelled grey matter cannot be white matter), i.e. restricted to the background and the
unannotated labels and renormalised:

    q_u = p_u / (p_0 + sum_{u' unannotated} p_u')   where the label map is 0, else 0.

A target's soft truth is the sum over its label values: 1 on voxels of its annotated values, q_u for
its unannotated ones. Probabilities are computed once per case, on the case's own grid.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..geometry import resample
from ..modeling.expert import TaskExpert
from .samples import LabelledImage


class ExpertSoftLabels:
    """Soft labels for the cases of the experts' tasks (an expert's ``plan.task`` is its dataset)."""

    def __init__(self, experts: Sequence[TaskExpert]):
        self.experts = {expert.plan.task: expert for expert in experts}
        self._cases: dict[int, tuple[np.ndarray, dict[int, np.ndarray]]] = {}

    def covers(self, item: LabelledImage, values: Sequence[int]) -> bool:
        """Whether every value of a target that ``item`` leaves unannotated has an expert behind it."""
        expert = self.experts.get(item.task)
        missing = set(values) & item.unannotated
        return not missing or (expert is not None
                                and missing <= set(expert.plan.labels.values()))

    def _case(self, item: LabelledImage) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """(completed label map (k, j, i) uint8, {unannotated value: q (k, j, i) float16})."""
        key = id(item)
        if key not in self._cases:
            from ..inference.automatic import plan_grid_probabilities

            expert = self.experts[item.task]
            known = [v for v in expert.plan.labels.values() if v in item.unannotated]
            grid, probabilities = plan_grid_probabilities(expert, item.image)
            target_grid = item.label.grid
            classes = [0] + [1 + list(expert.plan.labels.values()).index(v) for v in known]
            on_case = [resample(probabilities[c], grid.ijk_to_ras, target_grid, order=1,
                                fill=1.0 if c == 0 else 0.0) for c in classes]
            total = np.maximum(np.sum(on_case, axis=0), 1e-6)
            unlabelled = item.label.array == 0
            soft = {v: np.where(unlabelled, p / total, 0).astype(np.float16)
                    for v, p in zip(known, on_case[1:])}
            completed = item.label.array.copy()
            if known:
                stacked = np.stack([on_case[0]] + on_case[1:])
                winner = np.argmax(stacked, axis=0)
                values = np.array([0] + known, dtype=completed.dtype)
                completed[unlabelled] = values[winner[unlabelled]]
            self._cases[key] = completed, soft
        return self._cases[key]

    def completed_label(self, item: LabelledImage) -> np.ndarray:
        """The case's label map with each unannotated label where the expert finds it most likely."""
        return self._case(item)[0]

    def probability(self, item: LabelledImage, values: Sequence[int]) -> Optional[np.ndarray]:
        """A target's soft truth (k, j, i) float32 on the case's grid; None if ``item`` annotates it."""
        if not set(values) & item.unannotated:
            return None
        _, soft = self._case(item)
        truth = np.isin(item.label.array, [v for v in values if v not in item.unannotated])
        truth = truth.astype(np.float32)
        for value in values:
            if value in soft:
                truth += soft[value]
        return np.clip(truth, 0, 1)
