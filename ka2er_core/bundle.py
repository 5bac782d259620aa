"""Model bundles: a folder with ``bundle.json`` and weights as ``.safetensors``.

``bundle.json`` records the format version, the kind (student | moe | expert), the architecture
config, labels, base and maximum crop spacing, normalisation, training summary, measured metrics and
a sha256 of every weight file, checked at load. No pickle is ever read. A member is a promptable
:class:`Segmenter` or a task :class:`Expert` (``"architecture": {"type": "expert", "plan": ...}``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from .errors import Ka2erError, UnreadableFileError
from .modeling.normalization import Normalization
from .io.atomic import atomic_write
from .modeling import ExpertPlan, ModelConfig, PlanError, PromptableSegmenter, TaskExpert

FORMAT_VERSION = 1
DEFAULT_BUNDLE = Path(__file__).parent / "bundles" / "demo"


class BundleError(Ka2erError):
    """A bundle folder is incomplete, inconsistent, or its weights do not match their checksum."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Segmenter:
    """One promptable model with what a session needs to use it."""

    name: str
    model: PromptableSegmenter
    normalization: Normalization
    base_spacing: float
    max_spacing: float

    @property
    def crop_size(self) -> int:
        return self.model.config.crop_size


@dataclass
class Expert:
    """One task expert: segments its task without prompts. Spacing, patch, labels and normalisation
    are in ``plan`` (the model's :class:`~ka2er_core.modeling.ExpertPlan`)."""

    name: str
    model: TaskExpert

    @property
    def plan(self) -> ExpertPlan:
        return self.model.plan


Member = Union[Segmenter, Expert]


@dataclass
class Bundle:
    path: Optional[Path]
    kind: str
    members: dict[str, Member]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def default(self) -> Member:
        return next(iter(self.members.values()))


def member_entry(member: Member, weights: str) -> dict[str, Any]:
    """The ``bundle.json`` entry of a member: promptable models keep the original layout; experts
    have ``"architecture": {"type": "expert", "plan": ...}``."""
    if isinstance(member, Expert):
        return {"weights": weights, "architecture": {"type": "expert", "plan": member.plan.to_dict()}}
    return {"weights": weights,
            "architecture": member.model.config.to_dict(),
            "normalization": member.normalization.to_dict(),
            "base_spacing": member.base_spacing,
            "max_spacing": member.max_spacing}


def save_bundle(path: Union[str, os.PathLike], member: Member, *, kind: str = "student",
                labels: Optional[list[str]] = None, training: Optional[dict] = None,
                metrics: Optional[dict] = None) -> Path:
    """Write a single-model bundle (weights first, then ``bundle.json``, each atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = f"{member.name}.safetensors"
    with atomic_write(path / weights) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in member.model.state_dict().items()}
        save_file(state, str(tmp))
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "members": {member.name: member_entry(member, weights)},
        "labels": labels or [],
        "training": training or {},
        "metrics": metrics or {},
        "sha256": {weights: sha256(path / weights)},
    }
    with atomic_write(path / "bundle.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def expert_member(name: str, plan: Any, weights: Path, manifest: Path,
                  device: Union[str, torch.device]) -> Expert:
    """An expert member from its plan (as in ``bundle.json``) and its checked weight file."""
    try:
        plan = ExpertPlan.from_dict(plan)
    except PlanError as err:
        where = f"members.{name}.architecture.plan" + (f".{err.field}" if err.field else "")
        raise BundleError(err.problem, path=manifest, field=where) from None
    model = TaskExpert(plan)
    model.load_state_dict(load_file(str(weights)))
    return Expert(name, model.to(device).eval())


def load_bundle(path: Union[str, os.PathLike, None] = None, device: Union[str, torch.device] = "cpu"
                ) -> Bundle:
    """Load a bundle folder (default: the shipped demo bundle), verifying every weight's sha256."""
    path = Path(path) if path is not None else DEFAULT_BUNDLE
    manifest = path / "bundle.json"
    try:
        meta = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise UnreadableFileError("not a bundle: no bundle.json", path=path) from None
    except json.JSONDecodeError as err:
        raise BundleError(f"invalid JSON ({err})", path=manifest) from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}",
                          path=manifest, field="format_version")
    members = {}
    for name, member in meta.get("members", {}).items():
        weights = path / member["weights"]
        expected = meta.get("sha256", {}).get(member["weights"])
        if not weights.exists():
            raise BundleError("weight file missing", path=weights)
        if expected is None or sha256(weights) != expected:
            raise BundleError("sha256 does not match bundle.json: the file was changed or damaged",
                              path=weights, field="sha256")
        architecture = member["architecture"]
        if architecture.get("type") == "expert":
            members[name] = expert_member(name, architecture.get("plan"), weights, manifest, device)
            continue
        config = ModelConfig.from_dict(architecture)
        model = PromptableSegmenter(config)
        model.load_state_dict(load_file(str(weights)))
        members[name] = Segmenter(name, model.to(device).eval(),
                                  Normalization(**member["normalization"]),
                                  float(member["base_spacing"]), float(member["max_spacing"]))
    if not members:
        raise BundleError("no members", path=manifest, field="members")
    return Bundle(path, meta.get("kind", "student"), members, meta)


def load_expert(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> TaskExpert:
    """The task expert of an expert bundle (kind "expert"), in eval mode; any other bundle is refused
    with a :class:`BundleError`."""
    bundle = load_bundle(path, device)
    if not isinstance(bundle.default, Expert):
        raise BundleError(f"is a {bundle.kind!r} bundle: a promptable model, which needs prompts, "
                          "not a task expert (ka2er train-expert writes those)", path=bundle.path,
                          field="kind")
    return bundle.default.model
