"""``ka2er segment``, ``evaluate`` and ``demo``: models applied to images (automatically, or through
the click protocol of a simulated clinician)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Optional, Sequence

from .common import add_output_argument, positive_int, progress_printer


def run_segment(args: argparse.Namespace) -> int:
    from ..bundle import load_expert
    from ..inference.automatic import segment_automatic
    from ..io import load_volume, save_segmentation

    expert = load_expert(args.bundle)
    volume = load_volume(args.image)
    labels = segment_automatic(expert, volume, device=args.device,
                               progress=progress_printer("segment"))
    masks = {name: labels.array == value for name, value in labels.labels.items()}
    save_segmentation(args.out, masks, reference=volume)
    voxel_ml = math.prod(volume.spacing) / 1000
    for name, mask in masks.items():
        count = int(mask.sum())
        print(f"{name}: {count} voxels ({count * voxel_ml:.1f} mL)")
    print(f"wrote {args.out}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..errors import Ka2erError
    from ..evaluation.report import (compare, describe_skipped, evaluate_bundle, format_comparison,
                                    format_table, merge_reports, write_comparison, write_report)

    bundles = args.bundle or [None]
    methods = {method_name(bundle, bundles): bundle for bundle in bundles}
    if args.baseline and len(bundles) == 1 and args.bundle is None:
        methods = {"random walker": "baseline"}
    elif args.baseline:
        methods["random walker"] = "baseline"
    if args.protocol == "cvpr25" and args.first != "auto":
        raise Ka2erError("the cvpr25 protocol starts with its own box (mid-slice box and z-range); "
                         "--first is for the default protocol", field="--first")
    prompts = args.prompts or (6 if args.protocol == "cvpr25" else 5)
    label_map = parse_label_map(args.label_map)
    if label_map:
        check_label_map(label_map, [b for b in methods.values() if b != "baseline"], args.dataset)
    reports = {}
    for name, bundle in methods.items():
        reports[name] = evaluate_bundle(
            None if bundle == "baseline" else bundle, args.dataset, prompts, first=args.first,
            split=args.split, device=args.device, max_cases=args.max_cases,
            progress=progress_printer(f"evaluate {name}"), baseline=bundle == "baseline",
            refine=args.refine, label_map=label_map, protocol=args.protocol)
    experts = [name for name, report in reports.items() if report["settings"]["first"] == "automatic"]
    if len(experts) > 1:  # one column for the task experts, each on its own task
        reports = {"task experts": merge_reports([reports[name] for name in experts]),
                   **{name: report for name, report in reports.items() if name not in experts}}
    if len(reports) == 1:
        report = next(iter(reports.values()))
        if not report["runs"]:  # nothing to write: say why instead of an empty report
            reasons = "; ".join(describe_skipped(entry) for entry in report["skipped"])
            raise Ka2erError(f"nothing was scored ({reasons or 'no case'})",
                             path=report["settings"]["bundle"] if args.bundle else None)
        json_path, png_path = write_report(report, args.out)
        print(format_table(report))
        print(f"wrote {json_path} and {png_path}")
        return 0
    for name, report in reports.items():
        write_report(report, args.out / name.replace("/", "_").replace(" ", "_"))
    paths = write_comparison(reports, args.out)
    print(format_comparison(compare(reports)))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def parse_label_map(texts: Optional[Sequence[str]]) -> dict[str, str]:
    """``--label-map`` values (each ``EXPERT=DATASET[,EXPERT=DATASET...]``, the option repeatable)
    -> {expert label: dataset label}; a malformed pair or an expert label mapped twice is one line."""
    from ..errors import Ka2erError

    pairs: dict[str, str] = {}
    for text in texts or ():
        for item in text.split(","):
            ours, sep, theirs = (part.strip() for part in item.partition("="))
            if not sep or not ours or not theirs:
                within = f" in {text!r}" if item.strip() != text.strip() else ""
                raise Ka2erError(f"expected EXPERT_LABEL=DATASET_LABEL pairs separated by commas, "
                                 f"got {item.strip()!r}{within}", field="--label-map")
            if pairs.get(ours, theirs) != theirs:
                raise Ka2erError(f"expert label {ours!r} is mapped twice ({pairs[ours]!r} and "
                                 f"{theirs!r})", field="--label-map")
            pairs[ours] = theirs
    return pairs


def check_label_map(label_map: dict[str, str], bundles: Sequence[Optional[Path]],
                    folders: Sequence[Path]) -> None:
    """Refuse, before any model runs, a ``--label-map`` that names no expert label of the expert
    bundles evaluated, or no label of the datasets (names compared as evaluate matches them)."""
    from ..bundle import load_bundle
    from ..data.msd import load_dataset
    from ..errors import Ka2erError
    from ..evaluation.report import label_key

    experts = {}
    for bundle in bundles:
        loaded = load_bundle(bundle)
        if loaded.kind == "expert":
            experts[bundle] = loaded.meta.get("labels") or []
    if not experts:
        raise Ka2erError("matches task experts' labels to the dataset's, but no --bundle is a task "
                         "expert (kind expert)", field="--label-map")
    expert_labels = {label_key(name): name for labels in experts.values() for name in labels}
    dataset_labels = {label_key(name): name for folder in folders
                      for name in load_dataset(folder).labels}
    for ours, theirs in label_map.items():
        if label_key(ours) not in expert_labels:
            raise Ka2erError(f"{ours!r} is not a label of the expert bundles (their labels: "
                             f"{', '.join(dict.fromkeys(expert_labels.values()))})",
                             field="--label-map")
        if label_key(theirs) not in dataset_labels:
            raise Ka2erError(f"{theirs!r} is not a label of the datasets (their labels: "
                             f"{', '.join(dict.fromkeys(dataset_labels.values()))})",
                             field="--label-map")


def method_name(bundle: Optional[Path], bundles: Sequence[Optional[Path]]) -> str:
    """A bundle's name in reports: its folder name, with the parent's if two share a name ("default"
    for the shipped default)."""
    if bundle is None:
        return "default"
    names = [b.name for b in bundles if b is not None]
    return bundle.name if names.count(bundle.name) == 1 else f"{bundle.parent.name}/{bundle.name}"


def run_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo as demo

    demo(args.out, progress=progress_printer("demo"), bundle=args.bundle, device=args.device)
    return 0


def add_segmenting_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``segment``, ``evaluate`` and ``demo`` to the ``ka2er`` commands."""
    segment = commands.add_parser(
        "segment", help="segment an image automatically with an expert bundle",
        description="Segment IMAGE with a task expert (no prompts): sliding windows on the expert's "
        "grid, the label map resampled to the image's own grid. Writes a Slicer .seg.nrrd or a label "
        "map (.nii.gz, .nii, .nrrd; values 1..N in the expert's label order).")
    segment.add_argument("image", type=Path, metavar="IMAGE", help=".nrrd, .nii or .nii.gz")
    segment.add_argument("--bundle", required=True, type=Path, help="expert bundle folder")
    add_output_argument(segment, folder=False, required=True, help="output .seg.nrrd or .nii.gz")
    segment.add_argument("--device", default="auto", help="auto, cpu or cuda")
    segment.set_defaults(run=run_segment)

    evaluate = commands.add_parser(
        "evaluate", help="run the click protocol on held-out cases; JSON report and Dice plot",
        description="First prompt a box (or a click), then clicks at the centre of the largest "
        "error; Dice after each prompt, NoC85/NoC90 and latency per task and target. The first box "
        "goes around the target's largest connected component (a label of separate parts, such as "
        "both kidneys, gets a box around the larger; the clicks find the other). Task expert "
        "bundles segment without prompts. Prints and records what was not scored, and why.")
    evaluate.add_argument("--bundle", type=Path, action="append", default=None,
                          help="bundle folder (default: the shipped moe bundle); repeat to compare "
                               "several (task expert bundles segment without prompts; see "
                               "--label-map), "
                               "which also writes comparison.md/.json/.png")
    evaluate.add_argument("--dataset", required=True, action="append", type=Path,
                          help="dataset folder (repeat for several tasks)")
    evaluate.add_argument("--prompts", "--clicks", type=positive_int, default=None,
                          help="prompts per target (default 5; cvpr25: 6, the box and 5 clicks)")
    evaluate.add_argument("--protocol", choices=("default", "cvpr25"), default="default",
                          help="default: the protocol above; cvpr25: the CVPR 2025 interactive 3D "
                               "challenge's: a 3D box from the target's middle-slice 2D box and its "
                               "z-range, then clicks at the distance-transform centre of the largest "
                               "error; adds DSC AUC, NSD AUC (2 mm), final DSC and final NSD")
    evaluate.add_argument("--first", choices=("auto", "box", "click"), default="auto",
                          help="first prompt: a box, a click, or auto (default): a box when it "
                               "identifies the target, a click for nested targets that share the "
                               "box of a larger one (white matter inside the brain)")
    evaluate.add_argument("--split", choices=("test", "train"), default="test",
                          help="imagesTs/labelsTs (default; a folder without them is an error) or "
                               "imagesTr/labelsTr")
    evaluate.add_argument("--label-map", action="append", default=None,
                          metavar="EXPERT=DATASET[,...]",
                          help="task experts: score the expert's label EXPERT as the dataset's "
                               "label DATASET (repeatable). Expert labels are matched to the "
                               "dataset's by name (case, spaces, _ and - ignored), never by number; "
                               "an expert scores the dataset named as its task, or else the "
                               "datasets that share a label name with it. What is not scored is "
                               "listed, with the reason")
    evaluate.add_argument("--max-cases", type=positive_int, default=None)
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    evaluate.add_argument("--baseline", action="store_true",
                          help="run the classical random-walker baseline on the same prompts "
                               "(alone, or as one more method beside --bundle)")
    evaluate.add_argument("--refine", action="store_true",
                          help="refine zoomed-out answers of large objects with base-spacing tiles "
                               "(sharper borders; one crop embedding per tile)")
    add_output_argument(evaluate, default=Path("ka2er-evaluation"),
                        help="folder for report.json and dice.png")
    evaluate.set_defaults(run=run_evaluate)

    demo = commands.add_parser(
        "demo", help="segment a held-out MNI152 pseudo-subject with the shipped model, offline",
        description="A simulated clinician segments the brain (a box, then corrective clicks, 3 "
        "prompts) and the white matter (a click, then corrective clicks, 5 prompts) of a held-out "
        "MNI152 pseudo-subject (nilearn's template, no download); each prompt prints its Dice, "
        "latency and answering model. Writes the volume (.nrrd), result.seg.nrrd, "
        "reference.seg.nrrd, slice pictures, dice.png and report.json to --out.")
    add_output_argument(demo, default=Path("ka2er-demo"),
                        help="folder for the demo's files (default ./ka2er-demo)")
    demo.add_argument("--bundle", type=Path, default=None,
                      help="promptable bundle folder (default: the shipped moe bundle)")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda")
    demo.set_defaults(run=run_demo)
