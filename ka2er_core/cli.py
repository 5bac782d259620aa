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
