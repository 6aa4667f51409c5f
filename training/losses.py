"""Segmentation losses, all restricted to valid pixels: BCE + soft Dice (the default), and the
robust recipe's options BCE + Dice + soft clDice (centreline overlap, Shit et al. 2021) and
BCE + Lovasz hinge (a direct IoU surrogate, Berman et al. 2018). `LOSSES` maps the names
`python -m training train --loss` takes to the functions."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F  # noqa: N812 - PyTorch's own convention

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    n_valid = valid.sum().clamp_min(1.0)
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * valid).sum() / n_valid


def _dice(prob: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, smooth: float) -> torch.Tensor:
    prob = prob * valid
    inter = (prob * target * valid).sum()
    return 1 - (2 * inter + smooth) / (prob.sum() + (target * valid).sum() + smooth)


def masked_bce_dice(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                    smooth: float = 1.0) -> torch.Tensor:
    """Loss over pixels where `valid` is 1; no-data pixels contribute nothing.

    Args:
        logits: (N, H, W) raw model outputs.
        target: (N, H, W) 0/1 road labels.
        valid: (N, H, W) 0/1 weights.
    """
    logits, target, valid = logits.float(), target.float(), valid.float()
    return _bce(logits, target, valid) + _dice(torch.sigmoid(logits), target, valid, smooth)


def prob_bce_dice(prob: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                  smooth: float = 1.0) -> torch.Tensor:
    """The same loss computed from blended probabilities (validation on whole tiles)."""
    logits = torch.logit(prob.float().clamp(1e-6, 1 - 1e-6))
    return masked_bce_dice(logits, target, valid, smooth)


def soft_skeleton(x: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Differentiable skeleton of (N, H, W) soft masks in 0..1 by iterated min/max pooling
    (soft morphological thinning, Shit et al. 2021); `iterations` about the largest half-width."""
    x = x[:, None]

    def erode(t: torch.Tensor) -> torch.Tensor:
        return torch.minimum(-F.max_pool2d(-t, (3, 1), 1, (1, 0)), -F.max_pool2d(-t, (1, 3), 1, (0, 1)))

    def open_(t: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(erode(t), 3, 1, 1)

    skel = F.relu(x - open_(x))
    for _ in range(iterations):
        x = erode(x)
        delta = F.relu(x - open_(x))
        skel = skel + F.relu(delta - skel * delta)
    return skel[:, 0]


def soft_cldice(prob: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, iterations: int = 10,
                smooth: float = 1.0) -> torch.Tensor:
    """1 - clDice: how much of each skeleton lies inside the other mask, over valid pixels."""
    prob, target = prob * valid, target * valid  # no-data is background to the morphology too
    skel_pred = soft_skeleton(prob, iterations)
    skel_true = soft_skeleton(target, iterations)
    precision = ((skel_pred * target).sum() + smooth) / (skel_pred.sum() + smooth)
    sensitivity = ((skel_true * prob).sum() + smooth) / (skel_true.sum() + smooth)
    return 1 - 2 * precision * sensitivity / (precision + sensitivity)


def masked_bce_cldice(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                      alpha: float = 0.5, smooth: float = 1.0) -> torch.Tensor:
    """BCE + (1 - alpha) soft Dice + alpha soft clDice over valid pixels: rewards connected
    centrelines (topology, APLS) over exact road widths."""
    logits, target, valid = logits.float(), target.float(), valid.float()
    prob = torch.sigmoid(logits)
    return (_bce(logits, target, valid) + (1 - alpha) * _dice(prob, target, valid, smooth)
            + alpha * soft_cldice(prob, target, valid, smooth=smooth))


def lovasz_hinge(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Lovasz hinge over the valid pixels of the whole batch (Berman et al. 2018), a convex
    surrogate of 1 - IoU of the road class."""
    keep = valid.reshape(-1) > 0.5
    scores, labels = logits.reshape(-1)[keep], target.reshape(-1)[keep]
    if labels.numel() == 0:
        return logits.sum() * 0.0
    signs = 2 * labels - 1
    errors = 1 - scores * signs
    errors_sorted, order = torch.sort(errors, descending=True)
    gt_sorted = labels[order]
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return torch.dot(F.relu(errors_sorted), jaccard)


def masked_bce_lovasz(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE + Lovasz hinge over valid pixels."""
    logits, target, valid = logits.float(), target.float(), valid.float()
    return _bce(logits, target, valid) + lovasz_hinge(logits, target, valid)


LOSSES: dict[str, Loss] = {"bce_dice": masked_bce_dice, "bce_cldice": masked_bce_cldice,
                           "bce_lovasz": masked_bce_lovasz}
