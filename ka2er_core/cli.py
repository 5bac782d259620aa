"""The ``ka2er`` command. User errors print one line and exit 2; bugs keep their traceback."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import __version__
from .bundle_cli import add_bundle_command
from .errors import Ka2erError
from .io.atomic import check_output
from .server.command import add_serve_command


def progress_printer(prefix: str) -> Callable[[str], None]:
    """A progress callback printing ``prefix [elapsed] message`` lines to stderr."""
    start = time.perf_counter()

    def report(message: str) -> None:
        print(f"{prefix} [{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr,
              flush=True)

    return report


def add_output_argument(parser: argparse.ArgumentParser, flag: str = "--out", *,
                        folder: bool = True, **options) -> None:
    """Add the option ``flag`` naming where the command writes (a ``folder``, or a file);
    :func:`main` refuses it in one line, before the command does any work, if it cannot be written
    (:func:`~ka2er_core.io.atomic.check_output`)."""
    action = parser.add_argument(flag, type=Path, **options)
    parser.set_defaults(outputs=[*(parser.get_default("outputs") or []), (action.dest, flag, folder)])


def check_outputs(args: argparse.Namespace) -> None:
    for dest, flag, folder in getattr(args, "outputs", None) or []:
        if getattr(args, dest) is not None:
            check_output(getattr(args, dest), field=flag, folder=folder)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def run_info(args: argparse.Namespace) -> int:
    from .info import describe

    failures = 0
    for path in args.files:
        try:
            print(describe(path))
        except Ka2erError as err:
            print(f"ka2er: error: {err}", file=sys.stderr)
            failures += 1
    return 2 if failures else 0


def run_data(args: argparse.Namespace) -> int:
    from .data.sample import write_sample_dataset

    if args.realcheck is not None:
        from .data.realcheck import write_realcheck_dataset

        print(write_realcheck_dataset(args.realcheck, args.out))
        return 0
    if args.heldout is not None:
        from .data.heldout import write_heldout_dataset

        print(write_heldout_dataset(args.out, args.heldout))
        return 0
    folders = write_sample_dataset(args.out, n_train=args.train, n_test=args.test,
                                   progress=progress_printer("data"))
    if args.unannotated:
        from .data.partial import drop_annotations

        for folder in folders:
            changed = drop_annotations(folder, dict(args.unannotated), seed=args.seed)
            if changed:
                print(f"ka2er data: {folder.name}: {len(changed)} training cases partially labelled",
                      file=sys.stderr)
    for folder in folders:
        print(folder)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .modeling import ModelConfig
    from .training.promptable import train_promptable

    config = ModelConfig.tiny() if args.size == "tiny" else ModelConfig.full()
    out = train_promptable(args.dataset, args.out, steps=args.steps, batch_size=args.batch_size,
                           config=config, init=args.init, base_spacing=args.base_spacing,
                           max_spacing=args.max_spacing, lr=args.lr, seed=args.seed,
                           target_weights=dict(args.target_weight),
                           progress=progress_printer("train"))
    print(out)
    return 0


def run_amalgamate(args: argparse.Namespace) -> int:
    from .modeling import ModelConfig
    from .training.amalgamate import amalgamate

    config = ModelConfig.tiny() if args.size == "tiny" else ModelConfig.full()
    out = amalgamate(args.dataset, args.expert, args.out, steps=args.steps,
                     batch_size=args.batch_size, config=config, init=args.init,
                     base_spacing=args.base_spacing, max_spacing=args.max_spacing,
                     hidden=args.hidden, heads=args.heads, distill_weight=args.distill_weight,
                     lr=args.lr, seed=args.seed, target_weights=dict(args.target_weight),
                     soft_label_weight=args.soft_label_weight, progress=progress_printer("amalgamate"))
    print(out)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from .training.promptable import train_promptable

    out = train_promptable([args.dataset], args.out, steps=args.steps, batch_size=args.batch_size,
                           init=args.bundle, lr=args.lr, seed=args.seed,
                           target_weights=dict(args.target_weight),
                           progress=progress_printer("finetune"))
    print(out)
    return 0


def run_train_gate(args: argparse.Namespace) -> int:
    from .training.gate import train_gate

    out = train_gate(args.general, args.member, args.dataset, args.out, steps=args.steps,
                     batch_size=args.batch_size, reuse=args.reuse, lr=args.lr,
                     temperature=args.temperature, validation_crops=args.validation_crops,
                     seed=args.seed, target_weights=dict(args.target_weight),
                     prompts=args.prompts, half_members=args.half_members,
                     progress=progress_printer("train-gate"))
    print(out)
    return 0


def run_train_expert(args: argparse.Namespace) -> int:
    from .training.expert import train_expert

    out = train_expert(args.dataset, args.out, steps=args.steps, batch_size=args.batch_size,
                       size=args.size, lr=args.lr, seed=args.seed,
                       progress=progress_printer("train-expert"))
    print(out)
    return 0


def run_segment(args: argparse.Namespace) -> int:
    from .bundle import load_expert
    from .inference.automatic import segment_automatic
    from .io import load_volume, save_segmentation

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
    from .evaluation.report import (compare, evaluate_bundle, format_comparison, format_table,
                                    merge_reports, write_comparison, write_report)

    bundles = args.bundle or [None]
    methods = {method_name(bundle, bundles): bundle for bundle in bundles}
    if args.baseline and len(bundles) == 1 and args.bundle is None:
        methods = {"random walker": "baseline"}
    elif args.baseline:
        methods["random walker"] = "baseline"
    reports = {}
    for name, bundle in methods.items():
        reports[name] = evaluate_bundle(
            None if bundle == "baseline" else bundle, args.dataset, args.prompts, first=args.first,
            split=args.split, device=args.device, max_cases=args.max_cases,
            progress=progress_printer(f"evaluate {name}"), baseline=bundle == "baseline",
            refine=args.refine)
    experts = [name for name, report in reports.items() if report["settings"]["first"] == "automatic"]
    if len(experts) > 1:  # one column for the task experts, each on its own task
        reports = {"task experts": merge_reports([reports[name] for name in experts]),
                   **{name: report for name, report in reports.items() if name not in experts}}
    if len(reports) == 1:
        report = next(iter(reports.values()))
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


def method_name(bundle: Optional[Path], bundles: Sequence[Optional[Path]]) -> str:
    """A bundle's name in reports: its folder name, with the parent's if two share a name."""
    if bundle is None:
        return "demo"
    names = [b.name for b in bundles if b is not None]
    return bundle.name if names.count(bundle.name) == 1 else f"{bundle.parent.name}/{bundle.name}"


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo

    demo(args.out, progress=progress_printer("demo"), bundle=args.bundle, device=args.device)
    return 0


def named_number(text: str, form: str, upper: float = math.inf) -> tuple[str, float]:
    """``NAME=NUMBER`` -> (name, number), the number in [0, ``upper``]; ``form`` names it in errors."""
    name, sep, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or not name.strip() or not (math.isfinite(number) and 0 <= number <= upper):
        bound = f"in [0, {upper:g}]" if math.isfinite(upper) else ">= 0"
        raise argparse.ArgumentTypeError(f"expected {form} with a number {bound}, got {text!r}")
    return name.strip(), number


def target_weight(text: str) -> tuple[str, float]:
    """``TARGET=WEIGHT`` (``--target-weight "white matter=3"``) -> (name, weight)."""
    return named_number(text, "TARGET=WEIGHT")


def label_fraction(text: str) -> tuple[str, float]:
    """``LABEL=FRACTION`` (``--unannotated "white matter=0.5"``) -> (name, fraction)."""
    return named_number(text, "LABEL=FRACTION", upper=1.0)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def add_target_weight_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-weight", action="append", type=target_weight, default=[],
                        metavar="TARGET=WEIGHT",
                        help="draw TARGET (a label name, e.g. \"white matter=3\") WEIGHT times as "
                             "often as a target of weight 1 of its task (repeat; default 1 each)")


def add_promptable_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the trainers of promptable models (train, amalgamate)."""
    parser.add_argument("--dataset", required=True, action="append", type=Path,
                        help="dataset folder (repeat for several tasks)")
    add_output_argument(parser, required=True, help="bundle folder to write")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this bundle's promptable model (fine-tuning) instead of "
                             "random weights")
    parser.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps (default 2000)")
    parser.add_argument("--batch-size", type=positive_int, default=2, help="crops per step and process")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny",
                        help="model size without --init: tiny (CPU) or full (GPU)")
    parser.add_argument("--base-spacing", type=float, default=None,
                        help="finest crop spacing, mm (default: --init's, else 1.5)")
    parser.add_argument("--max-spacing", type=float, default=None,
                        help="coarsest crop spacing, mm (default: --init's, else 4.0)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    add_target_weight_argument(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ka2er", description="KA2ER Segment: interactive prompt-based 3D segmentation.")
    parser.add_argument("--version", action="version", version=f"ka2er {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="shape, spacing, orientation, intensities and labels of files",
                               description="Print what to check before segmenting: size, spacing, "
                               "orientation, intensity range, dtype, and labels with voxel counts.")
    info.add_argument("files", nargs="+", metavar="FILE", help=".nrrd, .nii, .nii.gz or .seg.nrrd")
    info.set_defaults(run=run_info)

    data = commands.add_parser("data", help="write a small sample dataset (nnU-Net v2 folders)",
                               description="Write one nnU-Net v2 dataset folder per sample task "
                               "(MNI152 pseudo-subjects and CT/MR phantoms) under --out.")
    add_output_argument(data, required=True, help="folder to write into")
    data.add_argument("--train", type=positive_int, default=4, help="training cases per task (default 4)")
    data.add_argument("--test", type=positive_int, default=2, help="held-out cases per task (default 2)")
    data.add_argument("--unannotated", action="append", type=label_fraction, default=[],
                      metavar="LABEL=FRACTION",
                      help="leave LABEL unannotated in that fraction of each task's training cases "
                           "(a partially labelled dataset, see annotated_labels; repeat)")
    data.add_argument("--seed", type=int, default=0, help="which training cases --unannotated picks")
    checks = data.add_mutually_exclusive_group()
    checks.add_argument("--realcheck", type=Path, metavar="DIR",
                        help="instead of the sample tasks: the real-scan check (evaluation only) from "
                             "DIR (../shared/realcheck): its twelve largest labels as targets")
    checks.add_argument("--heldout", type=positive_int, metavar="N",
                        help="instead of the sample tasks: N cases of the synthetic family the "
                             "generalist never trains on (branching vessel trees)")
    data.set_defaults(run=run_data)

    train = commands.add_parser(
        "train", help="train the general promptable model on dataset folders",
        description="Train the promptable model with simulated clicks and boxes on nnU-Net v2 / MSD "
        "dataset folders (one task per folder). Resumes from OUT/checkpoint; writes a bundle to OUT. "
        "Runs under torchrun for several processes (DDP).")
    add_promptable_training_arguments(train)
    train.set_defaults(run=run_train)

    amalgamate = commands.add_parser(
        "amalgamate", help="train a KA2ER student from frozen task experts",
        description="KA2ER: every crop goes to the student and to every frozen expert; the "
        "amalgamation layer merges their features (attention within the student, across experts at "
        "each location, across scales); losses: segmentation on the amalgamated and on the student's "
        "own features, and feature distillation. Writes the student alone as a bundle to OUT. "
        "Resumes from OUT/checkpoint; runs under torchrun for several processes (DDP).")
    add_promptable_training_arguments(amalgamate)
    amalgamate.add_argument("--expert", required=True, action="append", type=Path,
                            help="expert bundle from ka2er train-expert (repeat, one per task)")
    amalgamate.add_argument("--hidden", type=positive_int, default=64,
                            help="width of the amalgamation space (default 64)")
    amalgamate.add_argument("--heads", type=positive_int, default=4, help="attention heads (default 4)")
    amalgamate.add_argument("--distill-weight", type=float, default=1.0,
                            help="weight of the feature-distillation loss (default 1)")
    amalgamate.add_argument("--soft-label-weight", type=non_negative_float, default=0.0,
                            help="partially labelled data: also train on the targets a case leaves "
                                 "unannotated, with its task expert's soft labels, at this loss "
                                 "weight (default 0: not drawn)")
    amalgamate.set_defaults(run=run_amalgamate)

    finetune = commands.add_parser(
        "finetune", help="fine-tune a promptable bundle on one task (a member for train-gate)",
        description="Supervised fine-tuning of BUNDLE's promptable model on one dataset folder (one "
        "task), with the same simulated boxes and clicks as ka2er train and the bundle's spacings. "
        "Writes a promptable bundle to OUT, a frozen task member for ka2er train-gate. Resumes from "
        "OUT/checkpoint; runs under torchrun for several processes (DDP).")
    finetune.add_argument("--bundle", required=True, type=Path, help="general promptable bundle")
    finetune.add_argument("--dataset", required=True, type=Path, help="dataset folder of one task")
    add_output_argument(finetune, required=True, help="bundle folder to write")
    finetune.add_argument("--steps", type=positive_int, default=500,
                          help="optimizer steps (default 500)")
    finetune.add_argument("--batch-size", type=positive_int, default=2,
                          help="crops per step and process")
    finetune.add_argument("--lr", type=float, default=2e-4, help="peak learning rate")
    finetune.add_argument("--seed", type=int, default=0)
    add_target_weight_argument(finetune)
    finetune.set_defaults(run=run_finetune)

    gate = commands.add_parser(
        "train-gate", help="train the gate of a SAM-Med3D-MoE bundle over frozen members",
        description="SAM-Med3D-MoE: every member (the general model and task members from ka2er "
        "finetune) stays frozen; a small gate learns, from each member's Dice on simulated prompts "
        "(soft targets, cross-entropy), which member should answer. The last training case of each "
        "task is held out to choose the selection threshold (top-1 member above it, else the "
        "general model). Writes a moe bundle to OUT. Resumes from OUT/checkpoint; runs under "
        "torchrun for several processes (DDP).")
    gate.add_argument("--general", required=True, type=Path, help="the general promptable bundle")
    gate.add_argument("--member", required=True, action="append", type=Path,
                      help="task member bundle, named after its folder (repeat)")
    gate.add_argument("--dataset", required=True, action="append", type=Path,
                      help="dataset folder, at least 2 training cases (repeat; include the general "
                           "model's tasks so that the gate learns when to keep it)")
    add_output_argument(gate, required=True, help="moe bundle folder to write")
    gate.add_argument("--steps", type=positive_int, default=300, help="optimizer steps (default 300)")
    gate.add_argument("--batch-size", type=positive_int, default=2, help="crops per step and process")
    gate.add_argument("--reuse", type=positive_int, default=4,
                      help="steps per fresh batch: members score a new batch every REUSE steps, the "
                           "steps between replay scored crops (default 4)")
    gate.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    gate.add_argument("--temperature", type=float, default=0.02,
                      help="soft targets are softmax(Dice / temperature) (default 0.02: a member "
                           "0.03 Dice better than the general model on a crop gets 0.82 of it)")
    gate.add_argument("--validation-crops", type=positive_int, default=32,
                      help="held-out crops the threshold is chosen on (default 32)")
    gate.add_argument("--prompts", choices=("first", "all"), default="first",
                      help="prompts of the scored crops: 'first' (a box or click starting a target, "
                           "where the session routes; default) or 'all' (also corrective clicks "
                           "and damaged masks to correct)")
    gate.add_argument("--half-members", action="store_true",
                      help="store the task members' weights in float16 (half the size; the general "
                           "model's stay as they are)")
    gate.add_argument("--seed", type=int, default=0)
    add_target_weight_argument(gate)
    gate.set_defaults(run=run_train_gate)

    expert = commands.add_parser(
        "train-expert", help="train a task expert (nnU-Net-style, no prompts) on one dataset folder",
        description="Plan a U-Net from the dataset's fingerprint (median spacing, patch, "
        "kernels and strides as nnU-Net), train it with Dice + CE and deep supervision on "
        "patches (a third forced onto foreground) and write an expert bundle to OUT. Resumes from "
        "OUT/checkpoint; runs under torchrun for several processes (DDP).")
    expert.add_argument("--dataset", required=True, type=Path,
                        help="dataset folder of one task (nnU-Net v2 or MSD, one channel)")
    add_output_argument(expert, required=True, help="bundle folder to write")
    expert.add_argument("--steps", type=positive_int, default=1000,
                        help="optimizer steps (default 1000)")
    expert.add_argument("--batch-size", type=positive_int, default=2,
                        help="patches per step and process")
    expert.add_argument("--size", choices=("tiny", "full"), default="tiny",
                        help="tiny (CPU: patch <= 48^3, 8-64 feature maps) or full (GPU: 128^3, "
                             "32-320 as nnU-Net)")
    expert.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    expert.add_argument("--seed", type=int, default=0)
    expert.set_defaults(run=run_train_expert)

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
        "error; Dice after each prompt, NoC85/NoC90 and latency per task and target.")
    evaluate.add_argument("--bundle", type=Path, action="append", default=None,
                          help="bundle folder (default: demo); repeat to compare several (expert "
                               "bundles segment their own task automatically), which also writes "
                               "comparison.md/.json/.png")
    evaluate.add_argument("--dataset", required=True, action="append", type=Path,
                          help="dataset folder (repeat for several tasks)")
    evaluate.add_argument("--prompts", "--clicks", type=positive_int, default=5,
                          help="prompts per target (default 5)")
    evaluate.add_argument("--first", choices=("auto", "box", "click"), default="auto",
                          help="first prompt: a box, a click, or auto (default): a box when it "
                               "identifies the target, a click for nested targets that share the "
                               "box of a larger one (white matter inside the brain)")
    evaluate.add_argument("--split", choices=("test", "train"), default="test",
                          help="imagesTs/labelsTs (default) or imagesTr/labelsTr")
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
                      help="promptable bundle folder (default: the shipped demo bundle)")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda")
    demo.set_defaults(run=run_demo)

    add_serve_command(commands)
    add_bundle_command(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_outputs(args)
        return args.run(args)
    except Ka2erError as err:
        print(f"ka2er: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ka2er: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
