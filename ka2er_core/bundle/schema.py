"""What a ``bundle.json`` may hold: the one place where its fields are checked.

:func:`check_manifest` checks a parsed ``bundle.json`` (types, ranges, required fields, a moe
bundle's shared settings and gate) before anything reads it, and :func:`architecture_config` a
member's architecture before a model is built or described from it (after its weights' checksum),
so that every loader and ``ka2er bundle inspect`` refuse a malformed bundle with one
:class:`BundleError` naming the file and the field, e.g.
``bundle.json: members.general.base_spacing: expected a number > 0, found -1.5``.

The layout (``?``: optional; members and the gate as written by :mod:`ka2er_core.bundle.store`)::

    format_version  1
    kind?           "student" (default) | "expert" | "moe"
    members         {name: member}, at least one; a moe bundle's general model first
      weights         file name of a .safetensors file in the bundle folder
      architecture    our promptable model's config, {"type": "sam_med3d", ...} or
                      {"type": "expert", "plan": ..., "variant"?: "nnunet"} (see architecture_config)
      normalization   promptable members: {"kind": "ct" | "mr" | "auto", "low"?, "high"?, "clip"?}
      base_spacing, max_spacing   promptable members: mm, 0 < base <= max
    gate?           a moe bundle's gate: weights, members (the bundle's, in order), threshold in
                    [0, 1], dim, crop_size, stage_channels, hidden?, prompt_stages?, fine_channels?,
                    modalities? ({task member: ["ct" | "mr", ...]})
    labels?         [name, ...]
    training?, metrics?   objects, free-form
    sha256?         {weight file name: 64 hex digits}; a weight file without one is refused at load
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, NoReturn, Optional, Union

from ..errors import Ka2erError
from ..modeling import ExpertPlan, ModelConfig, PlanError
from ..modeling.normalization import Normalization
from ..modeling.sam_med3d import TYPE as SAM_MED3D, SamMed3DConfig

FORMAT_VERSION = 1
KINDS = ("student", "expert", "moe")
GATE_WEIGHTS = "gate"
"""File stem of a moe bundle's gate weights (no member may take this name)."""
EXPERT = "expert"
"""``"type"`` of a task expert's architecture entry (a promptable model of ours has none)."""
EXPERT_VARIANTS = (None, "nnunet")
"""``"variant"`` values of an expert's architecture entry: none (our TaskExpert) or an imported
nnU-Net."""
WEIGHTS_SUFFIX = ".safetensors"
MAX_CROP_SIZE = 512
"""Largest crop side, voxels, a bundle may ask for (SAM-Med3D: 128; ours: 64 or 128)."""
ZERO_ALLOWED = {"window_size", "band_channels"}
"""Architecture sizes that may be 0 (SAM-Med3D: no window, every block attends globally; the Swin
model: no band features)."""
BLOCK_INDICES = {"global_blocks": "encoder_depth"}
"""Architecture lists that index the encoder's blocks, with the field that counts them."""
GATE_REQUIRED = ("weights", "members", "threshold", "dim", "crop_size", "stage_channels")
GATE_OPTIONAL = ("hidden", "prompt_stages", "fine_channels", "modalities")
SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleError(Ka2erError):
    """A bundle folder is incomplete, inconsistent, or its weights do not match their checksum."""


Config = Union[ModelConfig, SamMed3DConfig, ExpertPlan]


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite JSON number (not a boolean; JSON's NaN and Infinity are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Fields:
    """Typed reads from one ``bundle.json`` (``manifest``; None for entries built in memory), each
    raising a :class:`BundleError` that names the manifest and the field."""

    def __init__(self, manifest: Optional[Path]):
        self.manifest = manifest

    def fail(self, field: Optional[str], problem: str) -> NoReturn:
        raise BundleError(problem, path=self.manifest, field=field)

    def required(self, entry: Mapping, key: str, field: Optional[str]) -> Any:
        where = key if field is None else f"{field}.{key}"
        if key not in entry:
            self.fail(where, "required field is missing")
        return entry[key]

    def object(self, value: Any, field: Optional[str]) -> dict:
        if not isinstance(value, dict):
            self.fail(field, f"expected an object, found {value!r:.60}")
        return value

    def strings(self, value: Any, field: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(field, f"expected a list of strings, found {value!r:.60}")
        return value

    def number(self, value: Any, field: str, *, low: float = -math.inf, high: float = math.inf,
               above: Optional[float] = None) -> float:
        """A finite number in [``low``, ``high``], or above ``above`` when given."""
        inside = is_number(value) and (value > above if above is not None else low <= value <= high)
        if not inside:
            bound = (f"> {above:g}" if above is not None else
                     f"in [{low:g}, {high:g}]" if math.isfinite(low) and math.isfinite(high) else "")
            self.fail(field, f"expected a number {bound}".rstrip() + f", found {value!r:.60}")
        return float(value)

    def integer(self, value: Any, field: str, *, low: int = 1, high: Optional[int] = None) -> int:
        if not is_integer(value) or value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            self.fail(field, f"expected an integer {bound}, found {value!r:.60}")
        return value

    def integers(self, value: Any, field: str, *, low: int = 1, high: Optional[int] = None,
                 empty: bool = False) -> list[int]:
        if not isinstance(value, (list, tuple)) or not (value or empty):  # tuples: entries in memory
            self.fail(field, f"expected a{'' if empty else ' non-empty'} list of integers, found "
                             f"{value!r:.60}")
        for index, item in enumerate(value):
            self.integer(item, f"{field}[{index}]", low=low, high=high)
        return value

    def weight_file(self, value: Any, field: str) -> str:
        """The name of a ``.safetensors`` file directly in the bundle folder (no path)."""
        if (not isinstance(value, str) or Path(value).name != value or "\\" in value
                or not value.endswith(WEIGHTS_SUFFIX) or value == WEIGHTS_SUFFIX):
            self.fail(field, f"expected the name of a {WEIGHTS_SUFFIX} file in the bundle folder, "
                             f"found {value!r:.60}")
        return value


def check_sizes(values: Mapping, config: type, where: Fields, field: str) -> None:
    """The sizes of a promptable architecture entry (our :class:`ModelConfig` or
    :class:`SamMed3DConfig`): integers >= 1 (>= 0 in :data:`ZERO_ALLOWED`), lists of them, finite
    ratios > 0, block indices within the encoder, the crop at most :data:`MAX_CROP_SIZE`."""
    defaults = {f.name: f.default for f in fields(config) if f.default is not MISSING}
    for name, default in defaults.items():
        if name not in values:
            continue
        value, at = values[name], f"{field}.{name}"
        if name in BLOCK_INDICES:  # the block count comes first among the fields: checked by now
            blocks = values.get(BLOCK_INDICES[name], defaults[BLOCK_INDICES[name]])
            where.integers(value, at, low=0, high=blocks - 1, empty=True)
        elif isinstance(default, tuple):
            where.integers(value, at)
        elif isinstance(default, float):
            where.number(value, at, above=0)
        else:
            where.integer(value, at, low=0 if name in ZERO_ALLOWED else 1,
                          high=MAX_CROP_SIZE if name == "crop_size" else None)


def member_type(architecture: Any, where: Fields, field: str) -> Optional[str]:
    """The ``"type"`` of an ``"architecture"`` entry: None (a promptable model of ours),
    ``"expert"`` or ``"sam_med3d"``."""
    if not isinstance(architecture, Mapping):
        where.fail(field, f"expected an object, found {architecture!r:.60}")
    kind = architecture.get("type")
    if kind not in (None, EXPERT, SAM_MED3D):
        where.fail(f"{field}.type", f"unknown member type {kind!r}; known: {EXPERT!r}, {SAM_MED3D!r} "
                                    "or none (a promptable model of ours)")
    return kind


def architecture_config(architecture: Any, *, path: Optional[Path] = None,
                        field: str = "architecture") -> Config:
    """The config a member's ``"architecture"`` entry (``bundle.json``'s) describes, checked, no model
    built: a :class:`ModelConfig` (our promptable model), :class:`SamMed3DConfig` (``"type":
    "sam_med3d"``) or :class:`ExpertPlan` (``"type": "expert"``, its ``"variant"`` checked too). A
    :class:`BundleError` names ``path`` and the ``field`` (the entry's own name, ``"architecture"``
    unless given) of the first problem."""
    where = Fields(path)
    kind = member_type(architecture, where, field)
    if kind == EXPERT:
        if architecture.get("variant") not in EXPERT_VARIANTS:
            where.fail(f"{field}.variant", f"unknown expert variant {architecture.get('variant')!r}")
        plan = architecture.get("plan")
        if isinstance(plan, Mapping) and "normalization" in plan:
            check_normalization(plan["normalization"], where, f"{field}.plan.normalization")
        try:
            return ExpertPlan.from_dict(architecture.get("plan"))
        except PlanError as err:
            where.fail(f"{field}.plan" + (f".{err.field}" if err.field else ""), err.problem)
    config = SamMed3DConfig if kind == SAM_MED3D else ModelConfig
    check_sizes(architecture, config, where, field)
    try:
        return config.from_dict(dict(architecture))
    except (TypeError, ValueError) as err:
        where.fail(field, str(err))


def check_normalization(value: Any, where: Fields, field: str) -> Normalization:
    """A promptable member's ``"normalization"``: a known kind, a CT window low < high, clip > 0."""
    entry = where.object(value, field)
    known = [f.name for f in fields(Normalization)]
    unknown = sorted(set(entry) - set(known))
    if unknown:
        where.fail(f"{field}.{unknown[0]}", f"unknown field; known: {', '.join(known)}")
    for key in known[1:]:
        if key in entry:
            where.number(entry[key], f"{field}.{key}")
    try:
        normalization = Normalization(**entry)
    except ValueError as err:
        where.fail(f"{field}.kind", str(err))
    if not normalization.low < normalization.high:
        where.fail(f"{field}.high", f"the CT window [{normalization.low:g}, {normalization.high:g}] "
                                    "is empty: high must exceed low")
    if not normalization.clip > 0:
        where.fail(f"{field}.clip", f"expected a number > 0, found {normalization.clip:g}")
    return normalization


def check_member(name: str, value: Any, where: Fields) -> None:
    """One member entry: its weight file's name and, for a promptable model, its normalisation and
    spacings. The architecture's content is checked where a model is built or described from it
    (:func:`architecture_config`), after the weights' checksum: a changed file is named first."""
    field = f"members.{name}"
    if not name:
        where.fail(field, "a member needs a name")
    entry = where.object(value, field)
    where.weight_file(where.required(entry, "weights", field), f"{field}.weights")
    architecture = where.required(entry, "architecture", field)
    if member_type(architecture, where, f"{field}.architecture") == EXPERT:
        return
    check_normalization(where.required(entry, "normalization", field), where,
                        f"{field}.normalization")
    base = where.number(where.required(entry, "base_spacing", field), f"{field}.base_spacing",
                        above=0)
    coarsest = where.number(where.required(entry, "max_spacing", field), f"{field}.max_spacing",
                            above=0)
    if coarsest < base:
        where.fail(f"{field}.max_spacing", f"{coarsest:g} mm is finer than base_spacing {base:g} mm")


def check_gate(value: Any, members: list[str], where: Fields) -> None:
    """A moe bundle's gate entry: its weight file, the bundle's members in order, a threshold in
    [0, 1] and the sizes of its network."""
    gate = where.object(value, "gate")
    unknown = sorted(set(gate) - set(GATE_REQUIRED) - set(GATE_OPTIONAL))
    if unknown:
        where.fail(f"gate.{unknown[0]}",
                   f"unknown field; known: {', '.join(GATE_REQUIRED + GATE_OPTIONAL)}")
    for key in GATE_REQUIRED:
        where.required(gate, key, "gate")
    where.weight_file(gate["weights"], "gate.weights")
    if gate["members"] != members:
        where.fail("gate.members",
                   f"{gate['members']!r:.80} differs from the bundle's members {members}")
    where.number(gate["threshold"], "gate.threshold", low=0, high=1)
    for key in ("dim", "crop_size", "hidden"):
        if key in gate:
            where.integer(gate[key], f"gate.{key}")
    stages = where.integers(gate["stage_channels"], "gate.stage_channels")
    where.integers(gate.get("prompt_stages", []), "gate.prompt_stages", low=0,
                   high=len(stages) - 1, empty=True)
    where.integer(gate.get("fine_channels", 0), "gate.fine_channels", low=0)
    for name, kinds in where.object(gate.get("modalities", {}), "gate.modalities").items():
        where.strings(kinds, f"gate.modalities.{name}")


def check_shared_settings(entries: Mapping[str, dict], manifest: Optional[Path]) -> None:
    """Members of a moe bundle (``bundle.json`` entries, the general model first) are promptable
    and share the general model's normalisation, spacings and crop size; a :class:`BundleError`
    names the first member and field that differ."""
    where = Fields(manifest)
    (general_name, general), *others = entries.items()
    for name, entry in entries.items():
        if entry["architecture"].get("type") == EXPERT:
            where.fail(f"members.{name}.architecture",
                       "a moe bundle's members must be promptable models, not task experts")
    for name, entry in others:
        for key in ("normalization", "base_spacing", "max_spacing"):
            if entry[key] != general[key]:
                where.fail(f"members.{name}.{key}",
                           f"{entry[key]!r} differs from the general model's {general[key]!r} "
                           f"({general_name!r}); the members of a moe bundle are fine-tunes of it")
        crop_sizes = [architecture_config(e["architecture"], path=manifest,
                                          field=f"members.{n}.architecture").crop_size
                      for n, e in ((general_name, general), (name, entry))]
        if crop_sizes[0] != crop_sizes[1]:
            where.fail(f"members.{name}.architecture.crop_size",
                       "crop size differs from the general model's")


def check_manifest(meta: Any, manifest: Path) -> dict[str, Any]:
    """``meta``, a parsed ``bundle.json`` (``manifest``), once every field is as the module docstring
    says; otherwise a :class:`BundleError` naming ``manifest`` and the first bad field."""
    where = Fields(manifest)
    meta = where.object(meta, None)
    found = meta.get("format_version")
    if not is_integer(found) or found != FORMAT_VERSION:
        where.fail("format_version", f"format_version {found!r:.60}, expected {FORMAT_VERSION}")
    kind = meta.get("kind", "student")
    if kind not in KINDS:
        where.fail("kind", f"unknown kind {kind!r:.60}; expected one of {', '.join(KINDS)}")
    members = meta.get("members")
    if not isinstance(members, dict) or not members:
        where.fail("members", "no members")
    for name, entry in members.items():
        check_member(name, entry, where)
    if kind == "moe":
        check_shared_settings(members, manifest)
    if "gate" in meta:
        check_gate(meta["gate"], list(members), where)
    where.strings(meta.get("labels", []), "labels")
    for key in ("training", "metrics"):
        where.object(meta.get(key, {}), key)
    for name, digest in where.object(meta.get("sha256", {}), "sha256").items():
        where.weight_file(name, f"sha256.{name}")
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            where.fail(f"sha256.{name}", f"expected 64 hexadecimal digits, found {digest!r:.80}")
    return meta
