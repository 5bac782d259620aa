"""The ``ka2er`` command. User errors print one line and exit 2; bugs keep their traceback."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import __version__
from .errors import Ka2erError


def progress_printer(prefix: str) -> Callable[[str], None]:
    """A progress callback printing ``prefix [elapsed] message`` lines to stderr."""
    start = time.perf_counter()

    def report(message: str) -> None:
        print(f"{prefix} [{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr,
              flush=True)

    return report


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

    folders = write_sample_dataset(args.out, n_train=args.train, n_test=args.test,
                                   progress=progress_printer("data"))
    for folder in folders:
        print(folder)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .modeling import ModelConfig
    from .training.promptable import train_promptable

    config = ModelConfig.tiny() if args.size == "tiny" else ModelConfig.full()
    out = train_promptable(args.dataset, args.out, steps=args.steps, batch_size=args.batch_size,
                           config=config, base_spacing=args.base_spacing,
                           max_spacing=args.max_spacing, lr=args.lr, seed=args.seed,
                           progress=progress_printer("train"))
    print(out)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.report import evaluate_bundle, format_table, write_report

    report = evaluate_bundle(args.bundle, args.dataset, args.prompts, first=args.first,
                             split=args.split, device=args.device, max_cases=args.max_cases,
                             progress=progress_printer("evaluate"), baseline=args.baseline)
    json_path, png_path = write_report(report, args.out)
    print(format_table(report))
    print(f"wrote {json_path} and {png_path}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo

    demo(Path(args.out), progress=progress_printer("demo"))
    return 0


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
    data.add_argument("--out", required=True, type=Path, help="folder to write into")
    data.add_argument("--train", type=positive_int, default=4, help="training cases per task (default 4)")
    data.add_argument("--test", type=positive_int, default=2, help="held-out cases per task (default 2)")
    data.set_defaults(run=run_data)

    train = commands.add_parser(
        "train", help="train the general promptable model on dataset folders",
        description="Train the promptable model with simulated clicks and boxes on nnU-Net v2 / MSD "
        "dataset folders (one task per folder). Resumes from OUT/checkpoint; writes a bundle to OUT. "
        "Runs under torchrun for several processes (DDP).")
    train.add_argument("--dataset", required=True, action="append", type=Path,
                       help="dataset folder (repeat for several tasks)")
    train.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    train.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps (default 2000)")
    train.add_argument("--batch-size", type=positive_int, default=2, help="crops per step and process")
    train.add_argument("--size", choices=("tiny", "full"), default="tiny",
                       help="model size: tiny (CPU) or full (GPU)")
    train.add_argument("--base-spacing", type=float, default=1.5, help="finest crop spacing, mm")
    train.add_argument("--max-spacing", type=float, default=4.0, help="coarsest crop spacing, mm")
    train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(run=run_train)

    evaluate = commands.add_parser(
        "evaluate", help="run the click protocol on held-out cases; JSON report and Dice plot",
        description="First prompt a box (or a click), then clicks at the centre of the largest "
        "error; Dice after each prompt, NoC85/NoC90 and latency per task and target.")
    evaluate.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: demo)")
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
                          help="run the classical random-walker baseline on the same prompts")
    evaluate.add_argument("--out", type=Path, default=Path("ka2er-evaluation"),
                          help="folder for report.json and dice.png")
    evaluate.set_defaults(run=run_evaluate)

    demo = commands.add_parser("demo", help="run the offline demo on the shipped data",
                               description="Run the offline demo on MNI152 data shipped with nilearn.")
    demo.add_argument("--out", type=Path, default=Path("ka2er-demo"),
                      help="folder for the demo's files (default ./ka2er-demo)")
    demo.set_defaults(run=run_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Ka2erError as err:
        print(f"ka2er: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ka2er: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
