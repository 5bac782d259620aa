"""``ka2er bundle``: inspect a bundle, export it as a MONAI Bundle, import third-party checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_output_argument, progress_printer


def run_inspect(args: argparse.Namespace) -> int:
    from ..bundle.inspect import check_weights, format_report, inspect_bundle

    report = inspect_bundle(args.path)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    check_weights(report)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..export import export_monai_bundle

    print(export_monai_bundle(args.path, args.monai, member=args.member, force=args.force))
    return 0


def run_import_sam_med3d(args: argparse.Namespace) -> int:
    from ..importers import import_sam_med3d

    print(import_sam_med3d(args.checkpoint, args.out, progress=progress_printer("import-sam-med3d")))
    return 0


def run_import_nnunet(args: argparse.Namespace) -> int:
    from ..importers import import_nnunet

    print(import_nnunet(args.folder, args.out, fold=args.fold, checkpoint=args.checkpoint,
                        progress=progress_printer("import-nnunet")))
    return 0


def add_bundle_command(commands: argparse._SubParsersAction) -> None:
    """Add ``bundle`` (inspect, export, import-sam-med3d, import-nnunet) to the ``ka2er`` commands."""
    bundle = commands.add_parser(
        "bundle", help="inspect or export a model bundle; import third-party checkpoints",
        description="Work with model bundles (folders with bundle.json and .safetensors weights).")
    actions = bundle.add_subparsers(dest="action", required=True, metavar="ACTION")

    inspect = actions.add_parser(
        "inspect", help="what a bundle holds, its weights' checksums verified",
        description="Print a bundle's kind, labels and, per member, architecture, spacings, crop "
        "size or expert plan, normalisation, parameter count and weight file (size, sha256 checked "
        "against bundle.json); a moe bundle's gate; the training summary and measured metrics. "
        "Builds no model. Exits non-zero, naming the file, if a weight file was changed.")
    inspect.add_argument("path", type=Path, metavar="PATH", help="bundle folder")
    inspect.add_argument("--json", action="store_true", help="print the same as JSON")
    inspect.set_defaults(run=run_inspect)

    export = actions.add_parser(
        "export", help="write a promptable model or task expert as a MONAI Bundle",
        description="Write a MONAI Bundle folder (configs/metadata.json, configs/inference.json, "
        "models/model.pt and model.safetensors, docs/README.md) for one model of the bundle at "
        "PATH. Its network_def instantiates the model through ka2er_core, which must be installed. "
        "The folder is written whole or not at all.")
    export.add_argument("path", type=Path, metavar="PATH", help="ka2er bundle folder")
    add_output_argument(export, "--monai", required=True, metavar="OUT",
                        help="MONAI Bundle folder to write")
    export.add_argument("--member", default=None,
                        help="member to export (default: the first, a moe bundle's general model)")
    export.add_argument("--force", action="store_true", help="replace an existing OUT folder")
    export.set_defaults(run=run_export)

    sam = actions.add_parser(
        "import-sam-med3d", help="convert a SAM-Med3D checkpoint into a promptable bundle",
        description="Convert a SAM-Med3D checkpoint (read with torch.load(weights_only=True)) into "
        "a ka2er promptable bundle at OUT.")
    sam.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="SAM-Med3D .pth file")
    add_output_argument(sam, required=True, help="bundle folder to write")
    sam.set_defaults(run=run_import_sam_med3d)

    nnunet = actions.add_parser(
        "import-nnunet", help="convert a trained nnU-Net v2 model folder into an expert bundle",
        description="Convert a trained nnU-Net v2 model folder (one fold's checkpoint, read with "
        "torch.load(weights_only=True)) into a ka2er expert bundle at OUT.")
    nnunet.add_argument("folder", type=Path, metavar="FOLDER", help="nnU-Net v2 trained model folder")
    add_output_argument(nnunet, required=True, help="bundle folder to write")
    nnunet.add_argument("--fold", default="all", help="fold to import (default: all)")
    nnunet.add_argument("--checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file in the fold folder (default: checkpoint_final.pth)")
    nnunet.set_defaults(run=run_import_nnunet)
