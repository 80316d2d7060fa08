# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""BoxParams reports (grids, templates, target shapes) and its validation; anchor placement."""

from __future__ import annotations

import pytest
import torch

from tlk_components.boxes.anchors import BoxAnchors, make_anchor_generator
from tlk_components.boxes.params import BoxParams
from tlk_components.utils.errors import ConfigError


def tutorial_params(**kw) -> BoxParams:
    args = dict(
        image_shape=(240, 240),
        classes=1,
        levels=(3, 4),
        anchor_shapes=(32, 64),
        anchor_scales=(0, 1, 2),
        anchor_ratios=(0.5, 1, 2),
        iou_upper=0.5,
        iou_lower=0.2,
    )
    args.update(kw)
    return BoxParams(**args)


def test_reports_match_the_source_document():
    p = tutorial_params()
    assert p.grid_sizes == [(30, 30), (15, 15)]
    assert p.strides == [8, 16]
    assert p.num_anchors_per_location == 9
    assert p.anchors_per_level == [8100, 2025]
    assert p.num_anchors == 10125  # jarvis-md: anchor_levels [8100, 10125] (cumulative)
    assert p.anchor_scales == pytest.approx([1.0, 2 ** (1 / 3), 2 ** (2 / 3)])
    shapes = p.target_shapes
    assert shapes["cls-c3"] == (9, 30, 30) and shapes["reg-c3"] == (36, 30, 30)
    assert shapes["cls-c4-msk"] == (9, 15, 15) and shapes["reg-c4-msk"] == (36, 15, 15)
    assert len(shapes) == 8
    flat = tutorial_params(separate_maps=False).target_shapes
    assert flat == {"cls": (10125, 1), "reg": (10125, 4), "cls-msk": (10125, 1), "reg-msk": (10125, 4)}
    assert "c3: grid 30x30" in p.summary()


def test_template_shapes_follow_scale_and_ratio():
    p = tutorial_params()
    t = p.template_shapes["c3"]
    assert len(t) == 9
    # ratio 1, scale 1 -> 32 x 32; ratio 0.5 (tall: h = s / sqrt(r)) -> 46 x 22 after MONAI's rounding
    assert (32.0, 32.0) in t
    assert t[0] == (46.0, 22.0)
    gen = make_anchor_generator(p)
    ext = gen.cell_anchors[0][:, 2:] - gen.cell_anchors[0][:, :2]
    assert [tuple(e) for e in ext.tolist()] == t  # the report is what the generator builds


def test_anchor_centres_are_cell_centres():
    """MONAI >= 1.6: centres at i * stride + stride // 2 (jarvis-md: the cell's top-left corner)."""
    p = BoxParams(image_shape=(64, 64), levels=(3,), anchor_shapes=(16,), anchor_ratios=(1,), anchor_scales=(0,))
    a = BoxAnchors(p)
    centres = (a.anchors[:, :2] + a.anchors[:, 2:]) / 2
    assert centres[0].tolist() == [4.0, 4.0]
    assert centres[1].tolist() == [4.0, 12.0]  # location-major: second anchor is one column to the right
    assert len(a) == 64
    assert (a.anchors_clipped >= 0).all() and (a.anchors_clipped <= 64).all()
    assert (a.anchors[0] < 0).any()  # unclipped anchors keep their size for deltas


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(anchor_shapes=(32, 300)), "larger than image_shape"),
        (dict(levels=(3, 5)), "not divisible by 2\\*\\*5"),
        (dict(anchor_shapes=(32,)), "one base anchor size per level"),
        (dict(iou_lower=0.6), "iou_lower <= iou_upper"),
        (dict(levels=(4, 3)), "strictly increasing"),
        (dict(image_shape=(240, 240, 3)), "two integers"),
        (dict(anchor_ratios=(0.0, 1.0)), "anchor_ratios"),
        (dict(classes=0), "classes"),
    ],
)
def test_ill_params(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tutorial_params(**kwargs)


def test_network_depth_check():
    p = tutorial_params()
    p.check_network_depth(4)
    with pytest.raises(ConfigError, match="deeper than the net"):
        p.check_network_depth(3, name="net")


def test_zero_thresholds_are_honoured():
    p = tutorial_params(iou_nms=0.0, cls_threshold=0.0)
    assert p.iou_nms == 0.0 and p.cls_threshold == 0.0
    assert torch.is_tensor(BoxAnchors(p).anchors)
