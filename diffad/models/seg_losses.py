"""Losses of the segmentation head: focal loss (Lin et al., 2017) plus soft Dice (Milletari et al., 2016).

Defect pixels are a few percent of a batch and half the samples have none. Focal loss down-weights
the many easy good pixels; Dice is computed over the whole batch (not per image), so it stays defined
when a batch holds good images only and rewards overlap on the defects that are there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Mean over pixels of -(1 - p_t)^gamma log(p_t); with `alpha`, positives weigh alpha, negatives 1 - alpha.

    gamma = 0 and alpha = None is plain binary cross-entropy.
    """
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = (1 - p_t).pow(gamma) * bce
    if alpha is not None:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - (2 |P∩T| + s) / (|P| + |T| + s) over the whole batch, with soft P = sigmoid(logits)."""
    p = torch.sigmoid(logits.float()).flatten()
    t = target.float().flatten()
    return 1.0 - (2.0 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    focal_weight: float = 1.0,
    dice_weight: float = 1.0,
    gamma: float = 2.0,
) -> dict[str, torch.Tensor]:
    """{"loss": weighted sum, "focal": ..., "dice": ...} for logits and 0/1 masks of shape (N, 1, H, W)."""
    focal = focal_loss(logits, target, gamma=gamma)
    dice = dice_loss(logits, target)
    return {"loss": focal_weight * focal + dice_weight * dice, "focal": focal, "dice": dice}
