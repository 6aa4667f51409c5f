"""BCE + soft Dice, both restricted to valid pixels."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def masked_bce_dice(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                    smooth: float = 1.0) -> torch.Tensor:
    """Loss over pixels where `valid` is 1; no-data pixels contribute nothing.

    Args:
        logits: (N, H, W) raw model outputs.
        target: (N, H, W) 0/1 road labels.
        valid: (N, H, W) 0/1 weights.
    """
    logits, target, valid = logits.float(), target.float(), valid.float()
    n_valid = valid.sum().clamp_min(1.0)
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * valid).sum() / n_valid
    prob = torch.sigmoid(logits) * valid
    inter = (prob * target * valid).sum()
    dice = 1 - (2 * inter + smooth) / (prob.sum() + (target * valid).sum() + smooth)
    return bce + dice


def prob_bce_dice(prob: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                  smooth: float = 1.0) -> torch.Tensor:
    """The same loss computed from blended probabilities (validation on whole tiles)."""
    logits = torch.logit(prob.float().clamp(1e-6, 1 - 1e-6))
    return masked_bce_dice(logits, target, valid, smooth)
