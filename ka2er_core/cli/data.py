"""``ka2er info`` and ``ka2er data``: what files hold, and sample datasets to train and evaluate on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import Ka2erError
from .common import add_output_argument, named_number, positive_int, progress_printer


def run_info(args: argparse.Namespace) -> int:
    from ..info import describe_file

    failures = 0
    for path in args.files:
        try:
            print(describe_file(path))
        except Ka2erError as err:
            print(f"ka2er: error: {err}", file=sys.stderr)
            failures += 1
    return 2 if failures else 0


def run_data(args: argparse.Namespace) -> int:
    from ..data.sample import write_sample_dataset

    if args.realcheck is not None:
        from ..data.realcheck import write_realcheck_dataset

        print(write_realcheck_dataset(args.realcheck, args.out))
        return 0
    if args.heldout is not None:
        from ..data.heldout import write_heldout_dataset

        print(write_heldout_dataset(args.out, args.heldout))
        return 0
    if args.scenes is not None:
        from ..data.scenes import write_scene_dataset

        print(write_scene_dataset(args.out, args.scenes, args.test, progress_printer("data")))
        return 0
    folders = write_sample_dataset(args.out, n_train=args.train, n_test=args.test,
                                   progress=progress_printer("data"))
    if args.unannotated:
        from ..data.partial import drop_annotations

        for folder in folders:
            changed = drop_annotations(folder, dict(args.unannotated), seed=args.seed)
            if changed:
                print(f"ka2er data: {folder.name}: {len(changed)} training cases partially labelled",
                      file=sys.stderr)
    for folder in folders:
        print(folder)
    return 0


def label_fraction(text: str) -> tuple[str, float]:
    """``LABEL=FRACTION`` (``--unannotated "white matter=0.5"``) -> (name, fraction)."""
    return named_number(text, "LABEL=FRACTION", upper=1.0)


def add_data_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``info`` and ``data`` to the ``ka2er`` commands."""
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
    checks.add_argument("--scenes", type=positive_int, metavar="N",
                        help="instead of the sample tasks: N training (and --test test) cases of "
                             "the generalist's data engine, its non-overlapping targets as labels "
                             "(for train-gate when a generalist joins a moe)")
    data.set_defaults(run=run_data)
