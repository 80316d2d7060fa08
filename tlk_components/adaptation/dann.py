# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""DANN loss (Ganin et al., JMLR 2016) for feature maps, as TLK's encoder/decoder adversaries.

Reference: "Domain-Adversarial Training of Neural Networks", https://arxiv.org/abs/1505.07818; TLlib
``tllib/alignment/dann.py::DomainAdversarialLoss`` (re-written here, logits instead of probabilities).

Formula: ``L = 0.5 · (BCE(D(GRL(f_s)), 1) + BCE(D(GRL(f_t)), 0))`` — source is labelled 1, target 0, as in TLlib
and TLK. The discriminator minimises ``L``; through the gradient reversal layer the feature extractor maximises it.
Source and target features go through the discriminator in ONE concatenated batch (as in TLlib), so BatchNorm
layers inside the discriminator see both domains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tlk_components.adaptation.grl import WarmStartGradientReverseLayer

__all__ = ["DomainAdversarialLoss", "binary_domain_accuracy"]

Features = torch.Tensor | Sequence[torch.Tensor]


def _cat(f_s: Features, f_t: Features) -> tuple[list[torch.Tensor] | torch.Tensor, int]:
    if isinstance(f_s, torch.Tensor):
        return torch.cat([f_s, f_t], dim=0), f_s.shape[0]
    if len(f_s) != len(f_t):
        raise ValueError(f"source gives {len(f_s)} feature maps but target gives {len(f_t)}; tap the same layers")
    return [torch.cat([a, b], dim=0) for a, b in zip(f_s, f_t, strict=True)], f_s[0].shape[0]


def binary_domain_accuracy(logits_s: torch.Tensor, logits_t: torch.Tensor) -> float:
    """Share of samples the discriminator assigns to their true domain (logit > 0 = source), in [0, 1]."""
    correct = (logits_s > 0).float().sum() + (logits_t <= 0).float().sum()
    return float(correct / (logits_s.numel() + logits_t.numel()))


class DomainAdversarialLoss(nn.Module):
    """Domain-adversarial loss for (lists of) feature maps.

    Args:
        discriminator: maps features (a tensor, or a list of maps for a multi-scale discriminator) to logits
            ``(N, K)``; every one of the K outputs is trained as a domain logit.
        grl: the gradient reversal layer; default ``WarmStartGradientReverseLayer(alpha=1, lo=0, hi=1,
            max_iters=1000)`` (TLK/TLlib). Step it once per iteration (the DA trainer does).

    Shape:
        ``f_s``: ``(N_s, C, *S)`` or a list of such maps; ``f_t``: same layout with ``N_t`` samples.
        Output: a scalar.

    Example:
        >>> from tlk_components.adaptation.discriminator import MultiScaleDomainDiscriminator
        >>> loss = DomainAdversarialLoss(MultiScaleDomainDiscriminator([4], strides=[2], spatial_dims=2))
        >>> float(loss([torch.zeros(2, 4, 8, 8)], [torch.zeros(2, 4, 8, 8)])) > 0
        True
    """

    def __init__(self, discriminator: nn.Module, grl: nn.Module | None = None) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.grl = grl if grl is not None else WarmStartGradientReverseLayer(alpha=1.0, lo=0.0, hi=1.0, max_iters=1000)

    def logits(self, f_s: Features, f_t: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """Discriminator logits for source and target (features pass the GRL first)."""
        f, n_s = _cat(f_s, f_t)
        f = self.grl(f) if isinstance(f, torch.Tensor) else [self.grl(x) for x in f]
        d = self.discriminator(f)
        return d[:n_s], d[n_s:]

    def forward(self, f_s: Features, f_t: Features) -> torch.Tensor:
        """``0.5 · (BCE(d_s, 1) + BCE(d_t, 0))``."""
        d_s, d_t = self.logits(f_s, f_t)
        return 0.5 * (
            F.binary_cross_entropy_with_logits(d_s, torch.ones_like(d_s))
            + F.binary_cross_entropy_with_logits(d_t, torch.zeros_like(d_t))
        )

    def step(self) -> None:
        """Advance the GRL's warm-start schedule (no-op for a fixed GRL)."""
        if hasattr(self.grl, "step"):
            self.grl.step()
