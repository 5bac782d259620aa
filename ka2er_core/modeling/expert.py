"""Task experts: one nnU-Net-style U-Net (MONAI ``DynUNet``) per task, planned from its dataset.

An expert segments its task without prompts and exposes its encoder features per stage, which the
amalgamation layer taps. Arrays and tensors are in (k, j, i) order; the expert's model space is the
axis-aligned RAS grid at ``plan.spacing`` (``geometry.canonical_grid``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import numpy as np
import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock
from monai.networks.nets import DynUNet
from torch import nn

from ..errors import Ka2erError
from .normalization import Normalization


class PlanError(Ka2erError):
    """An expert plan has a missing, unknown or inconsistent field."""


def _triple(value, name: str, cast) -> tuple:
    try:
        triple = tuple(cast(v) for v in value)
    except (TypeError, ValueError):
        raise PlanError(f"expected 3 numbers, got {value!r}", field=name) from None
    if len(triple) != 3:
        raise PlanError(f"expected 3 numbers, got {value!r}", field=name)
    return triple


@dataclass(frozen=True)
class ExpertPlan:
    """What an expert was planned with; stored in its bundle.

    ``labels`` {name: label value}, background (0) left out; class ``c`` of the network (1..N) is the
    ``c``-th label in this order. ``spacing`` mm along (i, j, k) of the canonical grid (R, A, S);
    ``patch_size`` (k, j, i) voxels; ``kernel_sizes``/``strides`` one (k, j, i) triple per stage (the
    input block, the downsampling blocks, the bottleneck), ``strides[0] == (1, 1, 1)``; ``filters``
    channels per stage; ``normalization`` a :class:`Normalization` as a dict.
    """

    task: str
    labels: dict[str, int]
    spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    kernel_sizes: tuple[tuple[int, int, int], ...]
    strides: tuple[tuple[int, int, int], ...]
    filters: tuple[int, ...]
    normalization: dict

    def __post_init__(self):
        if not isinstance(self.task, str) or not self.task:
            raise PlanError(f"expected a non-empty name, got {self.task!r}", field="task")
        self._check_labels()
        spacing = _triple(self.spacing, "spacing", float)
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise PlanError(f"spacings must be finite and > 0 mm, got {spacing}", field="spacing")
        patch = _triple(self.patch_size, "patch_size", int)
        kernels = tuple(_triple(k, "kernel_sizes", int) for k in self.kernel_sizes)
        strides = tuple(_triple(s, "strides", int) for s in self.strides)
        filters = tuple(int(f) for f in self.filters)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "patch_size", patch)
        object.__setattr__(self, "kernel_sizes", kernels)
        object.__setattr__(self, "strides", strides)
        object.__setattr__(self, "filters", filters)
        if len(strides) < 3:
            raise PlanError(f"need at least 3 stages (DynUNet), got {len(strides)}", field="strides")
        if len(kernels) != len(strides) or len(filters) != len(strides):
            raise PlanError(f"kernel_sizes ({len(kernels)}), strides ({len(strides)}) and filters "
                            f"({len(filters)}) need one entry per stage", field="kernel_sizes")
        if strides[0] != (1, 1, 1) or any(s not in (1, 2) for stride in strides for s in stride):
            raise PlanError(f"strides must be 1 or 2 and the first (1, 1, 1), got {strides}",
                            field="strides")
        if any(k < 1 or k % 2 == 0 for kernel in kernels for k in kernel):
            raise PlanError(f"kernel sizes must be odd and positive, got {kernels}", field="kernel_sizes")
        if any(f < 1 for f in filters):
            raise PlanError(f"filters must be positive, got {filters}", field="filters")
        total = self.stage_factors[-1]
        if any(p < 1 or p % t for p, t in zip(patch, total)):
            raise PlanError(f"each axis of {patch} must be a positive multiple of the total stride "
                            f"{total} (k, j, i)", field="patch_size")
        try:
            Normalization(**self.normalization)
        except (TypeError, ValueError) as err:
            raise PlanError(str(err), field="normalization") from None

    def _check_labels(self) -> None:
        if not isinstance(self.labels, dict) or not self.labels:
            raise PlanError(f"expected {{name: value}} with at least one label, got {self.labels!r}",
                            field="labels")
        values = list(self.labels.values())
        if (any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 255 for v in values)
                or len(set(values)) != len(values)):
            raise PlanError(f"label values must be distinct integers in 1..255, got {self.labels}",
                            field="labels")

    @property
    def num_classes(self) -> int:
        """Network output channels: background plus one per label."""
        return len(self.labels) + 1

    @property
    def stage_factors(self) -> list[tuple[int, int, int]]:
        """Cumulative downsampling (k, j, i) of each stage's feature maps."""
        factors, current = [], np.ones(3, dtype=int)
        for stride in self.strides:
            current = current * np.asarray(stride)
            factors.append(tuple(int(f) for f in current))
        return factors

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: tuples become lists."""
        values = asdict(self)
        return {k: [list(v) for v in values[k]] if k in ("kernel_sizes", "strides")
                else list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ExpertPlan":
        """Inverse of :meth:`to_dict`; raises :class:`PlanError` naming a missing, unknown or bad field."""
        if not isinstance(values, dict):
            raise PlanError(f"expected a JSON object, got {type(values).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise PlanError(f"unknown fields {unknown}", field=unknown[0])
        missing = [name for name in names if name not in values]
        if missing:
            raise PlanError("required field is missing", field=missing[0])
        for name in ("kernel_sizes", "strides", "filters"):
            if not isinstance(values[name], (list, tuple)):
                raise PlanError(f"expected a list, got {values[name]!r}", field=name)
        return cls(**values)


class TaskExpert(nn.Module):
    """MONAI ``DynUNet`` built from an :class:`ExpertPlan`: instance norm, leaky ReLU, deep supervision.

    ``forward(image)``: image (B, 1, D, H, W) normalised, on the plan grid (D, H, W = k, j, i), each
    axis a multiple of the total stride. In eval mode it returns logits (B, num_classes, D, H, W). In
    training mode it returns DynUNet's deep-supervision stack (B, supervision_outputs, num_classes, D,
    H, W): index 0 is the full-resolution output, then the heads of the next
    ``supervision_outputs - 1`` decoder levels, finest first, each upsampled (nearest) to D, H, W.
    """

    def __init__(self, plan: ExpertPlan):
        super().__init__()
        self.plan = plan
        stages = len(plan.strides)
        # nnU-Net v2 supervises every decoder resolution but the lowest; DynUNet needs 1 <= heads.
        self.network = DynUNet(
            spatial_dims=3, in_channels=1, out_channels=plan.num_classes,
            kernel_size=plan.kernel_sizes, strides=plan.strides,
            upsample_kernel_size=plan.strides[1:], filters=plan.filters,
            norm_name=("INSTANCE", {"affine": True}),
            act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
            deep_supervision=True, deep_supr_num=max(1, stages - 3))
        # DynUNet registers each block twice (as ``input_block``... and inside ``skip_layers``);
        # safetensors refuses shared tensors, so state dicts keep the first name only.
        aliases = shared_aliases(self.network)
        self.network.register_state_dict_post_hook(partial(drop_aliases, aliases))
        self.network.register_load_state_dict_pre_hook(partial(restore_aliases, aliases))

    @property
    def supervision_outputs(self) -> int:
        """Outputs stacked in training mode: the full-resolution one plus the deep-supervision heads."""
        return 1 + self.network.deep_supr_num

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(image)

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features per stage, without running the decoder.

        image (B, 1, D, H, W) -> one tensor per stage (input block, downsampling blocks,
        bottleneck): stage s is (B, filters[s], D/f_k, H/f_j, W/f_i) with f = stage_factors[s].
        """
        network = self.network
        features = [network.input_block(image)]
        for block in network.downsamples:
            features.append(block(features[-1]))
        features.append(network.bottleneck(features[-1]))
        return features



class NnUNetExpert(TaskExpert):
    """A :class:`TaskExpert` with nnU-Net's decoder: transposed convolutions with a bias, and every
    decoder level convolved with the kernel of the stage it outputs. Same interface and features.
    (:mod:`ka2er_core.importers.nnunet` fills it from an nnU-Net v2 PlainConvUNet.)"""

    variant = "nnunet"

    def __init__(self, plan: ExpertPlan):
        super().__init__(plan)
        network = self.network
        for level, up in enumerate(network.upsamples):  # level 0 is the lowest resolution
            stage = len(plan.strides) - 2 - level
            up.transp_conv.conv.bias = nn.Parameter(torch.zeros(plan.filters[stage]))
            if plan.kernel_sizes[stage] != plan.kernel_sizes[stage + 1]:
                up.conv_block = UnetBasicBlock(3, 2 * plan.filters[stage], plan.filters[stage],
                                               plan.kernel_sizes[stage], 1, network.norm_name,
                                               network.act_name)
        aliases = shared_aliases(network)  # the new tensors are registered twice too
        network.register_state_dict_post_hook(partial(drop_aliases, aliases))
        network.register_load_state_dict_pre_hook(partial(restore_aliases, aliases))

def shared_aliases(module: nn.Module) -> dict[str, str]:
    """{later name: first name} of the state-dict entries of ``module`` that are the same tensor."""
    first: dict[int, str] = {}
    aliases = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        original = first.setdefault(id(tensor), name)
        if original != name:
            aliases[name] = original
    return aliases


def drop_aliases(aliases: dict[str, str], module, state_dict, prefix, local_metadata) -> None:
    for alias in aliases:
        state_dict.pop(prefix + alias, None)


def restore_aliases(aliases: dict[str, str], module, state_dict, prefix, *args) -> None:
    for alias, name in aliases.items():
        if prefix + name in state_dict:
            state_dict[prefix + alias] = state_dict[prefix + name]
