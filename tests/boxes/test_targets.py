# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Mask -> boxes -> anchor targets (per level and flat) and their loss masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlk_components.boxes.anchors import BoxAnchors
from tlk_components.boxes.coder import BoxDeltaCoder
from tlk_components.boxes.params import BoxParams
from tlk_components.boxes.targets import BoxTargetBuilder, BoxTargetsd, flat_to_maps, maps_to_flat, mask_to_boxes


def _params(**kw) -> BoxParams:
    args = dict(image_shape=(96, 96), levels=(2, 3), anchor_shapes=(12, 24))
    args.update(kw)
    return BoxParams(**args)


def test_mask_to_boxes_components_padding_and_small_blobs():
    m = np.zeros((40, 50), dtype=np.uint8)
    m[5:15, 10:30] = 1  # 200 px
    m[30:32, 40:42] = 1  # 4 px < 0.1 * 200 -> dropped
    m[20, 0] = m[21, 1] = 1  # diagonal neighbours: two components (4-connectivity), 1 px each -> dropped
    m[25:35, 45:50] = 1  # 50 px, touches the right border
    boxes, labels = mask_to_boxes(m, min_size_blob=0.1, padding=0)
    assert boxes.tolist() == [[5.0, 10.0, 15.0, 30.0], [25.0, 45.0, 35.0, 50.0]]  # exclusive max
    assert labels.tolist() == [1, 1]
    padded, _ = mask_to_boxes(m, min_size_blob=0.1, padding=2)
    assert padded.tolist() == [[3.0, 8.0, 17.0, 32.0], [23.0, 43.0, 37.0, 50.0]]  # clipped to the image
    all_boxes, _ = mask_to_boxes(m, min_size_blob=0.0)
    assert len(all_boxes) == 5
    empty, empty_labels = mask_to_boxes(np.zeros((1, 8, 8)))
    assert empty.shape == (0, 4) and empty_labels.shape == (0,)


def test_mask_to_boxes_majority_label_and_bad_values():
    m = np.zeros((10, 10), dtype=np.uint8)
    m[2:5, 2:5] = 2
    m[2, 2] = 1  # jarvis would take this first pixel's value
    assert mask_to_boxes(m, classes=2)[1].tolist() == [2]
    with pytest.raises(ValueError, match=r"label values \[2\].*binarise"):
        mask_to_boxes(m, classes=1)
    with pytest.raises(ValueError, match="2-D slice"):
        mask_to_boxes(np.zeros((2, 4, 4)))


def test_targets_masks_and_shapes():
    p = _params()
    builder = BoxTargetBuilder(p)
    box = torch.tensor([[20.0, 30.0, 44.0, 50.0]])
    t = builder.flat(box, torch.tensor([1]))
    assert t["cls"].shape == (p.num_anchors, 1) and t["reg"].shape == (p.num_anchors, 4)
    pos = t["cls"][:, 0] == 1
    ign = t["cls-msk"][:, 0] == 0
    assert pos.sum() >= 1 and ign.sum() >= 1
    assert not (pos & ign).any()
    # regression is learnt on positives only
    assert torch.equal(t["reg-msk"][:, 0] == 1, pos)
    assert (t["reg"][~pos] == 0).all()
    # regression targets decode back to the box
    anchors = BoxAnchors(p).anchors
    torch.testing.assert_close(BoxDeltaCoder().decode(t["reg"][pos], anchors[pos]), box.expand(int(pos.sum()), 4))
    # per-level maps have the reported shapes and flatten back to the flat targets
    maps = builder(box, torch.tensor([1]))
    assert {k: tuple(v.shape) for k, v in maps.items()} == p.target_shapes
    flat_cls = maps_to_flat([maps[f"cls-c{c}"][None] for c in p.levels], 1)[0]
    assert torch.equal(flat_cls, t["cls"])
    flat_reg = maps_to_flat([maps[f"reg-c{c}-msk"][None] for c in p.levels], 4)[0]
    assert torch.equal(flat_reg, t["reg-msk"])
    flat_params = _params(separate_maps=False)
    assert set(BoxTargetBuilder(flat_params)(box, torch.tensor([1]))) == {"cls", "cls-msk", "reg", "reg-msk"}


def test_multi_class_one_hot():
    p = _params(classes=3)
    t = BoxTargetBuilder(p).flat(torch.tensor([[20.0, 30.0, 44.0, 50.0]]), torch.tensor([3]))
    pos = t["reg-msk"][:, 0] == 1
    assert (t["cls"][pos] == torch.tensor([0.0, 0.0, 1.0])).all()
    with pytest.raises(ValueError, match="1..3"):
        BoxTargetBuilder(p).flat(torch.tensor([[20.0, 30.0, 44.0, 50.0]]), torch.tensor([4]))


def test_boxes_partly_outside_are_clipped_and_outside_dropped():
    p = _params()
    builder = BoxTargetBuilder(p)
    inside = builder.flat(torch.tensor([[80.0, 70.0, 96.0, 96.0]]), torch.tensor([1]))
    partly = builder.flat(torch.tensor([[80.0, 70.0, 130.0, 120.0]]), torch.tensor([1]))
    for k in inside:
        torch.testing.assert_close(partly[k], inside[k])
    outside = builder.flat(torch.tensor([[100.0, 100.0, 120.0, 120.0]]), torch.tensor([1]))
    assert outside["cls"].sum() == 0 and outside["reg-msk"].sum() == 0 and (outside["cls-msk"] == 1).all()


def test_empty_slice_gives_all_negative_targets_and_transform_collates():
    p = _params()
    tf = BoxTargetsd(keys="label", params=p)
    d = tf({"image": torch.zeros(4, 96, 96), "label": torch.zeros(1, 96, 96)})
    assert d["cls_target"].sum() == 0 and (d["cls_weight"] == 1).all() and d["reg_weight"].sum() == 0
    assert int(d["num_boxes"]) == 0
    lbl = torch.zeros(1, 96, 96)
    lbl[0, 10:30, 40:60] = 1
    e = tf({"image": torch.zeros(4, 96, 96), "label": lbl})
    batch = torch.utils.data.default_collate([d, e])
    assert batch["cls_target"].shape == (2, p.num_anchors, 1) and batch["num_boxes"].tolist() == [0, 1]


def test_flat_to_maps_round_trip():
    p = _params()
    flat = torch.arange(p.num_anchors * 2, dtype=torch.float32).reshape(1, p.num_anchors, 2)
    maps = flat_to_maps(flat, p, "x")
    assert maps["x-c2"].shape == (1, 18, 24, 24)
    torch.testing.assert_close(maps_to_flat([maps["x-c2"], maps["x-c3"]], 2), flat)
