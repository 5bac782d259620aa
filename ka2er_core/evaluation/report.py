"""``ka2er evaluate``: the protocol over held-out dataset cases -> JSON report and a Dice plot."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..data.msd import load_dataset
from ..errors import PromptError
from ..io.atomic import atomic_write
from ..modelspace.clicks import first_prompts
from .protocol import first_prompt, run_protocol


def evaluate_bundle(bundle_path, folders: Sequence, prompts: int, first: str = "auto",
                    split: str = "test", device: str = "auto", max_cases: Optional[int] = None,
                    progress: Optional[Callable[[str], None]] = None, baseline: bool = False,
                    refine: bool = False) -> dict:
    """Run the protocol for every target of every case that annotates it; returns the report (see
    :func:`summarise`).

    ``first``: "box", "click", or "auto": a box when it identifies the target, else a click (see
    :func:`~ka2er_core.modelspace.clicks.first_prompts`). ``baseline`` runs the classical random-walker
    baseline on the same prompts instead of a bundle. ``refine``: the session refines zoomed-out
    answers with base-spacing tiles (:class:`~ka2er_core.inference.InteractiveSession` ``refine``).
    """
    if baseline:
        from .baseline import RandomWalkerSession

        session = RandomWalkerSession()
    else:
        from ..bundle import Expert, load_bundle
        from ..inference import InteractiveSession

        bundle = load_bundle(bundle_path)
        if isinstance(bundle.default, Expert):
            return evaluate_expert(bundle.default, bundle_path, folders, prompts, split, device,
                                   max_cases, progress)
        session = InteractiveSession(bundle, device=device, refine=refine)
        if first == "box" and "box" not in session.prompt_types:
            raise PromptError(f"{bundle_path} takes points only: evaluate it with --first click or "
                              "auto", field="--first")
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
                       for name, value in dataset.labels.items() if case.annotates(name)}
            identifying = first_prompts(label.array, targets)
            for name, values in targets.items():
                if name not in identifying:  # absent from this case
                    continue
                kind = first_prompt(first, identifying[name], session.prompt_types)
                truth = np.isin(label.array, values)
                run = run_protocol(session, images[0], truth, prompts, kind, target=name)
                runs.append({"task": dataset.name, "case": case.case_id, "target": name,
                             "first": kind, **run.to_dict()})
                if progress:
                    progress(f"{dataset.name}/{case.case_id} {name}: Dice "
                             + " ".join(f"{d:.3f}" for d in run.dice))
    return summarise(runs, {"bundle": "random walker" if baseline else str(bundle_path),
                            "prompts": prompts, "first": first, "split": split,
                            **({"refine": True} if refine and not baseline else {})})


def evaluate_expert(expert, bundle_path, folders: Sequence, prompts: int, split: str = "test",
                    device: str = "auto", max_cases: Optional[int] = None,
                    progress: Optional[Callable[[str], None]] = None) -> dict:
    """A task expert on its own task's cases: one automatic segmentation per case, no prompts; its
    Dice fills every prompt count so that it lines up with the promptable models' curves. Datasets of
    other tasks are skipped."""
    from ..inference.automatic import segment_automatic
    from .protocol import ProtocolRun, dice

    runs = []
    for folder in folders:
        dataset = load_dataset(folder)
        if dataset.name != expert.plan.task:
            continue
        cases = dataset.test_cases if split == "test" else dataset.cases
        for case in cases[:max_cases]:
            images, label = case.load()
            if label is None:
                continue
            start = time.perf_counter()
            predicted = segment_automatic(expert, images[0], device=device).array
            seconds = time.perf_counter() - start
            for name, value in dataset.labels.items():
                values = value if isinstance(value, tuple) else (value,)
                truth = np.isin(label.array, values)
                if not truth.any() or not case.annotates(name):
                    continue
                score = dice(np.isin(predicted, values), truth)
                run = ProtocolRun([score] * prompts, [seconds * 1000] + [0.0] * (prompts - 1),
                                  [expert.name] * prompts, ["automatic"] + ["none"] * (prompts - 1))
                runs.append({"task": dataset.name, "case": case.case_id, "target": name,
                             "first": "automatic", **run.to_dict()})
                if progress:
                    progress(f"{dataset.name}/{case.case_id} {name}: Dice {score:.3f} (automatic)")
    return summarise(runs, {"bundle": str(bundle_path), "prompts": prompts, "first": "automatic",
                            "split": split})


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

    out_dir = Path(out_dir)  # atomic_write makes the folder, or says in one line why it cannot
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


def merge_reports(reports: Sequence[dict]) -> dict:
    """One report from several (e.g. one task expert each): all runs, summarised together."""
    settings = dict(reports[0]["settings"], bundle=[r["settings"]["bundle"] for r in reports])
    return summarise([run for report in reports for run in report["runs"]], settings)


def compare(reports: dict[str, dict], at: Optional[Sequence[int]] = None) -> dict:
    """Several methods' reports side by side: mean Dice per task and target at ``at`` prompts
    (default 1, 3 and 5, as far as the reports go), and each method's mean over the targets every
    method has."""
    if at is None:
        prompts = min(report["settings"]["prompts"] for report in reports.values())
        at = [n for n in (1, 3, 5) if n <= prompts] or [prompts]
    rows: dict[tuple[str, str], dict[str, list]] = {}
    for method, report in reports.items():
        for row in report["summary"]:
            curve = row["mean_dice"]
            rows.setdefault((row["task"], row["target"]), {})[method] = [
                curve[min(n, len(curve)) - 1] for n in at]
    shared = [key for key, by_method in rows.items() if len(by_method) == len(reports)]

    def means(keys):
        return {method: [float(np.mean([rows[key][method][i] for key in keys])) if keys else None
                         for i in range(len(at))] for method in reports}
    tasks = sorted({task for task, _ in shared})
    return {"at": list(at), "methods": list(reports),
            "rows": [{"task": task, "target": target, "dice": by_method}
                     for (task, target), by_method in sorted(rows.items())],
            "task_means": {task: means([k for k in shared if k[0] == task]) for task in tasks},
            "mean_over_shared_targets": means(shared), "shared_targets": len(shared)}


def format_comparison(comparison: dict) -> str:
    """Markdown table: one row per task and target, one column per method, Dice at each count."""
    at = "/".join(str(n) for n in comparison["at"])
    methods = comparison["methods"]
    lines = ["| task: target | " + " | ".join(f"{m} (Dice at {at} prompts)" for m in methods) + " |",
             "| --- |" + " --- |" * len(methods)]

    def cell(values):
        return " / ".join(f"{v:.3f}" for v in values) if values else "-"

    for row in comparison["rows"]:
        lines.append(f"| {row['task']}: {row['target']} | "
                     + " | ".join(cell(row["dice"].get(m)) for m in methods) + " |")
    for task, by_method in comparison.get("task_means", {}).items():
        lines.append(f"| **mean, {task}** | " + " | ".join(cell(by_method[m]) for m in methods) + " |")
    lines.append(f"| **mean over the {comparison['shared_targets']} targets all methods have** | "
                 + " | ".join(cell(comparison["mean_over_shared_targets"][m]) for m in methods) + " |")
    return "\n".join(lines)


def write_comparison(reports: dict[str, dict], out_dir) -> tuple[Path, Path, Path]:
    """``comparison.json`` (every report and the table), ``comparison.md`` and ``comparison.png``
    (mean Dice at each prompt count, one panel per task and target, one line per method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)  # atomic_write makes the folder, or says in one line why it cannot
    comparison = compare(reports)
    paths = out_dir / "comparison.json", out_dir / "comparison.md", out_dir / "comparison.png"
    with atomic_write(paths[0]) as tmp:
        tmp.write_text(json.dumps({"comparison": comparison, "reports": reports}, indent=1) + "\n")
    with atomic_write(paths[1]) as tmp:
        tmp.write_text(format_comparison(comparison) + "\n")
    rows = comparison["rows"]
    columns = min(4, len(rows)) or 1
    figure, axes = plt.subplots((len(rows) + columns - 1) // columns or 1, columns, dpi=100,
                                figsize=(3.2 * columns, 2.6 * ((len(rows) + columns - 1) // columns or 1)),
                                squeeze=False)
    for axis, row in zip(axes.ravel(), rows):
        for method in comparison["methods"]:
            if method in row["dice"]:
                axis.plot(comparison["at"], row["dice"][method], marker="o", label=method)
        axis.set_title(f"{row['task']}: {row['target']}", fontsize=7)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    for axis in axes.ravel()[len(rows):]:
        axis.axis("off")
    axes.ravel()[0].legend(fontsize=6)
    figure.supxlabel("prompts")
    figure.supylabel("mean Dice")
    figure.tight_layout()
    with atomic_write(paths[2]) as tmp:
        figure.savefig(tmp)
    plt.close(figure)
    return paths
