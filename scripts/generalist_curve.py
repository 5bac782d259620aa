"""Validation curve of a generalist training run: each weight snapshot on the real-scan check and
the held-out synthetic family, beside the random walker (evaluation only: nothing here trains).

    python scripts/generalist_curve.py --run runs/generalist --init ka2er_core/bundles/demo \
        --realcheck ../shared/realcheck --work runs/curve

Protocol: a box around each target, then 4 clicks at the centre of the largest error (``ka2er
evaluate --first box --prompts 5``). Writes WORK/curve.json (mean Dice after prompts 1..5 per
dataset and step; snapshots already scored are skipped) and WORK/curve.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from ka2er_core.bundle import save_bundle
from ka2er_core.data.heldout import write_heldout_dataset
from ka2er_core.data.realcheck import write_realcheck_dataset
from ka2er_core.evaluation.report import evaluate_bundle
from ka2er_core.training.generalist import with_bands
from ka2er_core.training.promptable import starting_model


def mean_curve(report: dict) -> list[float]:
    curves = np.array([run["dice"] for run in report["runs"]])
    return curves.mean(axis=0).round(4).tolist()


def snapshot_bundle(snapshot: Path, init: Path, base: float, maximum: float, out: Path) -> Path:
    """The snapshot's weights as a bundle of ``init``'s architecture (grown by the snapshot's band
    features, if it has them) at crop spacings ``base`` and ``maximum``."""
    member = starting_model(None, init, base, maximum)
    weights = load_file(str(snapshot))
    if "image_encoder.bands.weight" in weights:
        member.model = with_bands(member.model, weights["image_encoder.bands.weight"].shape[0])
    member.model.load_state_dict(weights)
    member.model.eval()
    return save_bundle(out, member, training={"snapshot": str(snapshot)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="training output folder")
    parser.add_argument("--init", type=Path, required=True, help="the run's --init bundle")
    parser.add_argument("--realcheck", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--base-spacing", type=float, default=0.75)
    parser.add_argument("--max-spacing", type=float, default=4.0)
    parser.add_argument("--heldout-cases", type=int, default=6)
    args = parser.parse_args(argv)
    datasets = {"real check": write_realcheck_dataset(args.realcheck, args.work / "data"),
                "held-out vessel trees": write_heldout_dataset(args.work / "data", args.heldout_cases)}
    curve_path = args.work / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else {"steps": {}}

    def score(bundle) -> dict:
        return {name: mean_curve(evaluate_bundle(bundle, [folder], 5, first="box",
                                                 baseline=bundle is None))
                for name, folder in datasets.items()}

    if "random walker" not in curve:
        curve["random walker"] = score(None)
    if "0" not in curve["steps"]:
        curve["steps"]["0"] = score(args.init)
    for snapshot in sorted((args.run / "checkpoint" / "snapshots").glob("step-*.safetensors")):
        step = str(int(snapshot.stem.split("-")[1]))
        if step in curve["steps"]:
            continue
        bundle = snapshot_bundle(snapshot, args.init, args.base_spacing, args.max_spacing,
                                 args.work / "bundles" / snapshot.stem)
        curve["steps"][step] = score(bundle)
        print(f"step {step}: " + "; ".join(f"{k} {v[0]:.3f} -> {v[-1]:.3f}"
                                           for k, v in curve["steps"][step].items()), flush=True)
        curve_path.write_text(json.dumps(curve, indent=1))
    curve_path.write_text(json.dumps(curve, indent=1))
    plot(curve, args.work / "curve.png")
    return 0


def plot(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(curve["steps"], key=int)
    fig, ax = plt.subplots(figsize=(7, 4))
    for index, name in enumerate(curve["random walker"]):
        colour = f"C{index}"
        for prompt, style in ((0, ":"), (4, "-")):
            ax.plot([int(s) for s in steps], [curve["steps"][s][name][prompt] for s in steps], style,
                    color=colour, marker="o", label=f"{name}, after prompt {prompt + 1}")
            ax.axhline(curve["random walker"][name][prompt], color=colour, linestyle=style, alpha=0.4)
    ax.set_xlabel("training step")
    ax.set_ylabel("mean Dice (faint lines: random walker)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
