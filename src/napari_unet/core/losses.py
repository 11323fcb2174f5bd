"""The training loss (weighted cross-entropy plus soft Dice over annotated pixels) and validation scores.

Cross-entropy weighted by the U-Net weight map learns the thin separations between touching objects; soft
Dice keeps small foreground classes (the boundary class covers a few percent of the pixels) from being
drowned by the background. Both look at annotated pixels only: the weights are 0 elsewhere and the Dice sums
are masked, so an unannotated pixel cannot change a gradient.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DICE_SMOOTH = 1.0


def weighted_cross_entropy(logits: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged with the per-pixel weights (a weighted mean, so its scale is that of plain CE)."""
    per_pixel = F.cross_entropy(logits.float(), classes.long(), reduction="none")
    return (per_pixel * weights).sum() / weights.sum().clamp_min(1e-6)


def soft_dice_loss(logits: torch.Tensor, classes: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice of the foreground classes (all but class 0) over annotated pixels."""
    n_classes = logits.shape[1]
    probabilities = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(classes.long(), n_classes).movedim(-1, 1).float()
    mask = annotated.unsqueeze(1).float()
    dims = (0, *range(2, logits.ndim))
    intersection = (probabilities * one_hot * mask).sum(dims)
    total = ((probabilities + one_hot) * mask).sum(dims)
    dice = (2 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH)
    return 1 - dice[1:].mean() if n_classes > 1 else 1 - dice.mean()


def segmentation_loss(
    logits: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor, annotated: torch.Tensor
) -> torch.Tensor:
    """The training objective: weighted cross-entropy + soft Dice."""
    return weighted_cross_entropy(logits, classes, weights) + soft_dice_loss(logits, classes, annotated)


def foreground_dice(predicted: np.ndarray, classes: np.ndarray, annotated: np.ndarray) -> float:
    """Hard Dice over annotated pixels: of the foreground (any class but 0) for instance models, or the mean
    over the foreground classes present in truth or prediction for semantic models (``predicted`` and
    ``classes`` are class ids). 1.0 when both are empty."""
    pred, truth = predicted[annotated], classes[annotated]
    present = [c for c in np.union1d(np.unique(pred), np.unique(truth)) if c != 0]
    if not present:
        return 1.0
    scores = []
    for c in present:
        p, t = pred == c, truth == c
        scores.append(2.0 * np.count_nonzero(p & t) / (np.count_nonzero(p) + np.count_nonzero(t)))
    return float(np.mean(scores))
