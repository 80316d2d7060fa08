# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""IoUThresholdMatcher: one positive anchor per box when two boxes share their best anchor, and a reference check
against torchvision's ``Matcher(allow_low_quality_matches=True)`` (transcribed below: torchvision is optional)."""

from __future__ import annotations

import pytest
import torch
from monai.apps.detection.utils.ATSS_matcher import Matcher
from monai.data.box_utils import box_iou

from tlk_components.boxes.matcher import IoUThresholdMatcher

NEG, IGN = Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS


def _torchvision_matches(iou: torch.Tensor, high: float, low: float) -> torch.Tensor:
    """torchvision.models.detection._utils.Matcher.__call__ with allow_low_quality_matches=True (v0.20)."""
    matched_vals, matches = iou.max(dim=0)
    all_matches = matches.clone()
    below = matched_vals < low
    between = (matched_vals >= low) & (matched_vals < high)
    matches[below] = NEG
    matches[between] = IGN
    highest_quality = iou.max(dim=1).values
    pred_inds_to_update = torch.where(iou == highest_quality[:, None])[1]
    matches[pred_inds_to_update] = all_matches[pred_inds_to_update]
    return matches


def _random_boxes(g: torch.Generator, n: int, size: float = 40.0) -> torch.Tensor:
    lo = torch.rand(n, 2, generator=g) * 60
    wh = torch.rand(n, 2, generator=g) * size + 2
    return torch.cat([lo, lo + wh], 1)


def test_issue_example_each_box_gets_a_positive_anchor():
    """Anchor [0,0,10,10] is the best anchor of both boxes (IoU 0.3 and 0.4): it was given to box 0 -> [0, -1]."""
    m = IoUThresholdMatcher(iou_upper=0.5, iou_lower=0.2)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 3.0], [0.0, 0.0, 10.0, 4.0]])
    # a second anchor overlapping both (IoU 0.15 with box 0, 0.2 with box 1): box 0 takes it as its next-best
    _, matches = m(boxes, torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0]]), [2], 1)
    assert matches.tolist() == [1, 0]  # the box of higher IoU keeps the shared anchor; each box has a positive
    # no other anchor overlaps box 0: the shared anchor still goes to the box of higher IoU, as the docstring says
    _, matches = m(boxes, torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]), [2], 1)
    assert matches.tolist() == [1, NEG]


def test_next_best_anchor_is_never_taken_from_another_box():
    m = IoUThresholdMatcher(iou_upper=0.5, iou_lower=0.2)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 3.0], [0.0, 0.0, 10.0, 4.0], [0.0, 8.0, 10.0, 20.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0]])
    # anchor 1 is box 2's (IoU 0.6, positive by threshold): box 0 gets nothing rather than steal it
    _, matches = m(boxes, anchors, [2], 1)
    assert matches.tolist() == [1, 2]


def test_reference_torchvision_where_no_best_anchor_is_shared():
    """Random boxes and anchors: equal to torchvision's rule wherever the two rules agree by definition."""
    g = torch.Generator().manual_seed(0)
    m = IoUThresholdMatcher(iou_upper=0.5, iou_lower=0.2)
    compared = 0
    for _ in range(100):
        boxes = _random_boxes(g, int(torch.randint(1, 4, (1,), generator=g)))
        anchors = _random_boxes(g, 30)
        iou = box_iou(boxes, anchors).float()
        best = iou.max(dim=1, keepdim=True).values
        is_best = iou == best
        # the rules differ only where an anchor is best for a box but overlaps another box more, and for a box
        # that overlaps no anchor (torchvision then makes every anchor of IoU 0 positive: quirk iii)
        if (is_best & (iou < iou.max(dim=0, keepdim=True).values)).any() or (best <= 0).any():
            continue
        _, ours = m(boxes, anchors, [30], 1)
        assert ours.tolist() == _torchvision_matches(iou, 0.5, 0.2).tolist()
        compared += 1
    assert compared > 30


def test_every_box_gets_a_positive_anchor_unless_all_its_anchors_are_taken():
    g = torch.Generator().manual_seed(1)
    m = IoUThresholdMatcher(iou_upper=0.5, iou_lower=0.2)
    shared = 0
    for _ in range(100):
        boxes = _random_boxes(g, int(torch.randint(2, 6, (1,), generator=g)), size=15.0)
        anchors = _random_boxes(g, 12, size=25.0)
        iou, matches = m(boxes, anchors, [12], 1)
        best_gt = iou.argmax(dim=0)
        is_best = (iou == iou.max(dim=1, keepdim=True).values) & (iou > 0)
        shared += int((is_best.sum(0) > 1).any())
        for a in range(anchors.shape[0]):
            if iou[:, a].max() >= 0.5:  # positive by threshold, for the box it overlaps most
                assert matches[a] == best_gt[a]
            elif matches[a] < 0:  # not positive: the IoU band decides
                assert matches[a] == (IGN if iou[:, a].max() > 0.2 else NEG)
            else:
                assert iou[matches[a], a] > 0
        for b in range(boxes.shape[0]):
            if (matches == b).any() or iou[b].max() <= 0:
                continue
            overlapping = iou[b] > 0
            assert ((matches >= 0) & (matches != b))[overlapping].all(), "a box lacks a positive anchor"
    assert shared > 5  # the shared-best-anchor case was exercised


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_shared_anchor_rule_does_not_depend_on_box_order(order):
    m = IoUThresholdMatcher(iou_upper=0.5, iou_lower=0.2)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 3.0], [0.0, 0.0, 10.0, 4.0]])[list(order)]
    _, matches = m(boxes, torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0]]), [2], 1)
    high = order.index(1)  # the index of box [0, 0, 10, 4] after reordering
    assert matches.tolist() == [high, 1 - high]
