# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Anchor boxes of a :class:`~tlk_components.boxes.params.BoxParams`, built with MONAI's ``AnchorGenerator``.

Box layout: MONAI ``StandardMode`` ``[a0_min, a1_min, a0_max, a1_max]`` (exclusive max), see
:mod:`tlk_components.boxes.params`.

Deliberate choices against jarvis-md (stated, and tested):

* **Anchor centres at cell centres** ``i * stride + stride // 2`` (MONAI >= 1.6, PR #8475 / issue #7951).
  jarvis-md (and MONAI before 1.6, torchvision) put them at the top-left corner of each cell, which shifts the
  whole anchor grid by half a stride towards the origin.
* Template extents are rounded to whole pixels (MONAI ``generate_anchors``); jarvis keeps fractions.
* The ``A`` templates are ordered ratio-major (MONAI); jarvis is scale-major.
* IoUs for matching use anchors **clipped to the image** while box deltas use the **unclipped** anchors — the
  same as jarvis-md (``anchors`` vs ``offsets``): a large anchor centred near the border still matches a border
  tumour, and decoding stays an exact inverse of encoding.
"""

from __future__ import annotations

import torch
from monai.apps.detection.utils.anchor_utils import AnchorGenerator

from tlk_components.boxes.params import BoxParams

__all__ = ["BoxAnchors", "make_anchor_generator"]


def make_anchor_generator(params: BoxParams) -> AnchorGenerator:
    """MONAI ``AnchorGenerator`` with one size tuple (``base * 2**(i/3)``) and the ratios per level.

    Args:
        params: the box parameterisation.

    Returns:
        ``AnchorGenerator(sizes=((s0, s1, ..), ...), aspect_ratios=((r0, r1, ..), ...), indexing="ij")``.
    """
    sizes = tuple(tuple(base * s for s in params.anchor_scales) for base in params.anchor_shapes)
    ratios = tuple(tuple(params.anchor_ratios) for _ in params.levels)
    return AnchorGenerator(sizes=sizes, aspect_ratios=ratios, indexing="ij")


class BoxAnchors:
    """All anchors of a parameterisation, concatenated over levels (level-major, location, anchor).

    Args:
        params: the box parameterisation.
        device: where the anchor tensors live. Default CPU.

    Attributes:
        anchors: ``[N, 4]`` unclipped anchors (used for box deltas).
        anchors_clipped: ``[N, 4]`` anchors clipped to the image (used for IoU matching).
        per_level: number of anchors of each level.

    Example:
        >>> a = BoxAnchors(BoxParams(image_shape=(64, 64), levels=(3,), anchor_shapes=(16,)))
        >>> a.anchors.shape
        torch.Size([576, 4])
    """

    def __init__(self, params: BoxParams, device: torch.device | str = "cpu") -> None:
        self.params = params
        gen = make_anchor_generator(params)
        strides = [[torch.tensor(s), torch.tensor(s)] for s in params.strides]
        levels = gen.grid_anchors([list(g) for g in params.grid_sizes], strides)
        self.anchors = torch.cat(levels, dim=0).to(device=device, dtype=torch.float32)
        h, w = params.image_shape
        lo = torch.zeros(4, device=self.anchors.device)
        hi = torch.tensor([h, w, h, w], dtype=torch.float32, device=self.anchors.device)
        self.anchors_clipped = torch.minimum(torch.maximum(self.anchors, lo), hi)
        self.per_level = [int(t.shape[0]) for t in levels]
        self.templates = [t.to(torch.float32) for t in gen.cell_anchors]

    def __len__(self) -> int:
        return int(self.anchors.shape[0])

    def to(self, device: torch.device | str) -> BoxAnchors:
        """Move the anchor tensors (in place) and return self."""
        self.anchors = self.anchors.to(device)
        self.anchors_clipped = self.anchors_clipped.to(device)
        return self
