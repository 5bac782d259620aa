"""A SAM-Med3D checkpoint (``sam_med3d_turbo.pth``) as a ka2er ``student`` bundle.

The file is a training checkpoint (weights under ``model_state_dict``, next to optimizer state and the
training arguments) or a bare state dict; every key and shape is checked against
:class:`~ka2er_core.modeling.sam_med3d.SamMed3D` before anything is written. The bundle's single
member "general" records SAM-Med3D's preprocessing in our terms:

- spacing 1.5 mm isotropic, 128^3 crops; base and maximum spacing 1.5 mm, so sessions do not zoom out,
  as SAM-Med3D does not (a larger ``max_spacing`` in ``bundle.json`` lets them, at spacings the model
  never saw);
- normalisation: SAM-Med3D z-scores each crop with the mean and sd of its voxels above 0 (CT clamped
  to [-1000, 1000] HU in training) and does not clip. The nearest of ours is "mr": a z-score with the
  mean and sd of the image's voxels above its 20th percentile, clipped at 100 sd (in effect never).
  Close for MR with a zero background; for CT our foreground also holds fat and lung.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..bundle import Segmenter, save_bundle
from ..io.checksum import sha256
from ..modeling.normalization import Normalization
from ..modeling.sam_med3d import SamMed3D, SamMed3DConfig
from .checkpoint import CheckpointError, check_state, describe_loaded, read_checkpoint

SPACING = 1.5
NORMALIZATION = Normalization("mr", clip=100.0)
MEMBER = "general"


def import_sam_med3d(checkpoint: Path, out: Path, progress: Callable[[str], Any] = print, *,
                     config: Optional[SamMed3DConfig] = None) -> Path:
    """Write a ``student`` bundle at ``out`` from a SAM-Med3D checkpoint; returns ``out``. ``config``:
    the model's sizes; by default read off the weights' shapes (:func:`config_of`: the turbo
    checkpoint's ``vit_b_ori`` on 128^3 crops, or a narrower or shallower model with its key names)."""
    checkpoint, out = Path(checkpoint), Path(out)
    progress(f"reading {checkpoint}")
    state = state_dict_of(read_checkpoint(checkpoint), checkpoint)
    config = config or config_of(state)
    with torch.device("meta"):
        model = SamMed3D(config)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    what = ("SAM-Med3D (vit_b_ori, 128^3)" if config == SamMed3DConfig() else
            f"SAM-Med3D ({config.encoder_dim} wide, {config.encoder_depth} blocks, {config.crop_size}^3)")
    check_state(state, expected, checkpoint, what)
    model.load_state_dict({k: v.to(torch.float32).contiguous() for k, v in state.items()}, assign=True)
    progress(f"writing {out}")
    training = {"imported_from": "SAM-Med3D (uni-medical/SAM-Med3D)", "checkpoint": checkpoint.name,
                "checkpoint_sha256": sha256(checkpoint)}
    member = Segmenter(MEMBER, model.eval(), NORMALIZATION, SPACING, SPACING)
    return save_bundle(out, member, kind="student", training=training)


def config_of(state: Mapping[str, Any]) -> SamMed3DConfig:
    """SAM-Med3D's sizes read off a state dict's shapes; the default (turbo's) where a key they are
    read from is missing or misshapen, so that :func:`check_state` then names it. The mask decoder's
    attention heads leave no trace in the shapes: SAM-Med3D's 8, or fewer where 8 do not divide its
    attention width (dim / 2)."""
    default = SamMed3DConfig()
    try:
        def shape(name):
            return tuple(state[name].shape)

        encoder_dim, in_channels, patch = shape("image_encoder.patch_embed.proj.weight")[:3]
        tokens = shape("image_encoder.pos_embed")[1]
        depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks."))
        sides = [(shape(f"image_encoder.blocks.{i}.attn.rel_pos_d")[0] + 1) // 2 for i in range(depth)]
        dim = shape("image_encoder.neck.0.weight")[0]
        decoder = "mask_decoder.transformer.layers."
        values = dict(
            crop_size=tokens * patch, patch_size=patch, in_channels=in_channels,
            encoder_dim=encoder_dim, encoder_depth=depth,
            encoder_heads=encoder_dim // shape("image_encoder.blocks.0.attn.rel_pos_d")[1],
            mlp_ratio=shape("image_encoder.blocks.0.mlp.lin1.weight")[0] / encoder_dim,
            window_size=max(sides) if max(sides) > tokens else 0,  # 0: every block global
            global_blocks=tuple(i for i, side in enumerate(sides) if side == tokens),
            dim=dim, mask_channels=shape("prompt_encoder.mask_downscaling.3.weight")[0],
            decoder_depth=1 + max(int(k[len(decoder):].split(".")[0]) for k in state
                                  if k.startswith(decoder)),
            decoder_heads=max(h for h in range(1, 9) if (dim // 2) % h == 0),
            decoder_mlp_dim=shape(decoder + "0.mlp.lin1.weight")[0],
            mask_tokens=shape("mask_decoder.mask_tokens.weight")[0],
            iou_hidden=shape("mask_decoder.iou_prediction_head.layers.0.weight")[0])
        config = SamMed3DConfig(**values)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, ZeroDivisionError):
        return default
    return default if config == default else config


def state_dict_of(loaded: Any, path: Path) -> Mapping[str, Any]:
    """The weights in a loaded checkpoint: its ``model_state_dict``, or the checkpoint itself."""
    state = loaded.get("model_state_dict", loaded) if isinstance(loaded, Mapping) else loaded
    if not isinstance(state, Mapping) or not any(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError("expected SAM-Med3D weights: a state dict (names -> tensors), or a dict "
                              f"holding one as 'model_state_dict'; found {describe_loaded(loaded)}",
                              path=path)
    return state
