"""Export one model of a ka2er bundle as a MONAI Bundle folder, for users of MONAI's tools.

The folder holds ``configs/metadata.json`` (MONAI's metadata fields, plus a ``ka2er`` section with
the original ``bundle.json``), ``configs/inference.json`` (``network_def`` instantiates the model
through :func:`promptable_network`, :func:`sam_med3d_network` or :func:`task_expert_network`, which
build it as the bundle loader does, so ``ka2er_core`` must be importable), ``models/model.pt`` (the state dict, ``torch.save``), ``models/model.safetensors`` and
``docs/README.md`` (the bundle's model card, when it has one). It appears whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import monai
import numpy
import safetensors
import torch
from safetensors.torch import save_file

from .. import __version__
from ..bundle import Bundle, Expert, Member, Segmenter, load_bundle
from ..bundle.registry import build_module, member_architecture
from ..bundle.schema import EXPERT
from ..errors import Ka2erError
from ..io.atomic import folder_written_whole, normal_mode
from ..modeling import ExpertPlan, PromptableSegmenter, TaskExpert
from ..modeling.sam_med3d import TYPE as SAM_MED3D, SamMed3D
from ..modeling.prompt_encoder import (BOX_HIGH, BOX_LOW, FLAT_BOX_HIGH, FLAT_BOX_LOW, NEGATIVE, PAD,
                                       POSITIVE)

MODEL_VERSION = "1.0.0"
POINT_KINDS = {PAD: "padding (no prompt)", NEGATIVE: "negative point", POSITIVE: "positive point"}
PROMPT_KINDS = {**POINT_KINDS, BOX_LOW: "3D box, low corner", BOX_HIGH: "3D box, high corner",
                FLAT_BOX_LOW: "2D box (one slice thick), low corner",
                FLAT_BOX_HIGH: "2D box (one slice thick), high corner"}
"""Prompt kinds our promptable model reads; SAM-Med3D reads :data:`POINT_KINDS` only."""


class ExportError(Ka2erError):
    """An export cannot be written: the output exists, or the member cannot be exported."""


def promptable_network(architecture: dict[str, Any]) -> PromptableSegmenter:
    """The promptable model of an architecture dict (``bundle.json``'s), random weights: the
    ``network_def`` factory of exported promptable models."""
    if architecture.get("type") is not None:
        raise ExportError(f"not a promptable model of ours (type {architecture.get('type')!r})",
                          field="architecture.type")
    return build_module(architecture)


def sam_med3d_network(architecture: dict[str, Any]) -> SamMed3D:
    """SAM-Med3D of an architecture dict (``bundle.json``'s, ``"type": "sam_med3d"``), random
    weights: the ``network_def`` factory of exported SAM-Med3D models."""
    if architecture.get("type") != SAM_MED3D:
        raise ExportError(f"not a SAM-Med3D architecture (type {architecture.get('type')!r})",
                          field="architecture.type")
    return build_module(architecture)


def task_expert_network(plan: dict[str, Any], variant: Optional[str] = None) -> TaskExpert:
    """The task expert (MONAI DynUNet) of a plan dict, random weights: the ``network_def`` factory
    of exported experts; ``variant`` "nnunet" builds an imported nnU-Net's
    (:class:`~ka2er_core.modeling.expert.NnUNetExpert`), whose state dict differs."""
    architecture = {"type": EXPERT, "plan": plan, **({"variant": variant} if variant else {})}
    return build_module(architecture)


def network_def(architecture: dict[str, Any]) -> dict[str, Any]:
    """``network_def`` of ``configs/inference.json`` for a member's architecture entry."""
    kind = architecture.get("type")
    if kind == EXPERT:
        variant = {"variant": architecture["variant"]} if architecture.get("variant") else {}
        return {"_target_": f"{__name__}.task_expert_network", "plan": architecture["plan"],
                **variant}
    factory = "sam_med3d_network" if kind == SAM_MED3D else "promptable_network"
    return {"_target_": f"{__name__}.{factory}", "architecture": architecture}


def modality(normalization: dict[str, Any]) -> str:
    return {"ct": "CT", "mr": "MR"}.get(normalization.get("kind"), "CT or MR")


def value_range(normalization: dict[str, Any]) -> list[float]:
    """Range of normalised intensities: CT windows map to [-1, 1], MR z-scores are clipped."""
    if normalization.get("kind") == "ct":
        return [-1.0, 1.0]
    clip = float(normalization.get("clip", 1.0))
    return [-max(clip, 1.0), max(clip, 1.0)]


def image_input(normalization: dict[str, Any], channels: int, shape: list, grid: str
                ) -> dict[str, Any]:
    """The normalised image a model reads, resampled to ``grid`` (described in words)."""
    return {"type": "image", "format": "magnitude", "modality": modality(normalization),
            "num_channels": channels, "spatial_shape": shape, "dtype": "float32",
            "value_range": value_range(normalization), "is_patch_data": True,
            "channel_def": {"0": f"image on {grid}, axes (k, j, i), normalised as configs/"
                                 "inference.json 'normalization'"}}


def promptable_data_format(member: Segmenter) -> dict[str, Any]:
    """Inputs and outputs of ``forward(image, coords, labels, mask=None)``, the same for our
    :class:`PromptableSegmenter` and :class:`SamMed3D` but for the prompt kinds."""
    crop = member.crop_size
    shape = [crop, crop, crop]
    normalization = member.normalization.to_dict()
    kinds = POINT_KINDS if isinstance(member.model, SamMed3D) else PROMPT_KINDS
    return {
        "inputs": {
            "image": image_input(normalization, member.model.config.in_channels, shape,
                                 f"a {crop}^3 crop, isotropic spacing from base_spacing to "
                                 "max_spacing"),
            "coords": {"type": "tuples", "format": "points", "modality": "n/a", "num_channels": 3,
                       "spatial_shape": ["*", 3], "dtype": "float32", "value_range": [0, crop],
                       "is_patch_data": False,
                       "channel_def": {"0": "i (crop voxel)", "1": "j", "2": "k"}},
            "labels": {"type": "tuples", "format": "indices", "modality": "n/a", "num_channels": 1,
                       "spatial_shape": ["*"], "dtype": "int64", "value_range": [min(kinds), max(kinds)],
                       "is_patch_data": False,
                       "channel_def": {str(kind): text for kind, text in kinds.items()}},
            "mask": {"type": "image", "format": "magnitude", "modality": "n/a", "num_channels": 1,
                     "spatial_shape": shape, "dtype": "float32", "value_range": [0, 1],
                     "is_patch_data": True,
                     "channel_def": {"0": "optional previous mask (probability) of the target"}}},
        "outputs": {
            "pred": {"type": "image", "format": "classes", "num_channels": 1, "spatial_shape": shape,
                     "dtype": "float32", "value_range": [], "is_patch_data": True,
                     "channel_def": {"0": "target logit (inside where > 0)"}},
            "iou": {"type": "probabilities", "format": "classes", "num_channels": 1,
                    "spatial_shape": [1], "dtype": "float32", "value_range": [0, 1],
                    "is_patch_data": False, "channel_def": {"0": "predicted IoU of the mask"}}}}


def expert_data_format(plan: ExpertPlan) -> dict[str, Any]:
    """Input and output of ``TaskExpert.forward(image)`` in eval mode, one patch."""
    shape = list(plan.patch_size)
    classes = {"0": "background", **{str(c): f"{name} (label value {value})"
                                     for c, (name, value) in enumerate(plan.labels.items(), 1)}}
    grid = "a patch of the canonical RAS grid at 'spacing' (i, j, k)"
    return {"inputs": {"image": image_input(plan.normalization, 1, shape, grid)},
            "outputs": {"pred": {"type": "image", "format": "labels",
                                 "num_channels": plan.num_classes, "spatial_shape": shape,
                                 "dtype": "float32", "value_range": [], "is_patch_data": True,
                                 "channel_def": classes}}}


def metadata(bundle: Bundle, name: str) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's metadata fields and the original ``bundle.json``."""
    member = bundle.members[name]
    labels = ", ".join(bundle.meta.get("labels", [])) or "the prompted structure"
    if isinstance(member, Expert):
        plan = member.plan
        task = f"Automatic 3D segmentation of {', '.join(plan.labels)} ({plan.task})"
        network = ("an nnU-Net v2 model imported into ka2er (its PlainConvUNet as a MONAI DynUNet with "
                   "nnU-Net's decoder)" if getattr(member.model, "variant", None) == "nnunet" else
                   "an nnU-Net-style MONAI DynUNet")
        description = (f"KA2ER Segment task expert {name!r}: {network} "
                       f"planned for {plan.task}, patches of {plan.patch_size} voxels (k, j, i) at "
                       f"{plan.spacing} mm (i, j, k). Sliding windows as configs/inference.json "
                       "'inferer'; softmax over the channels gives the labels.")
        data_format = expert_data_format(plan)
    elif isinstance(member.model, SamMed3D):
        config = member.model.config
        task = f"Interactive prompt-based 3D segmentation (points) of {labels}"
        description = (f"SAM-Med3D (uni-medical/SAM-Med3D) imported into KA2ER Segment as member "
                       f"{name!r}: ViT image encoder ({config.encoder_dim} wide, "
                       f"{config.encoder_depth} blocks), prompt encoder for points and a previous "
                       f"mask (no boxes), two-way mask decoder, on {member.crop_size}^3 crops at "
                       f"{member.base_spacing} to {member.max_spacing} mm. Crops are (k, j, i) "
                       "arrays and prompts crop-voxel coordinates (i, j, k), transposed to "
                       "SAM-Med3D's (x, y, z) inside the model; ka2er_core converts RAS prompts, "
                       "crops, resamples and normalises.")
        data_format = promptable_data_format(member)
    else:
        task = f"Interactive prompt-based 3D segmentation (points and boxes) of {labels}"
        description = (f"KA2ER Segment promptable model {name!r} from a {bundle.kind!r} bundle: "
                       "SAM-style (Swin transformer image encoder, prompt encoder for points, 3D "
                       f"and 2D boxes and a previous mask, two-way mask decoder) on "
                       f"{member.crop_size}^3 crops at {member.base_spacing} to "
                       f"{member.max_spacing} mm. Prompts are crop-voxel coordinates (i, j, k); "
                       "ka2er_core converts RAS prompts, crops, resamples and normalises.")
        data_format = promptable_data_format(member)
    training = bundle.meta.get("training", {})
    optional = {"eval_metrics": bundle.meta["metrics"]} if bundle.meta.get("metrics") else {}
    if training.get("datasets"):
        optional["data_source"] = ", ".join(map(str, training["datasets"]))
    return {"version": MODEL_VERSION,
            "changelog": {MODEL_VERSION: f"exported by ka2er {__version__} from member {name!r}"},
            "monai_version": monai.__version__,
            "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": numpy.__version__,
            "required_packages_version": {"ka2er-segment": __version__},
            "optional_packages_version": {"safetensors": safetensors.__version__},
            "task": task, "description": description,
            "authors": "KA2ER Segment contributors",
            "copyright": "Copyright (c) KA2ER Segment contributors",
            **optional,
            "network_data_format": data_format,
            "ka2er": {"member": name, "bundle": bundle.meta}}


def inference_config(member: Member) -> dict[str, Any]:
    """``configs/inference.json``: the network (``network_def``), its weights and the settings."""
    if isinstance(member, Expert):
        plan = member.plan
        settings = {"spacing": list(plan.spacing), "labels": plan.labels,
                    "normalization": plan.normalization,
                    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(plan.patch_size),
                                "sw_batch_size": 1, "overlap": 0.5, "mode": "gaussian"}}
    else:
        settings = {"crop_size": member.crop_size, "base_spacing": member.base_spacing,
                    "max_spacing": member.max_spacing,
                    "normalization": member.normalization.to_dict()}
    return {"imports": ["$import torch"],
            "bundle_root": ".",
            "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
            "ckpt_path": "$@bundle_root + '/models/model.pt'",
            **settings,
            "network_def": network_def(member_architecture(member)),
            "network": "$@network_def.to(@device)",
            "initialize": [LOAD_WEIGHTS, "$@network.eval()"]}


LOAD_WEIGHTS = "$@network.load_state_dict(torch.load(@ckpt_path, map_location=@device, weights_only=True))"
"""MONAI's initialize step: the exported state dict, read without unpickling arbitrary objects."""


def export_monai_bundle(bundle: Union[str, os.PathLike], out: Union[str, os.PathLike], *,
                        member: Optional[str] = None, force: bool = False) -> Path:
    """Write the MONAI Bundle folder ``out`` for ``member`` (default: the first, a moe bundle's
    general model) of the ka2er bundle ``bundle``, whose checksums are verified; an existing ``out``
    is refused unless ``force``. Returns ``out``."""
    bundle, out = Path(bundle), Path(out)
    if out.exists():
        if not force:
            raise ExportError("already exists (--force replaces it)", path=out)
        if not out.is_dir() or out.resolve() == bundle.resolve():
            raise ExportError("cannot be replaced: it is not a folder, or it is the bundle being "
                              "exported", path=out)
    loaded = load_bundle(bundle)
    name = member or next(iter(loaded.members))
    if name not in loaded.members:
        raise ExportError(f"no member {name!r}; the members are {', '.join(loaded.members)}",
                          path=bundle / "bundle.json", field="members")
    model = loaded.members[name].model
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    with folder_written_whole(out) as folder:
        for sub in ("configs", "models"):
            (folder / sub).mkdir()
        (folder / "configs" / "metadata.json").write_text(
            json.dumps(metadata(loaded, name), indent=2) + "\n")
        (folder / "configs" / "inference.json").write_text(
            json.dumps(inference_config(loaded.members[name]), indent=2) + "\n")
        torch.save(state, folder / "models" / "model.pt")
        save_file(state, str(folder / "models" / "model.safetensors"))
        normal_mode(folder / "models" / "model.safetensors")  # safetensors makes it private
        if (bundle / "README.md").is_file():
            (folder / "docs").mkdir()
            shutil.copyfile(bundle / "README.md", folder / "docs" / "README.md")
    return out
