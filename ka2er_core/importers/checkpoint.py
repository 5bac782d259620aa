"""Reading third-party checkpoints safely, and checking what they hold.

:func:`read_checkpoint` is ``torch.load(weights_only=True)``: tensors, plain containers and numbers
only, plus the few inert classes training scripts put next to the weights (:data:`INERT_GLOBALS`); a
file that needs any other Python object is refused, never executed. :func:`check_state` compares a
state dict with the shapes an architecture expects.
"""

from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import UnreadableFileError

_scalar = np.dtype("f8").type(0).__reduce__()[0]  # numpy's scalar constructor, numpy 1 and 2
INERT_GLOBALS = [
    argparse.Namespace,  # SAM-Med3D saves its training arguments
    np.dtype, (_scalar, "numpy.core.multiarray.scalar"), (_scalar, "numpy._core.multiarray.scalar"),
    *(type(np.dtype(code)) for code in "?bhilqBHILQefdFD"),  # numbers logged by nnU-Net
]
"""Globals a weights-only load may build besides tensors: none of them runs code from the file."""
SHOWN = 4
"""How many names each kind of mismatch lists."""


class CheckpointError(UnreadableFileError):
    """A third-party checkpoint or model folder cannot be imported: refused by the weights-only
    loader, or not the architecture or format expected."""


def read_checkpoint(path: Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` (with :data:`INERT_GLOBALS`),
    every failure a :class:`CheckpointError` naming the file."""
    if not path.is_file():
        raise CheckpointError("no such file", path=path)
    try:
        with torch.serialization.safe_globals(INERT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL (\S+)", str(err))
        if refused is None and "allowlisted" not in str(err):  # not a pickle we can read at all
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
            reason = f" ({detail.group(1).strip()})" if detail else ""
            raise CheckpointError(f"not a readable PyTorch checkpoint{reason}", path=path) from None
        what = f"`{refused.group(1)}`" if refused else "a Python object"
        raise CheckpointError(f"refused: unpickling it needs {what}; torch.load(weights_only=True) "
                              "reads tensors, containers and numbers only and runs no code from the file",
                              path=path) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"not a readable PyTorch checkpoint ({err})", path=path) from None


def check_state(found: Mapping[str, Any], expected: Mapping[str, tuple], path: Path, what: str,
                optional: Optional[Mapping[str, tuple]] = None) -> None:
    """Raise one :class:`CheckpointError` listing the first few missing, unexpected and mis-shaped
    keys of ``found`` (a state dict) against ``expected`` ({name: shape}); keys in ``optional`` may
    be present, with their shape."""
    optional = optional or {}
    missing = [f"{k} {expected[k]}" for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected and k not in optional]
    wrong = [f"{k}: expected {shape}, found {describe_loaded(found[k])}"
             for k, shape in {**optional, **expected}.items()
             if k in found and (not torch.is_tensor(found[k]) or tuple(found[k].shape) != shape)]
    problems = [f"{len(items)} {kind} ({'; '.join(items[:SHOWN])}{'; ...' if len(items) > SHOWN else ''})"
                for kind, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("wrong shapes", wrong)) if items]
    if problems:
        raise CheckpointError(f"does not match {what}: " + ", ".join(problems), path=path)


def describe_loaded(value: Any) -> str:
    """A short description of a loaded value for error messages."""
    if torch.is_tensor(value):
        return f"{tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a dict with keys {sorted(map(str, value))[:SHOWN + 2]}"
    return f"a {type(value).__name__}"

