"""Choose a moe bundle's selection threshold again, its gate and members unchanged, the way
``ka2er train-gate`` chooses it: on crops of the last training case of each task (the cases the gate
did not train on), with each member kept to the modalities in the gate's config.

Usage: python scripts/reselect_gate_threshold.py MOE DATASET... [--crops 128] [--seed 0] [--write]
(the dataset folders the gate was trained on; --write stores the threshold and the selection summary
in MOE/bundle.json, atomically; without it, only prints them)
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from ka2er_core.bundle import load_bundle
from ka2er_core.bundle.store import write_manifest
from ka2er_core.training.gate import hold_out_last_case, select_threshold
from ka2er_core.training.promptable import load_training_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("moe", type=Path)
    parser.add_argument("datasets", type=Path, nargs="+")
    parser.add_argument("--crops", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    bundle = load_bundle(args.moe)
    meta = bundle.meta
    training = meta.get("training", {})
    segmenters = [bundle.members[name] for name in bundle.gate.members]
    items, targets = load_training_items(args.datasets, segmenters[0].normalization)
    _, validation = hold_out_last_case(items)
    targets = [replace(t, weight=1.0) for t in targets]
    threshold, selection = select_threshold(
        bundle.gate, segmenters, validation, targets, training.get("prompts", "first"),
        training.get("batch_size", 2), args.crops, args.seed, torch.device("cpu"), print)
    print(json.dumps(selection, indent=2))
    if args.write:
        meta["gate"]["threshold"] = threshold
        meta.setdefault("metrics", {})["gate_selection"] = selection
        kept = {key: value for key, value in meta.items()
                if key not in ("format_version", "sha256")}
        write_manifest(args.moe, kept)  # the sha256 of the unchanged weights, checked again


if __name__ == "__main__":
    main()
