"""Several methods' reports side by side (``ka2er evaluate`` with more than one method): mean Dice at
chosen prompt counts per task and target, the challenge's metrics where the protocol was cvpr25, and
``comparison.json``/``.md``/``.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..io.atomic import atomic_write
from .cvpr25 import compare_metrics, format_compared


def describe_skipped(entry: dict) -> str:
    """One skipped entry as a line: ``[method: ][bundle folder: ]task[: target or label]: reason``."""
    where = [entry[key] if key != "bundle" else Path(entry[key]).name
             for key in ("method", "bundle", "task") if key in entry]
    if "target" in entry:
        where.append(entry["target"])
    elif "label" in entry:
        where.append(f"expert label {entry['label']}")
    return ": ".join([*where, entry["reason"]])


def compare(reports: dict[str, dict], at: Optional[Sequence[int]] = None) -> dict:
    """Several methods' reports side by side: mean Dice per task and target at ``at`` prompts
    (default 1, 3 and 5, as far as the reports go), and each method's mean over the targets every
    method has; a method without a value for a target has None there (printed "n/a"). ``skipped``
    lists what each method did not score, and why; ``cvpr25``: the challenge's metrics, where the
    reports have them (:func:`~ka2er_core.evaluation.cvpr25.compare_metrics`)."""
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
            "mean_over_shared_targets": means(shared), "shared_targets": len(shared),
            "skipped": [{"method": method, **entry} for method, report in reports.items()
                        for entry in report.get("skipped", ())],
            **compare_metrics(reports)}


def format_comparison(comparison: dict) -> str:
    """Markdown table: one row per task and target, one column per method, Dice at each count."""
    at = "/".join(str(n) for n in comparison["at"])
    noun = "prompt" if comparison["at"] == [1] else "prompts"
    methods = comparison["methods"]
    lines = ["| task: target | " + " | ".join(f"{m} (Dice at {at} {noun})" for m in methods) + " |",
             "| --- |" + " --- |" * len(methods)]

    def cell(values):
        if not values or all(v is None for v in values):
            return "n/a"
        return " / ".join("n/a" if v is None else f"{v:.3f}" for v in values)

    for row in comparison["rows"]:
        lines.append(f"| {row['task']}: {row['target']} | "
                     + " | ".join(cell(row["dice"].get(m)) for m in methods) + " |")
    for task, by_method in comparison.get("task_means", {}).items():
        lines.append(f"| **mean, {task}** | " + " | ".join(cell(by_method[m]) for m in methods) + " |")
    lines.append(f"| **mean over the {comparison['shared_targets']} targets all methods have** | "
                 + " | ".join(cell(comparison["mean_over_shared_targets"][m]) for m in methods) + " |")
    lines += format_compared(comparison)
    if comparison.get("skipped"):
        lines += ["", "Not scored:"] + [f"- {describe_skipped(entry)}" for entry in comparison["skipped"]]
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
    if rows:
        axes.ravel()[0].legend(fontsize=6)
    figure.supxlabel("prompts")
    figure.supylabel("mean Dice")
    figure.tight_layout()
    with atomic_write(paths[2]) as tmp:
        figure.savefig(tmp)
    plt.close(figure)
    return paths
