"""``ka2er evaluate``: the protocol over held-out dataset cases -> JSON report and a Dice plot.

Every report says what it did not score and why (``skipped``): a dataset a task expert does not
segment, an expert's label the dataset has no label for, a target absent from every case."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..data.msd import Dataset, load_dataset
from ..errors import DatasetError, Ka2erError, PromptError
from ..io.atomic import atomic_write
from ..modelspace.clicks import first_prompts
from . import cvpr25
from .comparison import compare, describe_skipped, format_comparison, write_comparison  # noqa: F401
from .protocol import first_prompt, run_protocol


def load_datasets(folders: Sequence, split: str) -> list[Dataset]:
    """The dataset folders, each checked to have cases with labels in ``split`` ("test":
    imagesTs/labelsTs; "train": imagesTr/labelsTr); a folder without any is one
    :class:`~ka2er_core.errors.DatasetError` naming it and pointing to ``--split train``."""
    datasets = [folder if isinstance(folder, Dataset) else load_dataset(folder) for folder in folders]
    for dataset in datasets:
        cases = dataset.test_cases if split == "test" else dataset.cases
        if any(case.label_path is not None for case in cases):
            continue
        if split != "test":
            raise DatasetError("no training cases with labels to score", path=dataset.root)
        if "channel_names" in dataset.meta or "file_ending" in dataset.meta:  # nnU-Net v2
            found = ("no imagesTs/ folder" if not (dataset.root / "imagesTs").is_dir() else
                     f"imagesTs/ holds {len(cases)} cases, labelsTs/ none of their labels" if cases
                     else "imagesTs/ holds no cases")
        else:
            found = (f"dataset.json's test list has {len(cases)} images and no labels" if cases
                     else "dataset.json lists no test cases")
        raise DatasetError(f"no held-out test cases with labels to score ({found}); add them, or "
                           "score the training cases with --split train (imagesTr/, labelsTr/: a "
                           "model trained on them scores higher than on new cases)",
                           path=dataset.root)
    return datasets


def evaluate_bundle(bundle_path, folders: Sequence, prompts: int, first: str = "auto",
                    split: str = "test", device: str = "auto", max_cases: Optional[int] = None,
                    progress: Optional[Callable[[str], None]] = None, baseline: bool = False,
                    refine: bool = False, label_map: Optional[Mapping[str, str]] = None,
                    protocol: str = "default") -> dict:
    """Run the protocol for every target of every case that annotates it; returns the report (see
    :func:`summarise`).

    ``first``: "box", "click", or "auto": a box when it identifies the target, else a click (see
    :func:`~ka2er_core.modelspace.clicks.first_prompts`); a box goes around the target's largest
    connected component (:func:`~ka2er_core.modelspace.clicks.first_box`). ``baseline`` runs the
    classical random-walker baseline on the same prompts instead of a bundle. ``refine``: the
    session refines zoomed-out answers with base-spacing tiles
    (:class:`~ka2er_core.inference.InteractiveSession` ``refine``). ``label_map`` {expert label:
    dataset label} is for task experts (:func:`evaluate_expert`). ``split`` "test" needs labelled
    test cases in every folder (:func:`load_datasets`). ``protocol`` "cvpr25": the CVPR 2025
    challenge's box and clicks and its metrics (:mod:`~ka2er_core.evaluation.cvpr25`; ``first`` unused).
    """
    challenge = protocol == "cvpr25"
    if baseline:
        from .baseline import RandomWalkerSession

        session = RandomWalkerSession()
    else:
        from ..bundle import Expert, load_bundle
        from ..inference import InteractiveSession

        bundle = load_bundle(bundle_path)
        if isinstance(bundle.default, Expert):
            if challenge:
                raise Ka2erError(f"{bundle_path} is a task expert (no prompts): the cvpr25 protocol "
                                 "scores promptable bundles", field="--protocol")
            return evaluate_expert(bundle.default, bundle_path, folders, prompts, split, device,
                                   max_cases, progress, label_map=label_map)
        datasets = load_datasets(folders, split)
        session = InteractiveSession(bundle, device=device, refine=refine)
        if first == "box" and not challenge and "box" not in session.prompt_types:
            raise PromptError(f"{bundle_path} takes points only: evaluate it with --first click or "
                              "auto", field="--first")
    if baseline:
        datasets = load_datasets(folders, split)
    runs, skipped = [], []
    for dataset in datasets:
        cases = dataset.test_cases if split == "test" else dataset.cases
        scored = set()
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
                truth = np.isin(label.array, values)
                if challenge:
                    run = cvpr25.run_cvpr25(session, images[0], truth, prompts, name,
                                           cvpr25.box_rng(case.case_id, name))
                    kind = run.prompts[0]
                else:
                    kind = first_prompt(first, identifying[name], session.prompt_types)
                    run = run_protocol(session, images[0], truth, prompts, kind, target=name)
                runs.append({"task": dataset.name, "case": case.case_id, "target": name,
                             "first": kind, **run.to_dict()})
                scored.add(name)
                if progress:
                    progress(f"{dataset.name}/{case.case_id} {name}: Dice "
                             + " ".join(f"{d:.3f}" for d in run.dice))
        skipped += [{"task": dataset.name, "target": name,
                     "reason": "absent from (or not annotated in) every case scored"}
                    for name in dataset.labels if name not in scored]
    return summarise(runs, {"bundle": "random walker" if baseline else str(bundle_path),
                            "prompts": prompts, "first": "box" if challenge else first,
                            "split": split, **({"protocol": protocol} if challenge else {}),
                            **({"refine": True} if refine and not baseline else {})}, skipped)


def label_key(name: str) -> str:
    """A label name as names are matched: case, spaces, underscores and hyphens ignored
    ("Right_Kidney" is "right kidney")."""
    return re.sub(r"[\s_-]+", " ", name).strip().lower()


def match_labels(expert_labels: Mapping[str, int], dataset_labels: Mapping,
                 label_map: Optional[Mapping[str, str]] = None) -> tuple[dict[str, list[int]], list[str]]:
    """Which expert label values score which dataset label, by name: ({dataset label: [expert
    values]}, [expert labels with no dataset label]). An expert label goes to the dataset label that
    ``label_map`` names for it (names compared by :func:`label_key`), else to the dataset label of
    the same name; several expert labels mapped to one dataset label are scored as their union.
    A dataset region (nnU-Net v2: a label of several values) that no expert label names is scored
    as the union of the expert labels matched to the plain labels it unites, when every one of them
    is matched (an expert of grey and white matter scores the region "brain" of grey, white matter
    and the rest). Label numbers play no part: an expert's "tumour" (2) never scores the dataset's
    "kidney" (2)."""
    mapped = {label_key(ours): label_key(theirs) for ours, theirs in (label_map or {}).items()}
    dataset_names = {label_key(name): name for name in dataset_labels}
    pairs: dict[str, list[int]] = {}
    unmatched = []
    for name, value in expert_labels.items():
        target = dataset_names.get(mapped.get(label_key(name), label_key(name)))
        if target is None:
            unmatched.append(name)
        else:
            pairs.setdefault(target, []).append(int(value))
    plain = {value: name for name, value in dataset_labels.items() if isinstance(value, int)}
    for name, values in dataset_labels.items():
        if isinstance(values, tuple) and name not in pairs and all(
                plain.get(v) in pairs for v in values):
            pairs[name] = sorted({ours for v in values for ours in pairs[plain[v]]})
    return pairs, unmatched


def channel_is_ct(channel: str) -> bool:
    return channel.strip().lower() == "ct"


def evaluate_expert(expert, bundle_path, folders: Sequence, prompts: int, split: str = "test",
                    device: str = "auto", max_cases: Optional[int] = None,
                    progress: Optional[Callable[[str], None]] = None,
                    label_map: Optional[Mapping[str, str]] = None) -> dict:
    """A task expert: one automatic segmentation per case, no prompts; its Dice fills every prompt
    count so that it lines up with the promptable models' curves.

    Which datasets: the one named as the expert's task (an nnU-Net model's dataset name), if it is
    among ``folders``; otherwise every dataset with a label of the same name as one of the expert's
    (or the name ``label_map`` gives it) whose image is of the expert's kind (CT or not). Labels are
    matched by name (:func:`match_labels`), never by number. What is not scored is in the report's
    ``skipped``, with the reason."""
    from ..inference.automatic import segment_automatic
    from .protocol import ProtocolRun, dice

    datasets = load_datasets(folders, split)
    plan = expert.plan
    own = [d for d in datasets if d.name == plan.task]
    reads_ct = {"ct": True, "mr": False}.get(plan.normalization.get("kind"))
    expert_names = ", ".join(plan.labels)
    runs, skipped = [], []
    for dataset in datasets:
        pairs, unmatched = match_labels(plan.labels, dataset.labels, label_map)
        names = ", ".join(dataset.labels)
        reason = None
        if own and dataset not in own:
            reason = f"not this expert's task ({plan.task}, also given with --dataset)"
        elif not pairs:
            reason = (f"none of the expert's labels ({expert_names}) names a label of this dataset "
                      f"({names}); match them with --label-map EXPERT_LABEL=DATASET_LABEL")
        elif not own and reads_ct is not None and reads_ct != channel_is_ct(dataset.channel_names[0]):
            reason = (f"the expert reads {'CT' if reads_ct else 'MR (not CT)'} images, this "
                      f"dataset's channel 0 is {dataset.channel_names[0]!r}")
        if reason:
            skipped.append({"task": dataset.name, "reason": reason})
            continue
        skipped += [{"task": dataset.name, "label": name,
                     "reason": f"the expert's label {name!r} names no label of this dataset "
                               f"({names}); score it with --label-map '{name}=DATASET_LABEL'"}
                    for name in unmatched]
        cases = dataset.test_cases if split == "test" else dataset.cases
        scored = set()
        for case in cases[:max_cases]:
            images, label = case.load()
            if label is None:
                continue
            start = time.perf_counter()
            predicted = segment_automatic(expert, images[0], device=device).array
            seconds = time.perf_counter() - start
            for name, ours in pairs.items():
                value = dataset.labels[name]
                truth = np.isin(label.array, value if isinstance(value, tuple) else (value,))
                if not truth.any() or not case.annotates(name):
                    continue
                score = dice(np.isin(predicted, ours), truth)
                run = ProtocolRun([score] * prompts, [seconds * 1000] + [0.0] * (prompts - 1),
                                  [expert.name] * prompts, ["automatic"] + ["none"] * (prompts - 1))
                runs.append({"task": dataset.name, "case": case.case_id, "target": name,
                             "first": "automatic", **run.to_dict()})
                scored.add(name)
                if progress:
                    progress(f"{dataset.name}/{case.case_id} {name}: Dice {score:.3f} (automatic)")
        skipped += [{"task": dataset.name, "target": name,
                     "reason": "absent from (or not annotated in) every case scored"}
                    for name in pairs if name not in scored]
    matched = {"label_map": dict(label_map)} if label_map else {}
    return summarise(runs, {"bundle": str(bundle_path), "prompts": prompts, "first": "automatic",
                            "split": split, **matched}, skipped)


def summarise(runs: list[dict], settings: dict, skipped: Sequence[dict] = ()) -> dict:
    """Mean Dice per prompt for each task and target, NoC85/NoC90 and latency percentiles;
    ``skipped``: what was not scored, each {"task", and "target" or "label" where one, "reason"}."""
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
            **cvpr25.summarise_metrics(group),
        })
    return {"settings": settings, "summary": summary, "runs": runs, "skipped": list(skipped)}


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
    if report["summary"]:
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
        latency = row["latency_ms_median"]
        lines.append(f"{row['task']:<22} {row['target']:<14} n={row['cases']:<3} Dice {curve}  "
                     f"NoC85 {row['noc85']:.1f} NoC90 {row['noc90']:.1f}  "
                     + ("median n/a" if latency is None else f"median {latency:.0f} ms")
                     + cvpr25.format_metrics(row))
    lines += [f"skipped: {describe_skipped(entry)}" for entry in report.get("skipped", ())]
    return "\n".join(lines)


def merge_reports(reports: Sequence[dict]) -> dict:
    """One report from several (e.g. one task expert each): all runs, summarised together."""
    settings = dict(reports[0]["settings"], bundle=[r["settings"]["bundle"] for r in reports])
    scored = {run["task"] for report in reports for run in report["runs"]}
    skipped = [{"bundle": report["settings"]["bundle"], **entry} for report in reports
               for entry in report.get("skipped", ())  # a dataset another one scored is no gap
               if "target" in entry or "label" in entry or entry["task"] not in scored]
    return summarise([run for report in reports for run in report["runs"]], settings, skipped)
