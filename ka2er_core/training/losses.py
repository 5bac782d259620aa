"""Dice + binary cross-entropy on mask logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """logits, target (B, 1, D, H, W) -> scalar: mean soft Dice loss plus mean BCE."""
    prob = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    intersection = (prob * target).sum(dims)
    dice = (2 * intersection + eps) / (prob.sum(dims) + target.sum(dims) + eps)
    return (1 - dice).mean() + F.binary_cross_entropy_with_logits(logits, target)


def dice_score(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per item of (B, 1, D, H, W) boolean tensors -> (B,)."""
    dims = tuple(range(1, prediction.ndim))
    intersection = (prediction & target).sum(dims).float()
    total = prediction.sum(dims) + target.sum(dims)
    return torch.where(total > 0, 2 * intersection / total.clamp(min=1), torch.ones_like(intersection))
