"""What every ``ka2er`` command shares: progress lines, argument types, and the output options that
:func:`ka2er_core.cli.main` checks before any work."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable

from ..io.atomic import check_output


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
    :func:`ka2er_core.cli.main` refuses it in one line, before the command does any work, if it
    cannot be written (:func:`~ka2er_core.io.atomic.check_output`)."""
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
