# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Label-free output-space adapters: entropy minimisation with a class-size prior, and confident self-training.

Entropy minimisation (Grandvalet & Bengio, NeurIPS 2004; TENT, Wang et al., ICLR 2021) sharpens target
predictions; alone it collapses segmentation to background (calibration: target Dice 0.02). A class-size prior
(Bateson et al., "Source-relaxed domain adaptation for image segmentation", MICCAI 2020) keeps the predicted class
proportions near an expected distribution and does most of the work.

Formulas (``p`` = softmax of the logits, per voxel; ``q_c`` = mean of ``p_c`` over the batch and all voxels;
``π`` = the class-size prior):

* ``entropy = mean_voxels( -Σ_c p_c log p_c ) / log C`` (normalised to [0, 1]);
* ``prior = KL(π || q) = Σ_c π_c log(π_c / q_c)``; or, with ``size_range=(lo, hi)``, the size constraint of
  Kervadec et al. (MedIA 2019) on every foreground class, in log space: ``Σ_{c>0} (l_c - clamp(l_c, log lo,
  log hi))²`` with ``l_c = log(q_c / π_c)`` — no penalty while the predicted share lies within ``[lo·π_c, hi·π_c]`` (a target whose
  objects are larger than the source's, e.g. kidneys with tumours, is not pulled back to the source's size);
* with ``momentum=m > 0`` the size terms use a running share ``q̄ ← m·q̄ + (1-m)·q`` (the old ``q̄`` carries no
  gradient) instead of the batch's ``q``: a few small patches rarely hold the prior's share (most hold no kidney,
  a few mostly kidney), and the running share estimates the expected patch share over many patches, i.e. over the
  target volumes, which is what a source prior can speak about;
* ``pseudo_label = CE(logits, argmax p_teacher)`` over voxels where ``max p_teacher >= threshold`` (0 when none).

No term reads a label: the prior is a vector of class proportions (from source labels, or estimated without
labels, see :func:`class_prior_from_predictions`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, check_positive_int

__all__ = [
    "ConfidentPseudoLabelLoss",
    "EntropyPriorLoss",
    "class_prior_from_labels",
    "class_prior_from_predictions",
    "entropy_map",
]


def entropy_map(logits: torch.Tensor) -> torch.Tensor:
    """Per-voxel Shannon entropy of ``softmax(logits, dim=1)`` in nats; shape ``(N, *S)``."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


def _check_prior(prior: Sequence[float]) -> torch.Tensor:
    t = torch.as_tensor([float(p) for p in prior], dtype=torch.float32)
    if t.ndim != 1 or t.numel() < 2 or bool((t <= 0).any()) or abs(float(t.sum()) - 1.0) > 1e-3:
        raise ConfigError(
            f"class_prior={list(prior)}: expected >= 2 positive class proportions summing to 1 (background first), "
            "e.g. [0.99, 0.01]; compute it with class_prior_from_labels on the source labels"
        )
    return t / t.sum()


def class_prior_from_labels(labels: Iterable[torch.Tensor], num_classes: int, min_share: float = 1e-4) -> list[float]:
    """Class proportions over a set of integer label maps (source labels), background first.

    Args:
        labels: label maps of any shape holding class indices in ``[0, num_classes)``.
        num_classes: C >= 2.
        min_share: floor for classes that never occur (keeps the KL finite), default 1e-4.

    Returns:
        C floats summing to 1.
    """
    c = check_positive_int("num_classes", num_classes, 2)
    counts = torch.zeros(c, dtype=torch.float64)
    for lab in labels:
        counts += torch.bincount(torch.as_tensor(lab).long().flatten().clamp(0, c - 1), minlength=c).double()
    if counts.sum() == 0:
        raise ConfigError("class_prior_from_labels: no labelled voxels were given")
    share = (counts / counts.sum()).clamp_min(min_share)
    return (share / share.sum()).tolist()


def class_prior_from_predictions(probs: Iterable[torch.Tensor], min_share: float = 1e-4) -> list[float]:
    """Class proportions of a model's soft predictions (label-free), background first.

    Args:
        probs: softmax maps ``(C, *S)`` or ``(N, C, *S)``.
        min_share: floor per class (default 1e-4).

    Returns:
        C floats summing to 1.
    """
    total: torch.Tensor | None = None
    for p in probs:
        p = torch.as_tensor(p, dtype=torch.float64)
        p = p.unsqueeze(0) if p.ndim < 3 else p
        s = p.transpose(0, 1).flatten(1).sum(1)
        total = s if total is None else total + s
    if total is None:
        raise ConfigError("class_prior_from_predictions: no predictions were given")
    share = (total / total.sum()).clamp_min(min_share)
    return (share / share.sum()).tolist()


class EntropyPriorLoss(nn.Module):
    """Entropy minimisation plus a class-size prior on target predictions.

    Args:
        class_prior: expected class proportions ``π`` (C values > 0, summing to 1, background first).
        size_range: None (default): the KL prior term; ``(lo, hi)`` with ``0 < lo <= 1 <= hi``: the hinge size
            constraint on the foreground shares (see the module docstring).
        momentum: weight of the running share in ``[0, 0.999]``; 0 (default) uses each batch's own share. The running
            share lives in training mode only (evaluation uses the batch share) and is not saved with the weights.

    Shape:
        ``logits``: ``(N, C, *S)``. Output: ``{"entropy": scalar, "prior": scalar}``.

    Raises:
        ConfigError: a prior that is not a distribution over >= 2 classes.
        ValueError: at ``forward``, when the logits have another class count than the prior.

    Example:
        >>> loss = EntropyPriorLoss([0.9, 0.1])
        >>> sorted(loss(torch.zeros(1, 2, 4, 4, 4)))
        ['entropy', 'prior']
    """

    def __init__(
        self, class_prior: Sequence[float], size_range: Sequence[float] | None = None, momentum: float = 0.0
    ) -> None:
        super().__init__()
        self.register_buffer("class_prior", _check_prior(class_prior), persistent=False)
        self.momentum = check_in_range("momentum", momentum, 0.0, 0.999)
        self.register_buffer("running_share", torch.zeros(0), persistent=False)
        self.size_range: tuple[float, float] | None = None
        if size_range is not None:
            if len(size_range) != 2:
                raise ConfigError(f"size_range={list(size_range)}: expected two numbers (lo, hi), e.g. [0.8, 1.6]")
            lo = check_in_range("size_range[0]", size_range[0], 0.0, 1.0, low_inclusive=False)
            hi = check_in_range("size_range[1]", size_range[1], 1.0)
            self.size_range = (lo, hi)

    def forward(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The two label-free terms on a batch of target logits."""
        c = self.class_prior.numel()
        if logits.ndim < 3 or logits.shape[1] != c:
            raise ValueError(f"logits of shape {tuple(logits.shape)}: expected (N, {c}, *S) to match the class prior")
        logp = F.log_softmax(logits.float(), dim=1)
        p = logp.exp()
        entropy = -(p * logp).sum(1).mean() / math.log(c)
        q = p.transpose(0, 1).flatten(1).mean(1).clamp_min(1e-8)
        if self.momentum > 0 and self.training:
            if self.running_share.numel() == c:
                q = self.momentum * self.running_share + (1.0 - self.momentum) * q
            self.running_share = q.detach().clone()
        if self.size_range is None:
            prior = (self.class_prior * (self.class_prior.log() - q.log())).sum()
        else:
            lr = q[1:].log() - self.class_prior[1:].log()
            lo, hi = math.log(self.size_range[0]), math.log(self.size_range[1])
            prior = ((lr - lr.clamp(lo, hi)) ** 2).sum()
        return {"entropy": entropy, "prior": prior}


class ConfidentPseudoLabelLoss(nn.Module):
    """Self-training on confident pseudo-labels: cross-entropy (and optionally soft Dice) against the teacher's
    confident argmax.

    ``L = CE(logits, argmax(teacher))`` averaged over the voxels whose teacher probability is at least
    ``threshold``, plus ``dice_weight`` times the soft Dice loss of the non-background classes over the same voxels
    (batch Dice: ``1 - (2 Σ p·y + ε) / (Σ p + Σ y + ε)``, summed over the batch and the confident voxels, averaged
    over the classes; MONAI's ``DiceLoss``). The Dice term keeps a small foreground (a kidney in a patch) from being
    outweighed by the background voxels.

    Args:
        threshold: minimum teacher probability of a voxel's argmax class to use it, in [0.5, 1] (default 0.9).
        dice_weight: weight of the soft Dice term, >= 0 (default 0: cross-entropy only).

    Shape:
        ``logits``, ``teacher_logits``: ``(N, C, *S)``. Output: a scalar (0 when no voxel is confident).
    """

    def __init__(self, threshold: float = 0.9, dice_weight: float = 0.0) -> None:
        super().__init__()
        self.threshold = check_in_range("threshold", threshold, 0.5, 1.0)
        self.dice_weight = check_in_range("dice_weight", dice_weight, 0.0)
        self.dice = DiceLoss(include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Mean CE over confident voxels (+ ``dice_weight`` · masked soft Dice); the teacher gets no gradient."""
        if logits.shape != teacher_logits.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ")
        with torch.no_grad():
            conf, target = torch.softmax(teacher_logits.float(), 1).max(1)
            mask = conf >= self.threshold
        if not bool(mask.any()):
            return logits.sum() * 0.0
        ce = F.cross_entropy(logits.float(), target, reduction="none")
        loss = ce[mask].mean()
        if self.dice_weight > 0:
            m = mask.unsqueeze(1).float()
            prob = torch.softmax(logits.float(), 1) * m
            onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float() * m
            loss = loss + self.dice_weight * self.dice(prob, onehot)
        return loss
