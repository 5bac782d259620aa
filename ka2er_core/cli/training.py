"""``ka2er train``, ``amalgamate``, ``finetune``, ``train-gate`` and ``train-expert``: the trainers,
each resuming from OUT/checkpoint and writing a bundle to OUT, under torchrun for several processes."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .common import add_output_argument, named_number, positive_int, progress_printer


def run_train(args: argparse.Namespace) -> int:
    from ..modeling import ModelConfig
    from ..training.promptable import train_promptable

    config = ModelConfig.tiny() if args.size == "tiny" else ModelConfig.full()
    out = train_promptable(args.dataset, args.out, steps=args.steps, batch_size=args.batch_size,
                           config=config, init=args.init, base_spacing=args.base_spacing,
                           max_spacing=args.max_spacing, lr=args.lr, seed=args.seed,
                           target_weights=dict(args.target_weight),
                           progress=progress_printer("train"))
    print(out)
    return 0


def run_amalgamate(args: argparse.Namespace) -> int:
    from ..modeling import ModelConfig
    from ..training.amalgamate import amalgamate

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
    from ..training.promptable import train_promptable

    out = train_promptable([args.dataset], args.out, steps=args.steps, batch_size=args.batch_size,
                           init=args.bundle, lr=args.lr, seed=args.seed,
                           target_weights=dict(args.target_weight),
                           progress=progress_printer("finetune"))
    print(out)
    return 0


def run_train_gate(args: argparse.Namespace) -> int:
    from ..training.gate import train_gate

    out = train_gate(args.general, args.member, args.dataset, args.out, steps=args.steps,
                     batch_size=args.batch_size, reuse=args.reuse, lr=args.lr,
                     temperature=args.temperature, validation_crops=args.validation_crops,
                     seed=args.seed, target_weights=dict(args.target_weight),
                     prompts=args.prompts, half_members=args.half_members,
                     progress=progress_printer("train-gate"))
    print(out)
    return 0


def run_train_expert(args: argparse.Namespace) -> int:
    from ..training.expert import train_expert

    out = train_expert(args.dataset, args.out, steps=args.steps, batch_size=args.batch_size,
                       size=args.size, lr=args.lr, seed=args.seed,
                       progress=progress_printer("train-expert"))
    print(out)
    return 0


def target_weight(text: str) -> tuple[str, float]:
    """``TARGET=WEIGHT`` (``--target-weight "white matter=3"``) -> (name, weight)."""
    return named_number(text, "TARGET=WEIGHT")


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


def add_training_commands(commands: argparse._SubParsersAction) -> None:
    """Add the trainers to the ``ka2er`` commands."""
    train = commands.add_parser(
        "train", help="train the general promptable model on dataset folders",
        description="Train the promptable model with simulated clicks and boxes on nnU-Net v2 / MSD "
        "dataset folders (one task per folder); a points-only model (--init an imported SAM-Med3D) "
        "gets clicks only, and a target only a box names is left out. Resumes from OUT/checkpoint; writes a bundle to OUT. "
        "Runs under torchrun for several processes (DDP).")
    add_promptable_training_arguments(train)
    train.set_defaults(run=run_train)

    amalgamate = commands.add_parser(
        "amalgamate", help="train a KA2ER student from frozen task experts",
        description="KA2ER: every crop goes to the student and to every frozen expert; the "
        "amalgamation layer merges their features (attention within the student, across experts at "
        "each location, across scales); losses: segmentation on the amalgamated and on the student's "
        "own features, and feature distillation. The student may be an imported SAM-Med3D (--init): "
        "every expert stage is resampled onto its one token grid. Writes the student alone as a "
        "bundle to OUT. "
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
        "task), with the same simulated boxes and clicks as ka2er train (clicks only for a "
        "points-only model, such as an imported SAM-Med3D) and the bundle's spacings. "
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
    gate.add_argument("--general", required=True, type=Path,
                      help="the general promptable bundle (ours, or an imported SAM-Med3D)")
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
