# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""IoU-threshold matcher: which anchors are positive, negative or ignored for a set of ground-truth boxes.

It implements MONAI's ``Matcher`` interface (``monai.apps.detection.utils.ATSS_matcher.Matcher``), so it
returns MONAI's codes: a ground-truth index ``>= 0`` for positives, ``BELOW_LOW_THRESHOLD = -1`` for negatives
and ``BETWEEN_THRESHOLDS = -2`` for ignored anchors. MONAI's own IoU matcher (``set_regular_matcher``) needs
torchvision; this one does not.

Rule (jarvis-md ``calculate_gt_cls``; torchvision ``Matcher`` with ``allow_low_quality_matches``), with ``iou``
the IoU of an anchor with the ground-truth box it overlaps most:

* ``iou >= iou_upper`` -> positive, matched to that box;
* for every box, the anchor(s) with its highest IoU (> 0) are positive too, so every box gets at least one
  positive anchor even when no anchor reaches ``iou_upper``;
* ``iou_lower < iou < iou_upper`` (and not positive) -> ignored by the classification loss;
* ``iou <= iou_lower`` -> negative.

Deliberate fixes of jarvis-md quirks (stated): (i) an anchor positive for one box is never turned into
"ignored" by the IoU band of another box; (ii) an anchor that is positive for several boxes is matched to the
box of highest IoU (jarvis: the last box wins); (iii) a box of zero area matches nothing (jarvis turns every
anchor positive, because ``max(iou) == 0`` makes the threshold 0).
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
        if self.allow_low_quality_matches:
            per_box_best = iou.max(dim=1).values  # [G]
            for g in range(iou.shape[0]):
                if per_box_best[g] <= 0:
                    continue  # zero-area or disjoint box: matches nothing (fix of jarvis quirk iii)
                hit = (iou[g] == per_box_best[g]) & ~positive
                matches[hit] = g
                positive = positive | hit
        return iou, matches
