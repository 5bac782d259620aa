"""``ka2er evaluate``: the protocol over held-out dataset cases -> JSON report and a Dice plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..data.msd import load_dataset
from ..io.atomic import atomic_write
from ..training.clicks import first_prompts
from .protocol import run_protocol


def evaluate_bundle(bundle_path, folders: Sequence, prompts: int, first: str = "auto",
                    split: str = "test", device: str = "auto", max_cases: Optional[int] = None,
                    progress: Optional[Callable[[str], None]] = None, baseline: bool = False) -> dict:
    """Run the protocol for every target of every case; returns the report (see :func:`summarise`).

    ``first``: "box", "click", or "auto": a box when it identifies the target, else a click (see
    :func:`~ka2er_core.training.clicks.first_prompts`). ``baseline`` runs the classical random-walker
    baseline on the same prompts instead of a bundle.
    """
    if baseline:
        from .baseline import RandomWalkerSession

        session = RandomWalkerSession()
    else:
        from ..bundle import load_bundle
        from ..inference import InteractiveSession

        session = InteractiveSession(load_bundle(bundle_path), device=device)
    runs = []
    for folder in folders:
        dataset = load_dataset(folder)
        cases = dataset.test_cases if split == "test" else dataset.cases
        for case in cases[:max_cases]:
            images, label = case.load()
            if label is None:
                continue
            session.set_image(images[0])
            targets = {name: value if isinstance(value, tuple) else (value,)
                       for name, value in dataset.labels.items()}
            identifying = first_prompts(label.array, targets)
            for name, values in targets.items():
                if name not in identifying:  # absent from this case
                    continue
                kind = first if first != "auto" else ("box" if "box" in identifying[name] else "click")
                truth = np.isin(label.array, values)
                run = run_protocol(session, images[0], truth, prompts, kind, target=name)
                runs.append({"task": dataset.name, "case": case.case_id, "target": name,
                             "first": kind, **run.to_dict()})
                if progress:
                    progress(f"{dataset.name}/{case.case_id} {name}: Dice "
                             + " ".join(f"{d:.3f}" for d in run.dice))
    return summarise(runs, {"bundle": "random walker" if baseline else str(bundle_path),
                            "prompts": prompts, "first": first, "split": split})


def summarise(runs: list[dict], settings: dict) -> dict:
    """Mean Dice per prompt for each task and target, NoC85/NoC90 and latency percentiles."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["task"], run["target"]), []).append(run)
    summary = []
    for (task, target), group in sorted(groups.items()):
        curves = np.array([g["dice"] for g in group])
        latencies = [v for g in group for v, p in zip(g["latency_ms"], g["prompts"]) if p != "none"]
        summary.append({
            "task": task, "target": target, "cases": len(group),
            "mean_dice": curves.mean(axis=0).round(4).tolist(),
            "noc85": float(np.mean([g["noc85"] or len(g["dice"]) + 1 for g in group])),
            "noc90": float(np.mean([g["noc90"] or len(g["dice"]) + 1 for g in group])),
            "latency_ms_median": float(np.median(latencies)) if latencies else None,
            "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies else None,
        })
    return {"settings": settings, "summary": summary, "runs": runs}


def write_report(report: dict, out_dir) -> tuple[Path, Path]:
    """``report.json`` and ``dice.png`` (mean Dice against prompts, one line per task and target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "report.json", out_dir / "dice.png"
    with atomic_write(json_path) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    for row in report["summary"]:
        x = np.arange(1, len(row["mean_dice"]) + 1)
        axes.plot(x, row["mean_dice"], marker="o", label=f"{row['task']}: {row['target']}")
    axes.set_xlabel("prompts (first: " + report["settings"]["first"] + ")")
    axes.set_ylabel("mean Dice")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=6, loc="lower right")
    figure.tight_layout()
    with atomic_write(png_path) as tmp:
        figure.savefig(tmp)
    plt.close(figure)
    return json_path, png_path


def format_table(report: dict) -> str:
    """Plain-text table: task, target, cases, mean Dice at each prompt count, NoC85/NoC90."""
    lines = []
    for row in report["summary"]:
        curve = " ".join(f"{d:.3f}" for d in row["mean_dice"])
        lines.append(f"{row['task']:<22} {row['target']:<14} n={row['cases']:<3} Dice {curve}  "
                     f"NoC85 {row['noc85']:.1f} NoC90 {row['noc90']:.1f}  "
                     f"median {row['latency_ms_median']:.0f} ms")
    return "\n".join(lines)
