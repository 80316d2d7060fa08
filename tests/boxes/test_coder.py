# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Box deltas (encode/decode), the IoU-threshold matcher and the decoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.apps.detection.utils.ATSS_matcher import Matcher

from tlk_components.boxes.coder import BoxDeltaCoder
from tlk_components.boxes.decode import BoxDecoder, box_ious, boxes_to_mask
from tlk_components.boxes.matcher import IoUThresholdMatcher
from tlk_components.boxes.params import BoxParams
from tlk_components.boxes.targets import BoxTargetBuilder, flat_to_maps
from tlk_components.utils.errors import ConfigError

NEG, IGN = Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_then_decode_returns_the_boxes(weights):
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat([torch.rand(50, 2, generator=g) * 100, torch.rand(50, 2, generator=g) * 60 + 4], 1)
    anchors[:, 2:] += anchors[:, :2]
    boxes = torch.cat([torch.rand(50, 2, generator=g) * 100, torch.rand(50, 2, generator=g) * 60 + 1], 1)
    boxes[:, 2:] += boxes[:, :2]
    coder = BoxDeltaCoder(weights)
    back = coder.decode(coder.encode(boxes, anchors), anchors)
    torch.testing.assert_close(back, boxes, rtol=1e-5, atol=1e-3)


def test_delta_parameterisation_is_the_documents():
    """(dy, dx, dh, dw) = ((cy-cy')/h', (cx-cx')/w', log(h/h'), log(w/w'))."""
    anchor = torch.tensor([[0.0, 0.0, 20.0, 10.0]])  # centre (10, 5), h 20, w 10
    box = torch.tensor([[4.0, 2.0, 14.0, 22.0]])  # centre (9, 12), h 10, w 20
    d = BoxDeltaCoder().encode(box, anchor)[0]
    torch.testing.assert_close(d, torch.tensor([-1 / 20, 7 / 10, math.log(0.5), math.log(2.0)]))


def test_decode_clamps_huge_deltas():
    out = BoxDeltaCoder().decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert torch.isfinite(out).all() and (out[0, 2:] - out[0, :2]).max() <= 1000.0 + 1e-3


def test_ill_coder_weights():
    with pytest.raises(ConfigError, match="four positive"):
        BoxDeltaCoder((1.0, 1.0, 0.0, 1.0))


def test_matcher_semantics():
    m = IoUThresholdMatcher(iou_upper=0.5, iou_lower=0.2)
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 12.0],  # IoU 0.83 -> positive
            [0.0, 0.0, 10.0, 25.0],  # IoU 0.40 -> ignored (band)
            [0.0, 0.0, 10.0, 60.0],  # IoU 0.17 -> negative
            [30.0, 30.0, 40.0, 40.0],  # IoU 0 -> negative
        ]
    )
    _, matches = m(box, anchors, [4], 1)
    assert matches.tolist() == [0, IGN, NEG, NEG]


def test_best_anchor_is_always_positive():
    m = IoUThresholdMatcher(iou_upper=0.5, iou_lower=0.2)
    small = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 20.0]])  # IoU 0.16 and 0.04
    _, matches = m(small, anchors, [2], 1)
    assert matches.tolist() == [0, NEG]
    _, strict = IoUThresholdMatcher(0.5, 0.2, allow_low_quality_matches=False)(small, anchors, [2], 1)
    assert strict.tolist() == [NEG, NEG]


def test_positive_is_never_ignored_by_another_box_and_goes_to_the_best_box():
    m = IoUThresholdMatcher(iou_upper=0.5, iou_lower=0.2)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 30.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 11.0], [0.0, 0.0, 10.0, 28.0]])
    _, matches = m(boxes, anchors, [2], 1)
    # anchor 0: IoU 0.91 with box 0 and 0.37 (band) with box 1 -> stays positive for box 0 (jarvis: ignored)
    assert matches.tolist() == [0, 1]


def test_zero_area_box_and_no_boxes_match_nothing():
    m = IoUThresholdMatcher()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])
    _, matches = m(torch.tensor([[3.0, 3.0, 3.0, 8.0]]), anchors, [2], 1)
    assert matches.tolist() == [NEG, NEG]  # jarvis: every anchor positive
    _, matches = m(torch.zeros((0, 4)), anchors, [2], 1)
    assert matches.tolist() == [NEG, NEG]


def _params(**kw) -> BoxParams:
    args = dict(image_shape=(96, 96), levels=(2, 3), anchor_shapes=(12, 24), iou_nms=0.3)
    args.update(kw)
    return BoxParams(**args)


def _logits_from_targets(p: BoxParams, targets: dict, score: float = 8.0) -> list[torch.Tensor]:
    maps = flat_to_maps(targets["cls"] * 2 * score - score, p, "cls")
    return [maps[f"cls-c{c}"][None] for c in p.levels]


def test_decoder_recovers_ground_truth_from_perfect_heads():
    p = _params()
    boxes = torch.tensor([[10.0, 12.0, 40.0, 30.0], [60.0, 50.0, 75.0, 90.0]])
    t = BoxTargetBuilder(p).flat(boxes, torch.tensor([1, 1]))
    reg = flat_to_maps(t["reg"], p, "reg")
    out = BoxDecoder(p)(_logits_from_targets(p, t), [reg[f"reg-c{c}"][None] for c in p.levels])[0]
    got = out["boxes"][torch.argsort(out["boxes"][:, 0])]
    torch.testing.assert_close(got, boxes, atol=1e-3, rtol=0)
    assert out["scores"].shape == (2,) and (out["labels"] == 1).all()
    assert (out["scores"][:-1] >= out["scores"][1:]).all()  # sorted by score


def test_decoder_threshold_nms_and_anchor_mode():
    p = _params()
    t = BoxTargetBuilder(p).flat(torch.tensor([[10.0, 12.0, 40.0, 30.0]]), torch.tensor([1]))
    logits = _logits_from_targets(p, t)
    n_pos = int(t["cls"].sum())
    anchors_only = BoxDecoder(p, apply_deltas=False, nms_iou=1.0)(logits)[0]
    assert anchors_only["boxes"].shape[0] == n_pos  # every positive anchor, no NMS
    nms = BoxDecoder(p, apply_deltas=False, nms_iou=0.0)(logits)[0]
    assert nms["boxes"].shape[0] == 1  # NMS IoU 0 keeps one of overlapping boxes (0 is honoured)
    none = BoxDecoder(p, score_threshold=0.99999, apply_deltas=False)(logits)[0]
    assert none["boxes"].shape[0] == 0
    with pytest.raises(ValueError, match="apply_deltas=True needs"):
        BoxDecoder(p)(logits)
    with pytest.raises(ValueError, match="disagree"):
        BoxDecoder(p)(torch.zeros(1, 10, 1), torch.zeros(1, 10, 4))


def test_boxes_to_mask_and_ious_non_square():
    m = boxes_to_mask(torch.tensor([[2.0, 50.0, 6.0, 200.0]]), (8, 60))
    assert m.shape == (8, 60) and m.sum() == 4 * 10  # clipped by the width (60), not the height
    outline = boxes_to_mask(np.array([[1, 1, 5, 5]]), (8, 8), outline=True)
    assert outline.sum() == 12
    ious = box_ious(
        torch.tensor([0.0, 0.0, 10.0, 10.0]), torch.tensor([[0.0, 0.0, 10.0, 10.0], [0, 0, 5, 10], [20, 20, 30, 30]])
    )
    torch.testing.assert_close(ious, torch.tensor([1.0, 0.5, 0.0]))
    assert box_ious(torch.zeros(4), torch.zeros((0, 4))).shape == (0,)
