"""The registry of model builders: a member's ``"architecture"`` entry (``bundle.json``'s) becomes
its bare network (:func:`build_module`, for the loader and ``ka2er bundle export``), and a member
gives back its entry (:func:`member_architecture`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..modeling import PromptableSegmenter, TaskExpert
from ..modeling.expert import NnUNetExpert
from ..modeling.protocols import common_prompt_types
from ..modeling.sam_med3d import TYPE as SAM_MED3D, SamMed3D
from .members import Bundle, Expert, Member
from .schema import EXPERT, BundleError, architecture_config

BUILDERS: dict[tuple[Optional[str], Optional[str]], Callable[[Any], torch.nn.Module]] = {
    (None, None): PromptableSegmenter,  # our promptable model: no "type"
    (SAM_MED3D, None): SamMed3D,
    (EXPERT, None): TaskExpert,
    (EXPERT, "nnunet"): NnUNetExpert,  # an imported nnU-Net: its decoder differs
}
"""The network of each (``"type"``, ``"variant"``) of an ``"architecture"`` entry, built from the
config :func:`~ka2er_core.bundle.schema.architecture_config` reads from it."""
BUILD_ERRORS = (ValueError, TypeError, RuntimeError, ArithmeticError, AssertionError, IndexError,
                KeyError)
"""What building a network from sizes it cannot take raises (torch, MONAI and our modules)."""


def build_module(architecture: Any, *, path: Optional[Path] = None, field: str = "architecture"
                 ) -> torch.nn.Module:
    """The bare model (random weights, train mode, on the CPU) of a member's ``"architecture"`` entry
    (:data:`BUILDERS`), whose state dict is the one the member's weight file holds. Errors as
    :func:`~ka2er_core.bundle.schema.architecture_config`, and a :class:`BundleError` naming the entry
    when the network cannot be built with its sizes."""
    config = architecture_config(architecture, path=path, field=field)
    kind = architecture.get("type")
    builder = BUILDERS[kind, architecture.get("variant") if kind == EXPERT else None]
    try:
        return builder(config)
    except BUILD_ERRORS as err:
        raise BundleError(f"the network cannot be built with these sizes ({type(err).__name__}: "
                          f"{first_line(err)})", path=path, field=field) from None


def prompt_types(bundle: Bundle) -> tuple[str, ...]:
    """The prompts every promptable member of ``bundle`` takes ("point", "box"): read off the
    members' architectures in ``bundle.json`` (no weights loaded), or off the models of a bundle
    made in memory."""
    entries = bundle.meta.get("members")
    if entries:
        classes = [BUILDERS[entry["architecture"].get("type"), None] for entry in entries.values()
                   if entry["architecture"].get("type") != EXPERT]
    else:
        classes = [type(member.model) for member in bundle.members.values()
                   if not isinstance(member, Expert)]
    return common_prompt_types(classes)


def member_architecture(member: Member) -> dict[str, Any]:
    """The ``"architecture"`` entry of a member (what :func:`build_module` builds it from): its
    model's config, or ``{"type": "expert", "plan": ...}`` plus the expert model's ``variant``, if any."""
    if isinstance(member, Expert):
        architecture = {"type": EXPERT, "plan": member.plan.to_dict()}
        if getattr(member.model, "variant", None):
            architecture["variant"] = member.model.variant
        return architecture
    return member.model.config.to_dict()


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
