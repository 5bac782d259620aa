"""Dice of the experts' soft labels (> 0.5) against the annotations a partially labelled copy dropped.

Usage: python scripts/soft_label_dice.py FULL_DIR PARTIAL_DIR EXPERTS_DIR TASK...
(FULL_DIR/TASK the fully labelled dataset, PARTIAL_DIR/TASK its partially labelled copy, EXPERTS_DIR/TASK
the expert trained on the copy.)
"""

import sys
from pathlib import Path

from ka2er_core.bundle import load_expert
from ka2er_core.data.msd import load_dataset
from ka2er_core.evaluation.protocol import dice
from ka2er_core.modeling.normalization import Normalization
from ka2er_core.training.promptable import load_training_items
from ka2er_core.training.soft_labels import ExpertSoftLabels


def main(full: Path, partial: Path, experts: Path, tasks: list[str]) -> None:
    for task in tasks:
        soft = ExpertSoftLabels([load_expert(experts / task)])
        truths = {case.case_id: case for case in load_dataset(full / task).cases}
        dataset = load_dataset(partial / task)
        items, _ = load_training_items([partial / task], Normalization("auto"))
        for case, item in zip(dataset.cases, items):
            if not case.unannotated_values:
                continue
            _, label = truths[case.case_id].load()
            for value in sorted(case.unannotated_values):
                name = next(n for n, v in dataset.labels.items() if v == value)
                probability = soft.probability(item, (value,))
                score = dice(probability > 0.5, label.array == value)
                print(f"{task}/{case.case_id} {name}: soft-label Dice {score:.3f}, "
                      f"mean probability on the truth {probability[label.array == value].mean():.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
