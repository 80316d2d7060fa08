# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Box deltas: encode ground-truth boxes relative to anchors and decode predicted deltas back to boxes.

Parameterisation (RetinaNet / Faster R-CNN; jarvis-md ``calculate_deltas``), per axis ``a`` of a box of centre
``c_a`` and extent ``s_a`` against an anchor of centre ``c'_a`` and extent ``s'_a``::

    d_ca = w_c * (c_a - c'_a) / s'_a          d_sa = w_s * log(s_a / s'_a)

The deltas are ordered ``(d_c0, d_c1, d_s0, d_s1)`` — jarvis' ``(dy, dx, dh, dw)``. Encoding and decoding are
MONAI's ``BoxCoder`` (``StandardMode`` boxes, optional weights, a clamp on ``d_s`` before ``exp``).

Deliberate differences from jarvis-md: no ``+1e-6`` inside the log (anchors always have a positive extent); the
decoded log-extent is clamped at ``log(1000/16)`` (jarvis applies ``exp`` unclamped and can overflow on an
untrained network); rows of non-positive anchors are not zeroed here — the regression weight mask does that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.apps.detection.utils.box_coder import BoxCoder

from tlk_components.utils.errors import ConfigError

__all__ = ["BoxDeltaCoder"]


class BoxDeltaCoder:
    """Encode/decode 2-D box deltas against anchors (a thin, validated wrapper of MONAI's ``BoxCoder``).

    Args:
        weights: ``(w_c0, w_c1, w_s0, w_s1)`` multipliers of the deltas, each > 0. Default ``(1, 1, 1, 1)``
            (jarvis-md and torchvision RetinaNet).
        clip: upper clamp of ``d_s`` before ``exp`` when decoding. Default ``log(1000 / 16)``.

    Shape:
        boxes, anchors, deltas: ``[N, 4]``.

    Raises:
        ConfigError: weights not four positive numbers.

    Example:
        >>> coder = BoxDeltaCoder()
        >>> a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        >>> coder.decode(coder.encode(torch.tensor([[2.0, 1.0, 12.0, 9.0]]), a), a)
        tensor([[ 2.,  1., 12.,  9.]])
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clip: float = math.log(1000.0 / 16)) -> None:
        w = [float(x) for x in weights]
        if len(w) != 4 or any(not (x > 0) for x in w):
            raise ConfigError(f"weights={list(weights)!r}: expected four positive numbers (w_c0, w_c1, w_s0, w_s1)")
        self.weights = tuple(w)
        self.coder = BoxCoder(weights=self.weights, boxes_xform_clip=float(clip))

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Deltas that turn ``anchors`` into ``boxes`` (row by row).

        Args:
            boxes: ``[N, 4]`` target boxes.
            anchors: ``[N, 4]`` anchors (unclipped), positive extents.

        Returns:
            ``[N, 4]`` float32 deltas.
        """
        if boxes.shape[0] == 0:
            return boxes.new_zeros((0, 4), dtype=torch.float32)
        return self.coder.encode_single(boxes.float(), anchors.float())

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes obtained by applying ``deltas`` to ``anchors`` (row by row).

        Args:
            deltas: ``[N, 4]``.
            anchors: ``[N, 4]`` (unclipped).

        Returns:
            ``[N, 4]`` boxes in ``StandardMode``, float32.
        """
        if deltas.shape[0] == 0:
            return deltas.new_zeros((0, 4), dtype=torch.float32)
        return self.coder.decode_single(deltas.float(), anchors.float())
