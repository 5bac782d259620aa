"""Bundles on disk: save (weights first, then ``bundle.json``, each atomically) and load (every
field checked by :mod:`.schema`, every weight file's sha256 and safetensors header checked before it
is read; a moe bundle's members read on first use), and where the shipped bundles are."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UnreadableFileError
from ..io.atomic import atomic_write
from ..io.checksum import sha256
from ..io.weights import read_header
from ..modeling import TaskExpert
from ..modeling.gate import Gate
from ..modeling.normalization import Normalization
from .members import Bundle, Expert, LazyMembers, Member, Segmenter
from .registry import BUILD_ERRORS, build_module, first_line, member_architecture
from .schema import FORMAT_VERSION, GATE_WEIGHTS, BundleError, check_manifest

SHIPPED = Path(__file__).parents[1] / "bundles"
"""The shipped bundles' folder, ``ka2er_core/bundles`` (package data)."""
STUDENT_BUNDLE = SHIPPED / "demo"
"""The shipped KA2ER student alone (see its README.md model card): the moe bundle's general model."""
MOE_BUNDLE = SHIPPED / "moe"
"""The shipped moe bundle: the KA2ER student, task members and a gate."""
DEFAULT_BUNDLE = MOE_BUNDLE
"""What :func:`load_bundle` loads without a path (``ka2er demo``, the session, the server)."""
MAX_MANIFEST_BYTES = 16 << 20
"""A ``bundle.json`` larger than this is refused unread (the shipped ones hold a few kB)."""


def member_entry(member: Member, weights: str) -> dict[str, Any]:
    """The ``bundle.json`` entry of a member: promptable models keep the original layout; experts
    have ``"architecture": {"type": "expert", "plan": ...}`` (and their model's ``variant``, if any)."""
    if isinstance(member, Expert):
        return {"weights": weights, "architecture": member_architecture(member)}
    return {"weights": weights,
            "architecture": member_architecture(member),
            "normalization": member.normalization.to_dict(),
            "base_spacing": member.base_spacing,
            "max_spacing": member.max_spacing}


def write_weights(path: Path, name: str, module: torch.nn.Module,
                  dtype: Optional[torch.dtype] = None) -> str:
    """Write ``module``'s state dict to ``path/name.safetensors`` atomically (floating-point tensors
    as ``dtype`` if given; loading casts them back to the model's); returns the file name."""
    weights = f"{name}.safetensors"
    with atomic_write(path / weights) as tmp:
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
                 .detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(tmp))
    return weights


def write_manifest(path: Path, meta: dict[str, Any]) -> Path:
    """Write ``bundle.json`` (last, atomically) with the sha256 of every weight file it names."""
    files = [entry["weights"] for entry in meta["members"].values()]
    files += [meta["gate"]["weights"]] if "gate" in meta else []
    meta = {"format_version": FORMAT_VERSION, **meta,
            "sha256": {name: sha256(path / name) for name in files}}
    with atomic_write(path / "bundle.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def save_bundle(path: Union[str, os.PathLike], member: Member, *, kind: str = "student",
                labels: Optional[list[str]] = None, training: Optional[dict] = None,
                metrics: Optional[dict] = None) -> Path:
    """Write a single-model bundle (weights first, then ``bundle.json``, each atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = write_weights(path, member.name, member.model)
    return write_manifest(path, {"kind": kind, "members": {member.name: member_entry(member, weights)},
                                 "labels": labels or [], "training": training or {},
                                 "metrics": metrics or {}})


def save_moe_bundle(path: Union[str, os.PathLike], members: Sequence[Segmenter], gate: Gate, *,
                    labels: Optional[list[str]] = None, training: Optional[dict] = None,
                    metrics: Optional[dict] = None,
                    member_dtype: Optional[torch.dtype] = None) -> Path:
    """Write a ``moe`` bundle: every member (the general model first, in ``gate.members`` order) as
    its own weight file, the gate's weights and config (threshold included), then ``bundle.json``.
    ``member_dtype`` (e.g. ``torch.float16``: half the size) stores the task members' weights, not
    the general model's, in that type."""
    if [m.name for m in members] != gate.members or GATE_WEIGHTS in gate.members:
        raise ValueError(f"members {[m.name for m in members]} must be the gate's {gate.members}, "
                         f"none named {GATE_WEIGHTS!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    entries = {m.name: member_entry(m, write_weights(path, m.name, m.model,
                                                     None if m is members[0] else member_dtype))
               for m in members}
    gate_entry = {"weights": write_weights(path, GATE_WEIGHTS, gate), **gate.config()}
    return write_manifest(path, {"kind": "moe", "members": entries, "gate": gate_entry,
                                 "labels": labels or [], "training": training or {},
                                 "metrics": metrics or {}})


def manifest_of(path: Path) -> Path:
    """``bundle.json`` of the bundle folder ``path``; a :class:`BundleError` names ``path`` when it is a
    file (a weight file or ``bundle.json`` itself, say) rather than a folder."""
    if path.exists() and not path.is_dir():
        raise BundleError("expected a bundle folder with bundle.json, got a file", path=path)
    return path / "bundle.json"


def read_manifest(path: Path) -> dict[str, Any]:
    """``bundle.json`` of the bundle folder ``path``, every field checked
    (:func:`~ka2er_core.bundle.schema.check_manifest`)."""
    if not path.exists():
        raise UnreadableFileError("no such bundle folder", path=path)
    manifest = manifest_of(path)
    try:
        if manifest.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"larger than {MAX_MANIFEST_BYTES >> 20} MiB: not a bundle.json",
                              path=manifest)
        meta = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise UnreadableFileError("not a bundle: no bundle.json", path=path) from None
    except OSError as err:
        raise UnreadableFileError(f"unreadable ({err.strerror or err})", path=manifest) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"invalid JSON ({err})", path=manifest) from None
    except RecursionError:
        raise BundleError("invalid JSON (nested too deep)", path=manifest) from None
    return check_manifest(meta, manifest)


def checked_weights(path: Path, meta: dict[str, Any], name: str) -> Path:
    """The weight file ``name`` of the bundle at ``path``, once its sha256 matches ``bundle.json``."""
    weights = path / name
    expected = meta.get("sha256", {}).get(name)
    if not weights.is_file():
        raise BundleError("weight file missing" if not weights.exists() else
                          "expected a weight file, found a folder", path=weights)
    if expected is None or sha256(weights) != expected:
        raise BundleError("sha256 does not match bundle.json: the file was changed or damaged",
                          path=weights, field="sha256")
    return weights


def load_weights(module: torch.nn.Module, weights: Path) -> None:
    """Load the safetensors file ``weights`` into ``module``, its header checked first
    (:func:`~ka2er_core.io.weights.read_header`): a :class:`BundleError` names the file and the
    first tensor the architecture needs that it lacks or holds in another shape, or one it has
    that the architecture does not."""
    tensors = read_header(weights)
    expected = module.state_dict()
    for name, value in expected.items():
        if name not in tensors:
            raise BundleError(f"no tensor {name!r}, which bundle.json's architecture needs",
                              path=weights, field="header")
        if tensors[name].shape != tuple(value.shape):
            raise BundleError(f"shape {list(tensors[name].shape)} in the file, "
                              f"{list(value.shape)} in bundle.json's architecture", path=weights,
                              field=f"header.{name}.shape")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise BundleError(f"{len(unexpected)} tensors that bundle.json's architecture does not have, "
                          f"e.g. {unexpected[0]!r}", path=weights, field="header")
    try:
        state = load_file(str(weights))
    except SafetensorError as err:
        raise UnreadableFileError(f"not a readable safetensors file ({first_line(err)})",
                                  path=weights) from None
    module.load_state_dict(state)


def load_member(path: Path, meta: dict[str, Any], name: str, device: Union[str, torch.device]
                ) -> Member:
    """Member ``name`` of the bundle at ``path`` (its weights' sha256 checked), in eval mode."""
    member = meta["members"][name]
    weights = checked_weights(path, meta, member["weights"])
    model = build_module(member["architecture"], path=path / "bundle.json",
                         field=f"members.{name}.architecture")
    load_weights(model, weights)
    model = model.to(device).eval()
    if isinstance(model, TaskExpert):
        return Expert(name, model)
    return Segmenter(name, model, Normalization(**member["normalization"]),
                     float(member["base_spacing"]), float(member["max_spacing"]))


def load_gate(path: Path, meta: dict[str, Any], device: Union[str, torch.device]) -> Gate:
    """The gate of a moe bundle (its entry checked by :func:`read_manifest`: the bundle's members,
    in order, general first)."""
    entry = dict(meta["gate"])
    weights = checked_weights(path, meta, entry.pop("weights"))
    try:
        gate = Gate(**entry)
    except BUILD_ERRORS as error:
        raise BundleError(first_line(error), path=path / "bundle.json", field="gate") from None
    load_weights(gate, weights)
    return gate.to(device).eval()


def load_bundle(path: Union[str, os.PathLike, None] = None, device: Union[str, torch.device] = "cpu"
                ) -> Bundle:
    """Load a bundle folder (default: :data:`DEFAULT_BUNDLE`), verifying every weight's sha256.

    A moe bundle's members are loaded on first use (``bundle.members`` is :class:`LazyMembers`).
    """
    path = Path(path) if path is not None else DEFAULT_BUNDLE
    meta = read_manifest(path)
    names = list(meta["members"])
    kind = meta.get("kind", "student")
    if kind != "moe":
        members = {name: load_member(path, meta, name, device) for name in names}
        return Bundle(path, kind, members, meta)
    for name in names:  # a damaged file is refused now, not at the click that first needs it
        checked_weights(path, meta, meta["members"][name]["weights"])
    gate = load_gate(path, meta, device) if "gate" in meta else None
    members = LazyMembers({name: partial(load_member, path, meta, name, device) for name in names})
    return Bundle(path, kind, members, meta, gate)


def load_expert(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> TaskExpert:
    """The task expert of an expert bundle (kind "expert"), in eval mode; any other bundle is refused
    with a :class:`BundleError`."""
    bundle = load_bundle(path, device)
    if not isinstance(bundle.default, Expert):
        raise BundleError(f"is a {bundle.kind!r} bundle: a promptable model, which needs prompts, "
                          "not a task expert (ka2er train-expert writes those)", path=bundle.path,
                          field="kind")
    return bundle.default.model
