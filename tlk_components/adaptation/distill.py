# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Knowledge distiller (TLK component 4): teacher → student, across different network structures.

* :class:`KDLoss` — Hinton et al. 2015 (https://arxiv.org/abs/1503.02531), as TLK's ``KD``:
  ``T² · KL(softmax(t/T) || softmax(s/T))``, summed over classes, averaged over samples (and voxels for
  segmentation logits ``(N, C, *S)``). Equal logits give exactly 0.
* :class:`FeatureMatchingLoss` — FitNets (Romero et al., ICLR 2015): a 1x1 convolution (or linear layer)
  projects student features to the teacher's channel count; maps are resized to the teacher's spatial size;
  loss = MSE.
* :class:`Distiller` — holds a FROZEN teacher (``requires_grad=False``, always in eval mode), taps its features
  with forward hooks, and returns named losses ``{"kd": ..., "feature": ...}`` for a student's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tlk_components.adaptation.backbones import FeatureTaps
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, check_positive_int, look_up_option

__all__ = ["Distiller", "FeatureMatchingLoss", "KDLoss"]


class KDLoss(nn.Module):
    """Temperature-scaled KL divergence between teacher and student class distributions.

    Args:
        temperature: T > 0 (default 4.0, TLK's ``kd.temperature``).

    Shape:
        ``student``, ``teacher``: ``(N, C)`` or ``(N, C, *S)`` (same shape). Output: a scalar.

    Example:
        >>> float(KDLoss()(torch.ones(2, 3), torch.ones(2, 3)))
        0.0
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = check_in_range("temperature", temperature, 0.0, low_inclusive=False)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``T² · mean_samples Σ_c p_t (log p_t - log p_s)``."""
        if student.shape != teacher.shape:
            raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
        t = self.temperature
        log_s = F.log_softmax(student.float() / t, dim=1)
        log_t = F.log_softmax(teacher.detach().float() / t, dim=1)
        kl = (log_t.exp() * (log_t - log_s)).sum(1)
        return kl.mean() * t * t


class FeatureMatchingLoss(nn.Module):
    """MSE between projected student features and teacher features (channels and sizes may differ).

    Args:
        student_channels: channels of each student map (one entry per matched pair).
        teacher_channels: channels of each teacher map (same length).
        spatial_dims: 0 (vectors ``(N, C)``), 1, 2 or 3 (default 3).

    Shape:
        lists of ``(N, C_s, *S_s)`` and ``(N, C_t, *S_t)``. Output: the mean MSE over pairs.

    Raises:
        ConfigError: lists of different length.
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], spatial_dims: int = 3) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels) or not student_channels:
            raise ConfigError(
                f"student_channels={list(student_channels)} and teacher_channels={list(teacher_channels)}: expected "
                "non-empty lists of the same length (one entry per matched feature pair)"
            )
        self.spatial_dims = look_up_option("spatial_dims", spatial_dims, [0, 1, 2, 3])
        conv = {0: None, 1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        proj = []
        for cs, ct in zip(student_channels, teacher_channels, strict=True):
            cs, ct = check_positive_int("student_channels[i]", cs), check_positive_int("teacher_channels[i]", ct)
            if cs == ct:
                proj.append(nn.Identity())
            else:
                proj.append(nn.Linear(cs, ct) if conv is None else conv(cs, ct, kernel_size=1))
        self.projectors = nn.ModuleList(proj)

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean of ``MSE(resize(proj(s)), t)`` over pairs."""
        if len(student) != len(self.projectors) or len(teacher) != len(self.projectors):
            raise ValueError(f"expected {len(self.projectors)} feature pairs, got {len(student)} and {len(teacher)}")
        total = student[0].new_zeros(())
        for proj, s, t in zip(self.projectors, student, teacher, strict=True):
            s = proj(s)
            if s.ndim > 2 and s.shape[2:] != t.shape[2:]:
                s = F.interpolate(s, size=t.shape[2:], mode="nearest")
            total = total + F.mse_loss(s.float(), t.detach().float())
        return total / len(self.projectors)


class Distiller(nn.Module):
    """A frozen teacher plus the distillation losses for a student.

    Args:
        teacher: the teacher network (frozen here: ``requires_grad=False``, kept in eval mode).
        temperature: KD temperature (default 4.0).
        teacher_layers: teacher module names to tap for feature matching (default none: logits only).
        student_channels / teacher_channels: channels of the matched maps (needed with ``teacher_layers``).
        spatial_dims: of the tapped maps (default 3).

    Shape:
        :meth:`losses` takes the student's logits (and tapped maps) for a batch ``x`` and returns
        ``{"kd": scalar, "feature": scalar}`` (``feature`` is 0 without taps).
    """

    def __init__(
        self,
        teacher: nn.Module,
        temperature: float = 4.0,
        teacher_layers: Sequence[str] = (),
        student_channels: Sequence[int] = (),
        teacher_channels: Sequence[int] = (),
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        self.kd = KDLoss(temperature)
        self.teacher_layers = list(teacher_layers)
        self.taps = FeatureTaps(teacher, self.teacher_layers, detach=True) if self.teacher_layers else None
        self.features = (
            FeatureMatchingLoss(student_channels, teacher_channels, spatial_dims) if self.teacher_layers else None
        )

    def train(self, mode: bool = True) -> Distiller:
        """Train the projectors only; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def losses(
        self, x: torch.Tensor, student_logits: torch.Tensor, student_features: Sequence[torch.Tensor] = ()
    ) -> dict[str, torch.Tensor]:
        """Run the teacher on ``x`` (no gradient) and compare with the student's outputs."""
        with torch.no_grad():
            t_logits = self.teacher(x)
            t_feats = self.taps.pop()["features"] if self.taps is not None else []
        out = {"kd": self.kd(student_logits, t_logits)}
        if self.features is not None:
            out["feature"] = self.features(list(student_features), t_feats)
        else:
            out["feature"] = student_logits.new_zeros(())
        return out
