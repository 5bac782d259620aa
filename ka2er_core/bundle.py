"""Model bundles: a folder with ``bundle.json`` and weights as ``.safetensors``.

``bundle.json`` records the format version, the kind (student | moe | expert), the architecture
config, labels, base and maximum crop spacing, normalisation, training summary, measured metrics and
a sha256 of every weight file, checked at load. No pickle is ever read.
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
from .modeling import ModelConfig, PromptableSegmenter

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
class Bundle:
    path: Optional[Path]
    kind: str
    members: dict[str, Segmenter]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def default(self) -> Segmenter:
        return next(iter(self.members.values()))


def save_bundle(path: Union[str, os.PathLike], segmenter: Segmenter, *, kind: str = "student",
                labels: Optional[list[str]] = None, training: Optional[dict] = None,
                metrics: Optional[dict] = None) -> Path:
    """Write a single-model bundle (weights first, then ``bundle.json``, each atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = f"{segmenter.name}.safetensors"
    with atomic_write(path / weights) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in segmenter.model.state_dict().items()}
        save_file(state, str(tmp))
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "members": {segmenter.name: {
            "weights": weights,
            "architecture": segmenter.model.config.to_dict(),
            "normalization": segmenter.normalization.to_dict(),
            "base_spacing": segmenter.base_spacing,
            "max_spacing": segmenter.max_spacing,
        }},
        "labels": labels or [],
        "training": training or {},
        "metrics": metrics or {},
        "sha256": {weights: sha256(path / weights)},
    }
    with atomic_write(path / "bundle.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return path


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
        config = ModelConfig.from_dict(member["architecture"])
        model = PromptableSegmenter(config)
        model.load_state_dict(load_file(str(weights)))
        members[name] = Segmenter(name, model.to(device).eval(),
                                  Normalization(**member["normalization"]),
                                  float(member["base_spacing"]), float(member["max_spacing"]))
    if not members:
        raise BundleError("no members", path=manifest, field="members")
    return Bundle(path, meta.get("kind", "student"), members, meta)
