"""An nnU-Net v2 trained-model folder (3d_fullres, PlainConvUNet) as a ka2er ``expert`` bundle.

Reads ``plans.json``, ``dataset.json`` and ``fold_<f>/<checkpoint>`` (``network_weights``, with
``trainer_name``, ``init_args`` and ``inference_allowed_mirroring_axes`` recorded in the bundle).

Axes. nnU-Net's arrays are the image files' voxel arrays in (k, j, i) order, transposed by the plans'
``transpose_forward`` before the network sees them; the plans give spacing, patch, kernels and strides
in that transposed order. Our experts read canonical (S, A, R) = (k, j, i) arrays: the importer undoes
the transpose, permuting every convolution kernel the same way. That is nnU-Net's own geometry for
images read with NibabelIOWithReorient, and for the usual axial scans read otherwise it differs by
axis flips only (nnU-Net trains with mirroring).

Network. PlainConvUNet (two convolutions per stage, instance norm, leaky ReLU 0.01) maps onto our
TaskExpert (MONAI DynUNet), whose convolutions have no bias:

- each convolution's bias is dropped: the InstanceNorm right after it subtracts it exactly;
- a transposed convolution's bias is not followed by a norm (its output is concatenated with the skip
  and convolved with zero padding), so it is kept: :class:`NnUNetExpert` adds these biases;
- nnU-Net convolves each decoder level with its own stage's kernel, DynUNet with the kernel of the
  stage below: :class:`NnUNetExpert` rebuilds the levels where the two differ;
- the lowest-resolution segmentation head only serves nnU-Net's deep supervision: dropped.

Normalisation. ZScoreNormalization (per image, over all voxels or the nonzero region) becomes "mr"
(per image, voxels above the 20th percentile), clipped at 100 sd, in effect never, as nnU-Net does not
clip. CTNormalization (clip to the foreground's 0.5 and 99.5 percentiles, then (x - mean) / sd) becomes
the "ct" window [p0.5, p99.5] (mapped to [-1, 1]) with the first convolution scaled by
(p99.5 - p0.5) / 2 / sd: equal to nnU-Net when the window's centre is the foreground mean; otherwise the
remaining shift, which the first InstanceNorm subtracts, still reaches the output through the first
convolution's zero padding, at image and patch borders. In both cases the first InstanceNorm absorbs
any rescaling of the input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..bundle import Expert, save_bundle
from ..io.checksum import sha256
from ..modeling.expert import ExpertPlan, NnUNetExpert, PlanError
from ..modeling.normalization import Normalization
from .checkpoint import CheckpointError, check_state, describe_loaded, read_checkpoint

CONFIGURATION = "3d_fullres"
MR_CLIP = 100.0
SUPPORTED = {  # arch_kwargs: PlainConvUNet as nnU-Net's default planner writes it
    "conv_op": ("torch.nn.modules.conv.Conv3d",),
    "norm_op": ("torch.nn.modules.instancenorm.InstanceNorm3d",),
    "nonlin": ("torch.nn.LeakyReLU", "torch.nn.modules.activation.LeakyReLU"),
}


def import_nnunet(folder: Path, out: Path, fold: str = "all", checkpoint: str = "checkpoint_final.pth",
                  progress: Callable[[str], Any] = print) -> Path:
    """Write an ``expert`` bundle at ``out`` from an nnU-Net v2 trained-model folder; returns ``out``."""
    folder, out = Path(folder), Path(out)
    plans, dataset = read_json(folder / "plans.json"), read_json(folder / "dataset.json")
    arch = architecture(plans, folder / "plans.json")
    backward = [int(a) for a in plans.get("transpose_backward", (0, 1, 2))]
    if sorted(backward) != [0, 1, 2]:
        raise CheckpointError(f"expected a permutation of 0, 1, 2, got {backward}",
                              path=folder / "plans.json", field="transpose_backward")
    plan, input_scale = expert_plan(plans, dataset, arch, backward, folder)
    path = folder / f"fold_{fold}" / checkpoint
    if not path.is_file():
        raise CheckpointError(missing_checkpoint(folder, fold), path=path)
    progress(f"reading {path}")
    loaded = read_checkpoint(path)
    if not isinstance(loaded, dict) or not isinstance(loaded.get("network_weights"), dict):
        raise CheckpointError(f"expected an nnU-Net checkpoint (a dict with 'network_weights'), found "
                              f"{describe_loaded(loaded)}", path=path)
    configuration = (loaded.get("init_args") or {}).get("configuration", CONFIGURATION)
    if configuration != CONFIGURATION:
        raise CheckpointError(f"was trained as {configuration!r}; only {CONFIGURATION!r} is imported",
                              path=path, field="init_args.configuration")
    expected = nnunet_shapes(arch, len(plan.labels) + 1)
    norm_index = 1 if arch.get("dropout_op") is None else 2  # all_modules: conv, [dropout], norm, nonlin
    state = loaded["network_weights"]
    check_state(state, expected, path, "this folder's PlainConvUNet", aliases(expected, norm_index))
    model = NnUNetExpert(plan)
    model.load_state_dict(converted(state, key_map(plan, model), backward, input_scale))
    progress(f"writing {out}")
    mirroring = loaded.get("inference_allowed_mirroring_axes")
    training = {"imported_from": "nnU-Net v2", "folder": folder.name, "fold": fold,
                "configuration": configuration, "plans": plans.get("plans_name"),
                "trainer": loaded.get("trainer_name"), "checkpoint": checkpoint,
                "checkpoint_sha256": sha256(path),
                "image_reader_writer": plans.get("image_reader_writer"),
                "normalization_scheme": plans["configurations"][CONFIGURATION]["normalization_schemes"][0],
                "inference_allowed_mirroring_axes": None if mirroring is None else
                [int(a) for a in mirroring]}
    return save_bundle(out, Expert(plan.task, model.eval()), kind="expert", labels=list(plan.labels),
                       training=training)


def missing_checkpoint(folder: Path, fold: str) -> str:
    """Why ``fold_<fold>/<checkpoint>`` is not there, with what is: the folds, or the fold's
    checkpoints (``--fold`` and ``--checkpoint`` name the others)."""
    folds = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
    here = folder / f"fold_{fold}"
    if not here.is_dir():
        return (f"no such file (folds here: {', '.join(folds) or 'none'}); choose one with --fold "
                "(fold_all is --fold all)" if folds else
                "no such file (no fold_* folders here: not a trained model folder?)")
    files = sorted(p.name for p in here.iterdir() if p.is_file() and not p.name.startswith("."))
    checkpoints = [name for name in files if name.endswith(".pth")]
    if checkpoints:
        return (f"no such file ({here.name} holds {', '.join(files)}); choose a checkpoint with "
                f"--checkpoint, e.g. --checkpoint {checkpoints[0]}")
    return (f"no such file ({here.name} holds {', '.join(files) or 'nothing'}: no .pth checkpoint; "
            "name one with --checkpoint)")


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError("missing: not an nnU-Net v2 trained-model folder", path=path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"unreadable ({err})", path=path) from None
    if not isinstance(value, dict):
        raise CheckpointError("expected a JSON object", path=path)
    return value


def architecture(plans: dict, path: Path) -> dict:
    """``arch_kwargs`` of the 3d_fullres PlainConvUNet (from older plans' fields too), checked for
    what our expert can represent."""
    config = plans.get("configurations", {}).get(CONFIGURATION)
    field = f"configurations.{CONFIGURATION}"
    if not isinstance(config, dict):
        raise CheckpointError(f"no {CONFIGURATION!r} configuration", path=path, field="configurations")
    missing = [key for key in ("patch_size", "spacing", "normalization_schemes") if key not in config]
    if missing:
        raise CheckpointError("required field is missing", path=path, field=f"{field}.{missing[0]}")
    if "architecture" in config:
        name = config["architecture"].get("network_class_name", "")
        arch = dict(config["architecture"].get("arch_kwargs", {}))
    else:  # nnU-Net's older plans name the network and list its sizes directly
        name = config.get("UNet_class_name", "")
        stages = len(config.get("n_conv_per_stage_encoder", ()))
        arch = {"n_stages": stages, "kernel_sizes": config.get("conv_kernel_sizes"),
                "strides": config.get("pool_op_kernel_sizes"),
                "features_per_stage": [min(config.get("UNet_base_num_features", 32) * 2 ** s,
                                           config.get("unet_max_num_features", 320))
                                       for s in range(stages)],
                "n_conv_per_stage": config.get("n_conv_per_stage_encoder"),
                "n_conv_per_stage_decoder": config.get("n_conv_per_stage_decoder"), "conv_bias": True,
                "conv_op": SUPPORTED["conv_op"][0], "norm_op": SUPPORTED["norm_op"][0],
                "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "nonlin": SUPPORTED["nonlin"][0]}
    problems = [] if name.split(".")[-1] == "PlainConvUNet" else [
        f"network {name!r}: only PlainConvUNet is imported"]
    problems += [f"{key} {arch.get(key)!r}" for key, allowed in SUPPORTED.items()
                 if arch.get(key) not in allowed]
    norm = arch.get("norm_op_kwargs") or {}
    if not norm.get("affine") or norm.get("eps", 1e-5) != 1e-5:
        problems.append(f"norm_op_kwargs {norm}: need affine, eps 1e-5")
    if (arch.get("nonlin_kwargs") or {}).get("negative_slope", 0.01) != 0.01 or arch.get("nonlin_first"):
        problems.append("leaky ReLU must have slope 0.01 and come after the norm")
    if not arch.get("conv_bias"):
        problems.append("conv_bias must be true (nnU-Net's default)")
    stages = arch.get("n_stages") or 0
    per_stage = ("kernel_sizes", "strides", "features_per_stage")
    if any(len(arch.get(key) or ()) != stages for key in per_stage) \
            or any(len(triple) != 3 for key in per_stage[:2] for triple in arch.get(key) or ()) \
            or len(config["patch_size"]) != 3 or len(config["spacing"]) != 3:
        problems.append(f"need 3D patch, spacing, and kernel_sizes, strides, features_per_stage for "
                        f"{stages} stages")
    if list(arch.get("n_conv_per_stage") or ()) != [2] * stages or \
            list(arch.get("n_conv_per_stage_decoder") or ()) != [2] * (stages - 1):
        problems.append("need two convolutions per stage, encoder and decoder")
    if problems:
        raise CheckpointError("cannot be represented by our expert: " + "; ".join(problems), path=path,
                              field=f"{field}.architecture")
    return arch


def expert_plan(plans: dict, dataset: dict, arch: dict, backward: list[int], folder: Path
                ) -> tuple[ExpertPlan, float]:
    """Our plan (axes un-transposed) and the factor the first convolution is scaled by."""
    config = plans["configurations"][CONFIGURATION]

    def ours(values):  # network axes -> (k, j, i)
        return tuple(values[a] for a in backward)

    channels = dataset.get("channel_names") or {}
    if len(channels) != 1:
        raise CheckpointError(f"an expert reads one channel, the model {len(channels)} ({channels})",
                              path=folder / "dataset.json", field="channel_names")
    labels = dataset.get("labels") or {}
    if any(not isinstance(v, int) for v in labels.values()) or sorted(labels.values()) != list(
            range(len(labels))) or labels.get("background") != 0:
        raise CheckpointError(f"need plain labels 0..N-1 with background 0 (no regions), got {labels}",
                              path=folder / "dataset.json", field="labels")
    scheme, scale = config["normalization_schemes"][0], 1.0
    if scheme == "ZScoreNormalization":
        normalization = Normalization("mr", clip=MR_CLIP)
    elif scheme == "CTNormalization":
        props = (plans.get("foreground_intensity_properties_per_channel") or {}).get("0") or {}
        low, high, sd = (props.get(key) for key in ("percentile_00_5", "percentile_99_5", "std"))
        if not all(isinstance(v, (int, float)) for v in (low, high, sd)) or not high > low:
            raise CheckpointError(f"need the foreground's percentile_00_5 < percentile_99_5 and std, got "
                                  f"{props}", path=folder / "plans.json",
                                  field="foreground_intensity_properties_per_channel.0")
        normalization, scale = Normalization("ct", low=low, high=high), (high - low) / 2 / max(sd, 1e-8)
    else:
        raise CheckpointError(f"normalisation {scheme!r}: only CTNormalization and ZScoreNormalization",
                              path=folder / "plans.json", field=f"configurations.{CONFIGURATION}."
                                                                "normalization_schemes")
    try:
        plan = ExpertPlan(
            task=str(plans.get("dataset_name") or folder.name),
            labels={name: v for name, v in sorted(labels.items(), key=lambda item: item[1]) if v},
            spacing=ours(config["spacing"])[::-1], patch_size=ours(config["patch_size"]),
            kernel_sizes=tuple(ours(k) for k in arch["kernel_sizes"]),
            strides=tuple(ours(s) for s in arch["strides"]), filters=tuple(arch["features_per_stage"]),
            normalization=normalization.to_dict())
    except PlanError as err:
        raise CheckpointError(err.problem, path=folder / "plans.json", field=err.field) from None
    return plan, scale


def nnunet_shapes(arch: dict, classes: int) -> dict[str, tuple]:
    """{name: shape} of PlainConvUNet's tensors (first names; convolutions with bias), network axes."""
    features, kernels, strides = arch["features_per_stage"], arch["kernel_sizes"], arch["strides"]
    stages = len(features)
    shapes: dict[str, tuple] = {}

    def conv(prefix: str, inputs: int, outputs: int, kernel) -> None:
        shapes[f"{prefix}.conv.weight"] = (outputs, inputs, *kernel)
        shapes[f"{prefix}.conv.bias"] = shapes[f"{prefix}.norm.weight"] = (outputs,)
        shapes[f"{prefix}.norm.bias"] = (outputs,)

    inputs = 1
    for s in range(stages):
        conv(f"encoder.stages.{s}.0.convs.0", inputs, features[s], kernels[s])
        conv(f"encoder.stages.{s}.0.convs.1", features[s], features[s], kernels[s])
        inputs = features[s]
    for level in range(stages - 1):
        below, stage = stages - 1 - level, stages - 2 - level
        shapes[f"decoder.transpconvs.{level}.weight"] = (features[below], features[stage],
                                                         *strides[below])
        shapes[f"decoder.transpconvs.{level}.bias"] = (features[stage],)
        conv(f"decoder.stages.{level}.convs.0", 2 * features[stage], features[stage], kernels[stage])
        conv(f"decoder.stages.{level}.convs.1", features[stage], features[stage], kernels[stage])
        shapes[f"decoder.seg_layers.{level}.weight"] = (classes, features[stage], 1, 1, 1)
        shapes[f"decoder.seg_layers.{level}.bias"] = (classes,)
    return shapes


def aliases(shapes: dict[str, tuple], norm_index: int) -> dict[str, tuple]:
    """The second names PlainConvUNet's state dict gives the same tensors: ``all_modules.<i>`` for a
    block's conv and norm, ``decoder.encoder.*`` for the whole encoder."""
    names = {}
    for key, shape in shapes.items():
        same = [key.replace(".conv.", ".all_modules.0.").replace(".norm.", f".all_modules.{norm_index}.")
                ] if ".convs." in key else []
        if key.startswith("encoder."):
            same += [f"decoder.{name}" for name in [key, *same]]
        names.update({name: shape for name in same})
    return names


def key_map(plan: ExpertPlan, model: NnUNetExpert) -> dict[str, str]:
    """nnU-Net name -> our name of every tensor that carries over (not the convolution biases, which
    the norms cancel, nor the lowest segmentation head)."""
    stages = len(plan.strides)
    blocks = ["input_block", *(f"downsamples.{s}" for s in range(stages - 2)), "bottleneck"]
    names = {}

    def block(source: str, target: str) -> None:
        for c in (0, 1):
            names[f"{source}.convs.{c}.conv.weight"] = f"{target}.conv{c + 1}.conv.weight"
            for p in ("weight", "bias"):
                names[f"{source}.convs.{c}.norm.{p}"] = f"{target}.norm{c + 1}.{p}"

    for s, target in enumerate(blocks):
        block(f"encoder.stages.{s}.0", f"network.{target}")
    heads = model.network.deep_supr_num
    for level in range(stages - 1):
        up, stage = f"network.upsamples.{level}", stages - 2 - level
        block(f"decoder.stages.{level}", f"{up}.conv_block")
        head = ("network.output_block.conv.conv" if stage == 0 else
                f"network.deep_supervision_heads.{stage - 1}.conv.conv" if stage <= heads else None)
        for p in ("weight", "bias"):
            names[f"decoder.transpconvs.{level}.{p}"] = f"{up}.transp_conv.conv.{p}"
            names.update({f"decoder.seg_layers.{level}.{p}": f"{head}.{p}"} if head else {})
    return names


def converted(state: dict, names: dict[str, str], backward: list[int], input_scale: float
              ) -> dict[str, torch.Tensor]:
    """Our state dict: kernels permuted from network axes to (k, j, i), the first convolution scaled."""
    ours = {}
    for source, target in names.items():
        tensor = state[source].to(torch.float32)
        if tensor.dim() == 5:
            tensor = tensor.permute(0, 1, *(2 + a for a in backward))
        ours[target] = tensor.contiguous()
    first = "network.input_block.conv1.conv.weight"
    ours[first] = ours[first] * input_scale
    return ours
