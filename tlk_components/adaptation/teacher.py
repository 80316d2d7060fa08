# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Mean teacher for label-free self-training on the target.

Tarvainen & Valpola, "Mean teachers are better role models" (NeurIPS 2017); for segmentation domain adaptation
Perone, Ballester, Barros, Cohen-Adad, "Unsupervised domain adaptation for medical imaging segmentation with
self-ensembling" (NeuroImage 2019). The teacher is an exponential moving average of the student's weights,
``θ_teacher ← d · θ_teacher + (1 - d) · θ_student`` after every optimiser step; it labels the plain view of a
target patch, the student learns those labels on a strongly perturbed view of the same patch
(:class:`~tlk_components.adaptation.entropy.ConfidentPseudoLabelLoss`). With ``decay=1`` the teacher stays the
model it was built from (the source model: fixed-teacher self-training).

The average is PyTorch's :class:`torch.optim.swa_utils.AveragedModel` with
:func:`~torch.optim.swa_utils.get_ema_multi_avg_fn` (buffers, i.e. BatchNorm statistics, averaged too).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tlk_components.utils.distributed import unwrap_model
from tlk_components.utils.validation import check_in_range

__all__ = ["MeanTeacher", "freeze_batchnorm_statistics"]


class MeanTeacher(nn.Module):
    """An exponential moving average of a student network that predicts without gradients, always in eval mode.

    Args:
        student: the network to follow (copied at construction: the teacher starts as the student's weights; a
            DistributedDataParallel wrapper is looked through).
        decay: EMA decay ``d`` in [0, 1] (default 0.99: the teacher averages about the last 100 steps); 1 keeps
            the initial weights (a fixed teacher), 0 copies the student at every update.

    Shape:
        ``forward(x)``: the student's input ``(N, C_in, *S)`` → its logits ``(N, C, *S)``, detached.

    Raises:
        ConfigError: ``decay`` outside [0, 1].
    """

    def __init__(self, student: nn.Module, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = check_in_range("decay", decay, 0.0, 1.0)
        self.model = AveragedModel(
            unwrap_model(student), multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True
        )
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> MeanTeacher:
        """The teacher always predicts with its running BatchNorm statistics (eval mode), whatever ``mode``."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """Move the teacher towards ``student`` (call after each optimiser step); no-op when ``decay`` is 1."""
        if self.decay < 1.0:
            self.model.update_parameters(unwrap_model(student))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``x`` (no gradient)."""
        return self.model(x)


def freeze_batchnorm_statistics(network: nn.Module) -> int:
    """Put every BatchNorm layer of ``network`` in eval mode (running statistics used and kept, affine still trained).

    Returns:
        The number of BatchNorm layers frozen.
    """
    n = 0
    for m in network.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            n += 1
    return n
