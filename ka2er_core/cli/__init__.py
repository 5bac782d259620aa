"""The ``ka2er`` command: one module per command group, the shared helpers in :mod:`.common`.
User errors print one line and exit 2; bugs keep their traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .. import __version__
from ..errors import Ka2erError
from .bundle import add_bundle_command
from .common import check_outputs
from .data import add_data_commands
from .segmenting import add_segmenting_commands
from .serve import add_serve_command
from .training import add_training_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ka2er", description="KA2ER Segment: interactive prompt-based 3D segmentation.")
    parser.add_argument("--version", action="version", version=f"ka2er {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_commands(commands)
    add_training_commands(commands)
    add_segmenting_commands(commands)
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
