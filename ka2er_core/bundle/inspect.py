"""What a bundle holds, read from ``bundle.json`` and the weight files' headers (no model is built).

:func:`inspect_bundle` returns a JSON-able report: kind, labels, per member its type ("promptable",
"sam_med3d" or "expert", with ``"variant": "nnunet"`` for an imported nnU-Net), architecture,
spacings, crop or plan, normalisation, parameter count (tensor values in its weight file, buffers
included) and weight file (size, sha256 status against ``bundle.json``, header status); a moe
bundle's gate; the training summary and the measured metrics. :func:`format_report` renders it as
text and :func:`check_weights` raises on the first weight file that does not match its checksum or
whose header is unreadable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

from ..errors import UnreadableFileError
from ..io.checksum import sha256
from ..io.weights import read_header
from ..modeling import ExpertPlan
from ..modeling.sam_med3d import TYPE as SAM_MED3D, SamMed3DConfig
from .schema import EXPERT, BundleError, architecture_config
from .store import read_manifest

MISSING, CHANGED, NOT_RECORDED, OK = "missing", "changed", "not recorded", "ok"
LONGEST_LIST = 8
"""Lists longer than this are shortened in the text report."""


def weight_file(path: Path, meta: dict[str, Any], name: str) -> dict[str, Any]:
    """File name, size in bytes, sha256 status (ok, changed, missing, not recorded), header status
    (ok, missing, or what is wrong with it) and parameters (values in all its tensors)."""
    weights = path / name
    if not weights.is_file():
        return {"file": name, "bytes": None, "sha256": MISSING, "header": MISSING,
                "parameters": None}
    expected = meta.get("sha256", {}).get(name)
    status = NOT_RECORDED if expected is None else OK if sha256(weights) == expected else CHANGED
    try:
        tensors = read_header(weights)
        header, parameters = OK, sum(tensor.values for tensor in tensors.values())
    except UnreadableFileError as err:
        header, parameters = ": ".join(p for p in (err.field, err.problem) if p), None
    return {"file": name, "bytes": weights.stat().st_size, "sha256": status, "header": header,
            "parameters": parameters}


def member_report(path: Path, meta: dict[str, Any], name: str) -> dict[str, Any]:
    """One member: a promptable model, ours or SAM-Med3D's (architecture, spacings, crop,
    normalisation), or a task expert (its plan, and its variant if imported), with its parameter count
    and weight file. The architecture is checked as the loader checks it, without building the model."""
    entry = meta["members"][name]
    manifest = path / "bundle.json"
    architecture = entry["architecture"]
    config = architecture_config(architecture, path=manifest, field=f"members.{name}.architecture")
    weights = weight_file(path, meta, entry["weights"])
    parameters = weights.pop("parameters")
    if isinstance(config, ExpertPlan):
        variant = {"variant": architecture["variant"]} if architecture.get("variant") else {}
        return {"type": EXPERT, **variant, "plan": config.to_dict(), "parameters": parameters,
                "weights": weights}
    kind = SAM_MED3D if isinstance(config, SamMed3DConfig) else "promptable"
    return {"type": kind, "architecture": config.to_dict(), "crop_size": config.crop_size,
            "base_spacing": entry["base_spacing"], "max_spacing": entry["max_spacing"],
            "normalization": entry["normalization"], "parameters": parameters, "weights": weights}


def gate_report(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """A moe bundle's gate: its config (threshold included), parameter count and weight file."""
    entry = dict(meta["gate"])
    weights = weight_file(path, meta, entry.pop("weights"))
    return {**entry, "parameters": weights.pop("parameters"), "weights": weights}


def inspect_bundle(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The report of the bundle folder ``path`` (see the module docstring); raises
    :class:`~ka2er_core.errors.UnreadableFileError` or :class:`BundleError` naming the file and field
    when it is not a readable bundle. Damaged weight files are reported, not raised: see
    :func:`check_weights`."""
    path = Path(path)
    meta = read_manifest(path)
    kind = meta.get("kind", "student")
    members = {name: member_report(path, meta, name) for name in meta["members"]}
    report = {"path": str(path), "kind": kind, "format_version": meta["format_version"],
              "labels": meta.get("labels", []), "members": members}
    if "gate" in meta:
        report["gate"] = gate_report(path, meta)
    report["training"] = meta.get("training", {})
    report["metrics"] = meta.get("metrics", {})
    return report


def check_weights(report: dict[str, Any]) -> None:
    """Raise a :class:`BundleError` naming the first weight file of ``report`` that is missing, does
    not match its sha256 in ``bundle.json`` or has a header the safetensors format does not allow."""
    parts = [*report["members"].values(), *([report["gate"]] if "gate" in report else [])]
    for part in parts:
        weights = part["weights"]
        where = Path(report["path"]) / weights["file"]
        if weights["sha256"] == MISSING:
            raise BundleError("weight file missing", path=where)
        if weights["sha256"] == NOT_RECORDED:
            raise BundleError("bundle.json records no sha256 for this file", path=where, field="sha256")
        if weights["sha256"] == CHANGED:
            raise BundleError("sha256 does not match bundle.json: the file was changed or damaged",
                              path=where, field="sha256")
        if weights["header"] != OK:
            raise BundleError(weights["header"], path=where)


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def short_list(values: list) -> str:
    shown = ", ".join(number(v) for v in values[:LONGEST_LIST])
    return shown + (f", ... ({len(values)} in all)" if len(values) > LONGEST_LIST else "")


def nested_lines(values: dict[str, Any], indent: str = "  ") -> list[str]:
    """``key: value`` lines, dicts indented under their key, long lists shortened."""
    lines = []
    for key, value in values.items():
        if isinstance(value, dict):
            lines += [f"{indent}{key}:"] + nested_lines(value, indent + "  ")
        elif isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value):
            lines.append(f"{indent}{key}: {short_list(value)}")
        else:
            text = json.dumps(value) if isinstance(value, list) else number(value)
            lines.append(f"{indent}{key}: {text}")
    return lines or [f"{indent}(none)"]


def describe_normalization(values: dict[str, Any]) -> str:
    ct = f"CT window [{number(values.get('low'))}, {number(values.get('high'))}] HU"
    mr = f"MR z-score on foreground, clipped at +-{number(values.get('clip'))} sd"
    kind = values.get("kind")
    auto = f"auto: {ct} for images in HU, else {mr}"
    return {"ct": ct, "mr": mr, "auto": auto}.get(kind, str(values))


def describe_size(weights: dict[str, Any]) -> str:
    size = "missing" if weights["bytes"] is None else f"{weights['bytes'] / 1e6:.1f} MB"
    return f"{weights['file']}, {size}, sha256 {weights['sha256']}"


def describe_parameters(parameters: int | None) -> str:
    if parameters is None:
        return "unknown (unreadable header)"
    return f"{parameters:,} (all tensors in the weight file)"


def expert_architecture(member: dict[str, Any]) -> str:
    plan = member["plan"]
    stages = f"{len(plan['filters'])} stages, filters {'-'.join(map(str, plan['filters']))}"
    if member.get("variant") == "nnunet":
        return (f"expert imported from nnU-Net v2 (its PlainConvUNet as a MONAI DynUNet with "
                f"nnU-Net's decoder, {stages})")
    return f"expert (MONAI DynUNet, {stages})"


def promptable_architecture(member: dict[str, Any]) -> str:
    arch = member["architecture"]
    if member["type"] == SAM_MED3D:
        tokens = arch["crop_size"] // arch["patch_size"]
        return (f"SAM-Med3D (ViT encoder {arch['encoder_dim']} wide, {arch['encoder_depth']} blocks, "
                f"{arch['encoder_heads']} heads, {arch['patch_size']}^3-voxel patches, {tokens}^3 "
                f"tokens; prompt and decoder width {arch['dim']}, {arch['decoder_depth']} decoder "
                "layers; points only, no boxes)")
    return (f"promptable (Swin encoder {arch['encoder_embed_dim']} wide, depths "
            f"{'-'.join(map(str, arch['encoder_depths']))}; prompt and decoder width "
            f"{arch['dim']}, {arch['decoder_depth']} decoder layers)")


def member_lines(name: str, member: dict[str, Any]) -> list[str]:
    lines = [f"member {name}"]
    if member["type"] == EXPERT:
        plan = member["plan"]
        labels = ", ".join(f"{label} = {value}" for label, value in plan["labels"].items())
        lines += [f"  architecture   {expert_architecture(member)}",
                  f"  task           {plan['task']}",
                  f"  labels         {labels}",
                  f"  spacing        {' x '.join(map(number, plan['spacing']))} mm (i j k)",
                  f"  patch          {' x '.join(map(str, plan['patch_size']))} voxels (k j i)",
                  f"  normalisation  {describe_normalization(plan['normalization'])}"]
    else:
        lines += [f"  architecture   {promptable_architecture(member)}",
                  f"  spacing        {number(member['base_spacing'])} mm base, "
                  f"{number(member['max_spacing'])} mm max",
                  f"  crop           {member['crop_size']}^3 voxels",
                  f"  normalisation  {describe_normalization(member['normalization'])}"]
    return lines + [f"  parameters     {describe_parameters(member['parameters'])}",
                    f"  weights        {describe_size(member['weights'])}"]


def format_report(report: dict[str, Any]) -> str:
    """The report as text, one section per member, then the gate, training and metrics."""
    labels = report["labels"]
    lines = [f"bundle {report['path']}",
             f"kind   {report['kind']} (format {report['format_version']})",
             f"labels {', '.join(labels) if labels else '(none)'}"]
    for name, member in report["members"].items():
        lines += member_lines(name, member)
    if "gate" in report:
        gate = report["gate"]
        lines += ["gate",
                  f"  threshold      {number(gate['threshold'])}",
                  f"  members        {', '.join(gate.get('members', []))}",
                  *(f"  {name:<14} answers on {', '.join(kinds)} only"
                    for name, kinds in gate.get("modalities", {}).items()),
                  f"  parameters     {describe_parameters(gate['parameters'])}",
                  f"  weights        {describe_size(gate['weights'])}"]
    lines += ["training"] + nested_lines(report["training"])
    lines += ["metrics"] + nested_lines(report["metrics"])
    return "\n".join(lines)
