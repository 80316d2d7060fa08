# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Masked sigmoid focal loss, and the RetinaNet box-localization loss that combines it with smooth-L1.

Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017), per element with logit ``x``,
target ``y`` in {0, 1}, ``p = sigmoid(x)`` and weight ``w`` (the classification mask: 1 for positive and
negative anchors, 0 for the ignored IoU band)::

    ce   = -y log p - (1 - y) log(1 - p)                      (BCE with logits)
    mod  = (1 - p)**gamma  if y = 1  else  p**gamma
    a    = alpha           if y = 1  else  a_neg
    loss = scale * sum(w * weights * a * mod * ce) / normaliser

The element-wise term is MONAI's ``sigmoid_focal_loss`` (``alpha=None``) times our own alpha factor and mask.
``alpha_mode="retinanet"`` (default) uses ``a_neg = 1 - alpha`` (RetinaNet, MONAI ``FocalLoss``);
``alpha_mode="jarvis"`` uses ``a_neg = 1`` — what jarvis-md's ``focal_sigmoid_ce`` computes through
``weighted_cross_entropy_with_logits(pos_weight=alpha)``. ``alpha=None`` gives ``a = 1`` for all.

Normalisation (stated, ``normalization``): ``"positives"`` (default) divides by the number of positive
elements (``y * w``, clamped at 1), RetinaNet's rule, so the loss does not shrink with the ~10^4 easy negatives;
``"weights"`` by the sum of the mask; ``"elements"`` by the count of all elements including masked ones — jarvis-md
0.0.1a17 (``reduce_mean``; the tutorial's text shows ``reduce_sum``, i.e. ``"none"``); ``"none"`` the sum.
With ``gamma=0``, ``alpha=None`` and ``normalization="elements"`` the loss equals ``BCEWithLogitsLoss`` (a test).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.losses.focal_loss import sigmoid_focal_loss

from tlk_components.boxes.targets import maps_to_flat
from tlk_components.losses.smooth_l1 import NORMALIZATIONS, MaskedSmoothL1Loss, normalise
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, look_up_option

__all__ = ["BoxLocalizationLoss", "MaskedFocalLoss"]


class MaskedFocalLoss(torch.nn.Module):
    """Sigmoid focal cross-entropy with an element mask and a stated normalisation.

    Args:
        alpha: weight of positive elements in [0, 1], or None for no alpha weighting. Default 0.25.
        gamma: focusing exponent, >= 0 (0 = weighted BCE). Default 2.0.
        scale: multiplier of the loss, >= 0. Default 1.
        alpha_mode: ``"retinanet"`` (negatives weighted ``1 - alpha``) or ``"jarvis"`` (negatives weighted 1).
        normalization: ``"positives"`` (default), ``"weights"``, ``"elements"`` or ``"none"`` (module docstring).

    Shape:
        logits, target: ``[B, N, K]`` (any equal shapes); weights broadcastable to them. Returns a scalar.

    Raises:
        ConfigError: a value out of range or an unknown option (with the closest valid spelling).

    Example:
        >>> loss = MaskedFocalLoss(gamma=0.0, alpha=None, normalization="elements")
        >>> x, y = torch.zeros(1, 4, 1), torch.tensor([[[1.0], [0.0], [0.0], [1.0]]])
        >>> round(float(loss(x, y)), 4)  # log(2)
        0.6931
    """

    def __init__(
        self,
        alpha: float | None = 0.25,
        gamma: float = 2.0,
        scale: float = 1.0,
        alpha_mode: str = "retinanet",
        normalization: str = "positives",
    ) -> None:
        super().__init__()
        self.alpha = None if alpha is None else check_in_range("alpha", alpha, 0.0, 1.0)
        self.gamma = check_in_range("gamma", gamma, 0.0, None)
        self.scale = check_in_range("scale", scale, 0.0, None)
        self.alpha_mode = look_up_option("alpha_mode", alpha_mode, ("retinanet", "jarvis"))
        self.normalization = look_up_option("normalization", normalization, NORMALIZATIONS)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits shape {tuple(logits.shape)} != target shape {tuple(target.shape)}")
        x, y = logits.float(), target.float()
        w = torch.ones_like(x) if weights is None else weights.to(x.dtype).expand_as(x)
        per = sigmoid_focal_loss(x, y, gamma=self.gamma, alpha=None)
        if self.alpha is not None:
            a_neg = 1.0 - self.alpha if self.alpha_mode == "retinanet" else 1.0
            per = per * (y * self.alpha + (1.0 - y) * a_neg)
        total = (per * w).sum()
        positives = (y * (w > 0)).sum()
        return self.scale * normalise(total, w, self.normalization, positives)


class BoxLocalizationLoss(torch.nn.Module):
    """RetinaNet loss on head outputs: masked focal classification + masked smooth-L1 box regression.

    Args:
        cls_loss: classification loss; default ``MaskedFocalLoss()``.
        reg_loss: regression loss; default ``MaskedSmoothL1Loss()``.
        num_classes: ``K`` (channels per anchor of the classification head), >= 1. Default 1.
        reg_weight: multiplier of the regression term in the total, >= 0. Default 1.

    Shape:
        outputs: ``{"classification": [maps [B, A*K, gh, gw] per level] or [B, N, K], "box_regression": same with
        4}``; targets: ``{"cls_target", "cls_weight": [B, N, K], "reg_target", "reg_weight": [B, N, 4]}``.

    Returns:
        ``{"classification": scalar, "bbox_regression": scalar}`` (fixed keys; the total is their sum with
        ``reg_weight``, see :meth:`total`).
    """

    def __init__(
        self,
        cls_loss: torch.nn.Module | None = None,
        reg_loss: torch.nn.Module | None = None,
        num_classes: int = 1,
        reg_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.cls_loss = cls_loss if cls_loss is not None else MaskedFocalLoss()
        self.reg_loss = reg_loss if reg_loss is not None else MaskedSmoothL1Loss()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes={num_classes!r}: expected an integer >= 1")
        self.num_classes = num_classes
        self.reg_weight = check_in_range("reg_weight", reg_weight, 0.0, None)

    @staticmethod
    def _flat(x: torch.Tensor | Sequence[torch.Tensor], channels: int) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.ndim == 3:
            return x
        return maps_to_flat(list(x), channels)

    def forward(self, outputs: Mapping[str, Any], targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [k for k in ("cls_target", "cls_weight", "reg_target", "reg_weight") if k not in targets]
        if missing:
            raise KeyError(f"targets lack {missing}; build them with tlk_components.boxes.targets.BoxTargetsd")
        cls = self._flat(outputs["classification"], self.num_classes)
        reg = self._flat(outputs["box_regression"], 4)
        if cls.shape != targets["cls_target"].shape:
            raise ValueError(
                f"classification output {tuple(cls.shape)} vs targets {tuple(targets['cls_target'].shape)}: the "
                "network and the BoxParams used for the targets disagree"
            )
        return {
            "classification": self.cls_loss(cls, targets["cls_target"], targets["cls_weight"]),
            "bbox_regression": self.reg_loss(reg, targets["reg_target"], targets["reg_weight"]),
        }

    def total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``classification + reg_weight * bbox_regression``."""
        return losses["classification"] + self.reg_weight * losses["bbox_regression"]
