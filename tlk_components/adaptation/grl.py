# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Gradient reversal: identity forward, ``-λ · grad`` backward (Ganin & Lempitsky, ICML 2015).

Two layers, after TLlib's ``tllib/modules/grl.py`` (re-written; TLlib's ``np.float`` fails on NumPy >= 1.24):

* :class:`GradientReverseLayer` — a fixed coefficient λ.
* :class:`WarmStartGradientReverseLayer` — λ grows from ``lo`` to ``hi`` as
  ``λ(i) = 2 (hi - lo) / (1 + exp(-alpha · i / max_iters)) - (hi - lo) + lo``.

Deliberate difference from TLlib / TLK: the warm-start counter ``i`` is advanced by an explicit :meth:`step`
(the trainer calls it once per iteration), never inside ``forward``. TLK shared one auto-stepping layer between
five feature levels, so it advanced 5x per iteration without saying so. The counter is part of ``state_dict`` so a
resumed run continues the schedule.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from tlk_components.utils.validation import check_in_range

__all__ = ["GradientReverseFunction", "GradientReverseLayer", "WarmStartGradientReverseLayer", "warm_start_coeff"]


class GradientReverseFunction(torch.autograd.Function):
    """Autograd function: ``forward(x, λ) = x``; ``backward(g) = -λ · g`` (no gradient for λ)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:  # noqa: D102
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad_output.neg() * ctx.coeff, None


def warm_start_coeff(i: int, alpha: float = 1.0, lo: float = 0.0, hi: float = 1.0, max_iters: int = 1000) -> float:
    """λ of the warm-start schedule at iteration ``i``.

    Formula: ``2 (hi - lo) / (1 + exp(-alpha · i / max_iters)) - (hi - lo) + lo``; λ(0) = lo, λ(∞) = hi.

    Example:
        >>> round(warm_start_coeff(1000), 3)
        0.462
    """
    return float(2.0 * (hi - lo) / (1.0 + math.exp(-alpha * i / max_iters)) - (hi - lo) + lo)


class GradientReverseLayer(nn.Module):
    """Identity in the forward pass; multiplies the gradient by ``-coeff`` in the backward pass.

    Args:
        coeff: λ >= 0 (default 1.0).

    Shape:
        any tensor; the output has the input's shape.

    Example:
        >>> x = torch.ones(3, requires_grad=True)
        >>> GradientReverseLayer(0.5)(x).sum().backward()
        >>> x.grad
        tensor([-0.5000, -0.5000, -0.5000])
    """

    def __init__(self, coeff: float = 1.0) -> None:
        super().__init__()
        self.coeff = check_in_range("coeff", coeff, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` unchanged; its gradient is reversed and scaled."""
        return GradientReverseFunction.apply(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"


class WarmStartGradientReverseLayer(nn.Module):
    """Gradient reversal whose λ follows the warm-start schedule (DANN, TLlib defaults).

    Args:
        alpha: steepness > 0 (default 1.0).
        lo: initial λ >= 0 (default 0.0).
        hi: final λ >= lo (default 1.0).
        max_iters: iterations scale of the schedule, >= 1 (default 1000; λ ≈ 0.46·hi at ``max_iters``,
            ≈ 0.91·hi at ``3·max_iters``).

    Shape:
        any tensor; the output has the input's shape.

    Example:
        >>> grl = WarmStartGradientReverseLayer(max_iters=10)
        >>> grl.coeff
        0.0
        >>> for _ in range(10):
        ...     grl.step()
        >>> round(grl.coeff, 3)
        0.462
    """

    def __init__(self, alpha: float = 1.0, lo: float = 0.0, hi: float = 1.0, max_iters: int = 1000) -> None:
        super().__init__()
        self.alpha = check_in_range("alpha", alpha, 0.0, low_inclusive=False)
        self.lo = check_in_range("lo", lo, 0.0)
        self.hi = check_in_range("hi", hi, self.lo)
        self.max_iters = int(check_in_range("max_iters", max_iters, 1.0))
        self.iter_num = 0

    @property
    def coeff(self) -> float:
        """λ at the current iteration."""
        return warm_start_coeff(self.iter_num, self.alpha, self.lo, self.hi, self.max_iters)

    def step(self, n: int = 1) -> None:
        """Advance the schedule by ``n`` iterations (call once per training iteration)."""
        self.iter_num += int(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` unchanged; its gradient is multiplied by ``-λ(i)``."""
        return GradientReverseFunction.apply(x, self.coeff)

    def get_extra_state(self) -> dict[str, int]:
        return {"iter_num": self.iter_num}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.iter_num = int(state.get("iter_num", 0))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, lo={self.lo}, hi={self.hi}, max_iters={self.max_iters}, iter_num={self.iter_num}"
