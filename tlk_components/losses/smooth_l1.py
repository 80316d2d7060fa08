# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Masked smooth-L1 (Huber) loss for box-delta regression, with a stated normalisation.

Formula, per element with error ``e = pred - target`` and weight ``w`` (the regression mask: 1 on positive
anchors, 0 elsewhere)::

    huber(e) = 0.5 * e**2 / beta        if |e| < beta       (smooth-L1, torch ``smooth_l1_loss``)
             = |e| - 0.5 * beta         otherwise
    loss     = scale * sum(w * huber(e)) / normaliser

``normalization`` chooses the normaliser: ``"positives"`` (default) the number of anchors with a non-zero
weight (clamped at 1): every positive anchor counts once, whatever the number of negatives (RetinaNet);
``"weights"`` the sum of the weights; ``"elements"`` the number of all elements, masked ones included — what
jarvis-md's ``sl1`` does through Keras' ``SUM_OVER_BATCH_SIZE`` (the loss then shrinks as the anchor count
grows); ``"none"`` the plain sum.

Note the two Huber conventions: Keras/jarvis ``Huber(delta)`` is ``0.5*e**2`` / ``delta*(|e| - 0.5*delta)``,
which equals ``beta * smooth_l1`` for ``beta = delta``; with the default ``beta = 1`` both are identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tlk_components.utils.validation import check_in_range, look_up_option

__all__ = ["NORMALIZATIONS", "MaskedSmoothL1Loss", "normalise"]

NORMALIZATIONS = ("positives", "weights", "elements", "none")


def normalise(total: torch.Tensor, weights: torch.Tensor, normalization: str, positives: torch.Tensor) -> torch.Tensor:
    """Divide a summed loss by the normaliser named by ``normalization`` (see the module docstring)."""
    if normalization == "positives":
        return total / positives.clamp(min=1.0)
    if normalization == "weights":
        return total / weights.sum().clamp(min=1e-6)
    if normalization == "elements":
        return total / max(weights.numel(), 1)
    return total


class MaskedSmoothL1Loss(torch.nn.Module):
    """Smooth-L1 / Huber loss on masked elements (box regression on positive anchors only).

    Args:
        beta: quadratic-to-linear switch point, > 0. Default 1/9 (MONAI RetinaNetDetector, Detectron): box deltas
            of a nearly converged detector are ~0.1, where ``beta = 1`` would leave only the weak quadratic part.
            jarvis-md uses 1.0.
        scale: multiplier of the loss, >= 0. Default 1.
        normalization: ``"positives"`` (default), ``"weights"``, ``"elements"`` (jarvis) or ``"none"``.

    Shape:
        pred, target, weights: ``[B, N, 4]`` (any equal shapes; ``weights`` broadcastable). Returns a scalar.

    Raises:
        ConfigError: beta <= 0, scale < 0 or an unknown normalization.

    Example:
        >>> loss = MaskedSmoothL1Loss(beta=1.0)
        >>> loss(torch.ones(1, 2, 4), torch.zeros(1, 2, 4), torch.tensor([[[1.0] * 4, [0.0] * 4]]))
        tensor(2.)
    """

    def __init__(self, beta: float = 1.0 / 9, scale: float = 1.0, normalization: str = "positives") -> None:
        super().__init__()
        self.beta = check_in_range("beta", beta, 0.0, None, low_inclusive=False)
        self.scale = check_in_range("scale", scale, 0.0, None)
        self.normalization = look_up_option("normalization", normalization, NORMALIZATIONS)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        w = torch.ones_like(pred) if weights is None else weights.to(pred.dtype).expand_as(pred)
        per = F.smooth_l1_loss(pred.float(), target.float(), reduction="none", beta=self.beta)
        total = (per * w).sum()
        positives = (w.reshape(-1, w.shape[-1]) > 0).any(dim=-1).sum().to(total.dtype)
        return self.scale * normalise(total, w, self.normalization, positives)
