"""Dice + binary cross-entropy on mask logits, per item, and hard Dice."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def per_item_dice_bce(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss plus mean BCE of each item: (B, 1, D, H, W) -> (B,)."""
    prob = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    intersection = (prob * target).sum(dims)
    dice = (2 * intersection + eps) / (prob.sum(dims) + target.sum(dims) + eps)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dims)
    return 1 - dice + bce


def weighted_mean(values: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of (B,) ``values`` each times its weight (B,) (all 1 when None)."""
    return values.mean() if weights is None else (values * weights).mean()


def dice_score(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per item of (B, 1, D, H, W) boolean tensors -> (B,)."""
    dims = tuple(range(1, prediction.ndim))
    intersection = (prediction & target).sum(dims).float()
    total = prediction.sum(dims) + target.sum(dims)
    return torch.where(total > 0, 2 * intersection / total.clamp(min=1), torch.ones_like(intersection))
