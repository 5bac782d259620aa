"""Synthetic third-party models for the importer tests (test_importers.py, test_bundle_tools.py).

SAM-Med3D: :data:`TINY`, a small :class:`SamMed3DConfig`, and :func:`write_sam_med3d_checkpoint`, a
checkpoint as SAM-Med3D's train.py saves it. nnU-Net v2: :class:`ReferenceUNet`, PlainConvUNet's forward
with its module names, written by hand (dynamic_network_architectures is not installed: it pulls timm
and torchvision), :data:`ARCH` its arch_kwargs and :func:`write_model_folder` a trained-model folder.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ka2er_core.modeling.sam_med3d import SamMed3D, SamMed3DConfig

TINY = SamMed3DConfig(crop_size=32, patch_size=8, encoder_dim=24, encoder_depth=2, encoder_heads=2,
                      window_size=6, global_blocks=(1,), dim=24, decoder_heads=2, decoder_mlp_dim=32,
                      iou_hidden=16)


# ---- SAM-Med3D ----

def write_sam_med3d_checkpoint(path: Path, model: SamMed3D) -> Path:
    """``model``'s weights as SAM-Med3D's train.py saves them: ``model_state_dict`` next to the epoch,
    the training arguments and logged numbers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 200, "model_state_dict": model.state_dict(),
                "args": argparse.Namespace(model_type="vit_b_ori", img_size=model.config.crop_size,
                                           step_size=[120, 180]),
                "losses": [np.float64(0.31)], "dices": [np.float32(0.8)], "used_datas": ["ct_AMOS"]},
               path)
    return path


# ---- nnU-Net ----

class ConvBlock(nn.Module):
    """nnU-Net's ConvDropoutNormReLU: conv, norm, nonlin, all also in ``all_modules``."""

    def __init__(self, inputs, outputs, kernel, stride):
        super().__init__()
        self.conv = nn.Conv3d(inputs, outputs, kernel, stride, padding=[(k - 1) // 2 for k in kernel])
        self.norm = nn.InstanceNorm3d(outputs, eps=1e-5, affine=True)
        self.nonlin = nn.LeakyReLU(inplace=True)
        self.all_modules = nn.Sequential(self.conv, self.norm, self.nonlin)

    def forward(self, x):
        return self.all_modules(x)


class Stacked(nn.Module):
    def __init__(self, inputs, outputs, kernel, stride):
        super().__init__()
        self.convs = nn.Sequential(ConvBlock(inputs, outputs, kernel, stride),
                                   ConvBlock(outputs, outputs, kernel, [1, 1, 1]))

    def forward(self, x):
        return self.convs(x)


class ReferenceUNet(nn.Module):
    """PlainConvUNet's forward with its module names (``encoder.stages``, ``decoder.transpconvs`` ...)."""

    def __init__(self, arch, classes):
        super().__init__()
        f, k, s = arch["features_per_stage"], arch["kernel_sizes"], arch["strides"]
        self.encoder = nn.Module()
        self.encoder.stages = nn.Sequential(*(nn.Sequential(Stacked(f[i - 1] if i else 1, f[i], k[i], s[i]))
                                              for i in range(len(f))))
        self.decoder = nn.Module()
        self.decoder.encoder = self.encoder
        levels = range(len(f) - 1)
        self.decoder.transpconvs = nn.ModuleList(
            nn.ConvTranspose3d(f[-1 - d], f[-2 - d], s[-1 - d], s[-1 - d]) for d in levels)
        self.decoder.stages = nn.ModuleList(Stacked(2 * f[-2 - d], f[-2 - d], k[-2 - d], [1, 1, 1])
                                            for d in levels)
        self.decoder.seg_layers = nn.ModuleList(nn.Conv3d(f[-2 - d], classes, 1) for d in levels)

    def forward(self, x):
        skips = []
        for stage in self.encoder.stages:
            x = stage(x)
            skips.append(x)
        for d, (up, stage) in enumerate(zip(self.decoder.transpconvs, self.decoder.stages)):
            x = stage(torch.cat([up(x), skips[-2 - d]], dim=1))
        return self.decoder.seg_layers[-1](x)


ARCH = {  # network axes; the first stage's kernel differs, so the decoder kernels matter
    "n_stages": 4, "features_per_stage": [4, 8, 16, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2], "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
FORWARD, BACKWARD = [2, 0, 1], [1, 2, 0]  # network axis a is (k, j, i) axis FORWARD[a]
PATCH = [16, 32, 24]
INTENSITY = {"max": 900.0, "mean": 100.0, "median": 90.0, "min": -900.0, "percentile_00_5": -200.0,
             "percentile_99_5": 400.0, "std": 150.0}


def write_model_folder(folder: Path, network: nn.Module, scheme: str, legacy: bool = False) -> None:
    """plans.json, dataset.json and fold_all/checkpoint_final.pth as nnU-Net v2 writes them."""
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": 2, "patch_size": PATCH, "median_image_size_in_voxels": [40, 90, 80],
              "spacing": [3.0, 0.8, 0.9], "normalization_schemes": [scheme], "use_mask_for_norm": [False],
              "resampling_fn_data": "resample_data_or_seg_to_shape", "batch_dice": False,
              "architecture": {"network_class_name":
                               "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                               "arch_kwargs": ARCH,
                               "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    if legacy:  # older nnU-Net v2 plans: the network's sizes listed in the configuration itself
        del config["architecture"]
        config.update({"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 4,
                       "unet_max_num_features": 16, "n_conv_per_stage_encoder": [2, 2, 2, 2],
                       "n_conv_per_stage_decoder": [2, 2, 2], "num_pool_per_axis": [2, 3, 3],
                       "pool_op_kernel_sizes": ARCH["strides"], "conv_kernel_sizes": ARCH["kernel_sizes"]})
    plans = {"dataset_name": "Dataset042_Toy", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": [3.0, 0.8, 0.9],
             "original_median_shape_after_transp": [40, 90, 80], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": FORWARD, "transpose_backward": BACKWARD,
             "configurations": {"3d_fullres": config}, "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": INTENSITY}}
    dataset = {"channel_names": {"0": "CT" if scheme == "CTNormalization" else "T2"},
               "labels": {"background": 0, "liver": 1, "tumour": 2}, "numTraining": 12,
               "file_ending": ".nii.gz"}
    (folder / "fold_all").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    torch.save({"network_weights": network.state_dict(), "optimizer_state": {}, "grad_scaler_state": None,
                "logging": {"mean_fg_dice": [np.float64(0.7)], "ema_fg_dice": [np.float64(0.7)]},
                "_best_ema": np.float64(0.7), "current_epoch": 1000,
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": "all",
                              "dataset_json": dataset, "device": torch.device("cpu")},
                "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_all" / "checkpoint_final.pth")


def randomised(network: nn.Module) -> nn.Module:
    """Non-zero biases everywhere (the ones norms cancel and the transposed convolutions' ones)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
            elif name.endswith("bias"):
                p.normal_(0, 0.3)
    return network.eval()


def to_ours(x):
    return x.permute(0, 1, *(2 + a for a in BACKWARD))


def to_network(x):
    return x.permute(0, 1, *(2 + a for a in FORWARD))
