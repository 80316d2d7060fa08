# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""IoU-threshold matcher: which anchors are positive, negative or ignored for a set of ground-truth boxes.

It implements MONAI's ``Matcher`` interface (``monai.apps.detection.utils.ATSS_matcher.Matcher``), so it
returns MONAI's codes: a ground-truth index ``>= 0`` for positives, ``BELOW_LOW_THRESHOLD = -1`` for negatives
and ``BETWEEN_THRESHOLDS = -2`` for ignored anchors. MONAI's own IoU matcher (``set_regular_matcher``) needs
torchvision; this one does not.

Rule (jarvis-md ``calculate_gt_cls``; torchvision ``Matcher`` with ``allow_low_quality_matches``), with ``iou``
the IoU of an anchor with the ground-truth box it overlaps most:

* ``iou >= iou_upper`` -> positive, matched to that box;
* for every box, the anchor(s) with its highest IoU (> 0) are positive too, so every box gets a positive
  anchor even when no anchor reaches ``iou_upper`` (see "one positive anchor per box" below);
* ``iou_lower < iou < iou_upper`` (and not positive) -> ignored by the classification loss;
* ``iou <= iou_lower`` -> negative.

One positive anchor per box (``allow_low_quality_matches``), in three steps:

1. an anchor that is the best anchor (highest IoU, ties included) of several boxes goes to the box it overlaps
   most (ties: the lower box index); an anchor positive by ``iou_upper`` keeps its box;
2. a box that thereby lost its only best anchor takes its next-best anchor: among the anchors that are not
   positive yet and overlap it (IoU > 0), the one of highest IoU. Several such boxes are served greedily, the
   (box, anchor) pair of highest IoU first, one anchor per box;
3. a box ends without a positive anchor only when it overlaps no anchor, or every anchor it overlaps is
   positive for another box.

Example: anchors ``a0 = [0, 0, 10, 10]`` and ``a1 = [0, 0, 10, 20]``, boxes ``b0 = [0, 0, 10, 3]`` (IoU 0.3 with
a0, 0.15 with a1) and ``b1 = [0, 0, 10, 4]`` (IoU 0.4, 0.2). a0 is the best anchor of both: b1 keeps it (0.4 >
0.3) and b0 takes its next-best anchor a1 -> matches ``[1, 0]``. torchvision's rule gives a0 to b1 and
nothing to b0.

Deliberate fixes of jarvis-md quirks (stated): (i) an anchor positive for one box is never turned into
"ignored" by the IoU band of another box; (ii) an anchor that is positive for several boxes is matched to the
box of highest IoU (jarvis: the last box wins), and the other box takes its next-best anchor (jarvis: it has
none); (iii) a box of zero area matches nothing (jarvis turns every anchor positive, because ``max(iou) == 0``
makes the threshold 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.apps.detection.utils.ATSS_matcher import Matcher
from monai.data.box_utils import box_iou

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range

__all__ = ["IoUThresholdMatcher"]


class IoUThresholdMatcher(Matcher):
    """Match anchors to boxes by IoU thresholds, keeping each box's best anchor positive.

    Args:
        iou_upper: positive threshold in (0, 1]. Default 0.5.
        iou_lower: negative threshold in [0, iou_upper]. Default 0.2.
        allow_low_quality_matches: make every box's best anchor(s) positive. Default True.

    Shape:
        boxes ``[G, 4]`` and anchors ``[N, 4]`` in ``StandardMode``; returns ``([G, N], [N])``.

    Raises:
        ConfigError: thresholds out of range or ``iou_lower > iou_upper``.

    Example:
        >>> m = IoUThresholdMatcher(0.5, 0.2)
        >>> anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 14], [20, 20, 30, 30]])
        >>> m(torch.tensor([[0.0, 0, 10, 10]]), anchors, [3], 1)[1]
        tensor([ 0,  0, -1])
    """

    def __init__(self, iou_upper: float = 0.5, iou_lower: float = 0.2, allow_low_quality_matches: bool = True) -> None:
        super().__init__(similarity_fn=box_iou)
        self.iou_upper = check_in_range("iou_upper", iou_upper, 0.0, 1.0, low_inclusive=False)
        self.iou_lower = check_in_range("iou_lower", iou_lower, 0.0, 1.0)
        if self.iou_lower > self.iou_upper:
            raise ConfigError(f"iou_lower={iou_lower} > iou_upper={iou_upper}: expected iou_lower <= iou_upper")
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def compute_matches(
        self,
        boxes: torch.Tensor,
        anchors: torch.Tensor,
        num_anchors_per_level: Sequence[int] = (),
        num_anchors_per_loc: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Match ``anchors`` to ``boxes`` (the level arguments are accepted for MONAI compatibility, unused).

        Returns:
            ``(iou [G, N], matches [N])`` with matches in ``{-2, -1, 0..G-1}``.
        """
        iou = self.similarity_fn(boxes, anchors).to(torch.float32)  # [G, N]
        iou = torch.nan_to_num(iou, nan=0.0)
        best_iou, best_gt = iou.max(dim=0)
        matches = torch.full_like(best_gt, self.BELOW_LOW_THRESHOLD)
        matches[best_iou > self.iou_lower] = self.BETWEEN_THRESHOLDS
        positive = best_iou >= self.iou_upper
        matches[positive] = best_gt[positive]
        if self.allow_low_quality_matches and iou.shape[0] > 0:
            matches, positive = self._low_quality_matches(iou, matches, positive)
        return iou, matches

    def _low_quality_matches(
        self, iou: torch.Tensor, matches: torch.Tensor, positive: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Give every box with an overlapping anchor a positive anchor (steps 1-3 of the module docstring)."""
        per_box_best = iou.max(dim=1, keepdim=True).values  # [G, 1]
        # step 1: each box's best anchor(s); an anchor best for several boxes goes to the box of highest IoU
        is_best = (iou == per_box_best) & (per_box_best > 0)  # zero-area or disjoint box: nothing (quirk iii)
        best_iou_for = torch.where(is_best, iou, torch.full_like(iou, -1.0))  # [G, N]
        owner_iou, owner = best_iou_for.max(dim=0)  # ties -> lower box index
        hit = (owner_iou > 0) & ~positive
        matches[hit] = owner[hit]
        positive = positive | hit
        # step 2: boxes left without any positive anchor take their next-best free anchor, greedily
        n_boxes = iou.shape[0]
        has_pos = torch.zeros(n_boxes, dtype=torch.bool, device=iou.device)
        has_pos[matches[positive].unique()] = True
        waiting = ~has_pos & (per_box_best[:, 0] > 0)
        while bool(waiting.any()):
            cand = torch.where(waiting[:, None] & ~positive[None, :], iou, torch.zeros_like(iou))
            best = cand.max()
            if best <= 0:
                break  # step 3: every anchor these boxes overlap is positive for another box
            flat = int(torch.argmax(cand))
            g, a = divmod(flat, iou.shape[1])
            matches[a] = g
            positive[a] = True
            waiting[g] = False
        return matches, positive
