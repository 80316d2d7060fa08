# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The source document's FPN with RetinaNet heads."""

from __future__ import annotations

import math

import pytest
import torch

from tlk_components.boxes.params import BoxParams
from tlk_components.networks.fpn import BoxFPN
from tlk_components.utils.errors import ConfigError


def _params(**kw) -> BoxParams:
    args = dict(image_shape=(64, 64), levels=(2, 3), anchor_shapes=(8, 16))
    args.update(kw)
    return BoxParams(**args)


def test_output_maps_match_the_params():
    p = _params(classes=2)
    net = BoxFPN(p, in_channels=4, channels=(4, 8, 8, 8), fpn_channels=8, head_channels=8)
    out = net(torch.randn(2, 4, 64, 64))
    assert set(out) == {"classification", "box_regression"}
    a, k = p.num_anchors_per_location, p.classes
    assert [tuple(m.shape) for m in out["classification"]] == [(2, a * k, 16, 16), (2, a * k, 8, 8)]
    assert [tuple(m.shape) for m in out["box_regression"]] == [(2, a * 4, 16, 16), (2, a * 4, 8, 8)]
    net.eval()
    with torch.no_grad():
        same = net(torch.randn(1, 4, 64, 64))
    assert set(same) == set(out)  # same structure in evaluation


def test_slices_mode_uses_1x3x3_kernels():
    net = BoxFPN(_params(), channels=(4, 8, 8, 8), fpn_channels=8, head_channels=8, spatial_dims=3)
    out = net(torch.randn(1, 4, 3, 64, 64))
    assert tuple(out["classification"][0].shape) == (1, 9, 3, 16, 16)
    kernels = {tuple(m.kernel_size) for m in net.modules() if isinstance(m, torch.nn.Conv3d)}
    assert kernels <= {(1, 3, 3), (1, 1, 1)}


def test_prior_bias_and_parameter_free_upsampling():
    net = BoxFPN(
        _params(), channels=(4, 8, 8, 8), fpn_channels=8, head_channels=8, head_blocks=1, prior_probability=0.01
    )
    with torch.no_grad():
        probs = torch.sigmoid(net(torch.randn(1, 4, 64, 64))["classification"][0])
    assert abs(float(probs.mean()) - 0.01) < 0.005
    assert sum(p.numel() for p in net.upsample.parameters()) == 0
    bias = net.cls_heads["2"][-1].conv.bias
    torch.testing.assert_close(bias, torch.full_like(bias, -math.log(99.0)))
    assert len(net.cls_heads["2"]) == 2  # head_blocks blocks + final conv


def test_gradients_reach_the_first_layer():
    net = BoxFPN(_params(), channels=(4, 8, 8, 8), fpn_channels=8, head_channels=8)
    out = net(torch.randn(2, 4, 64, 64))
    (sum(m.sum() for m in out["classification"]) + sum(m.sum() for m in out["box_regression"])).backward()
    first = next(net.contracting[0].parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_ill_levels_deeper_than_network():
    with pytest.raises(ConfigError, match=r"level\(s\) \[4\] are deeper than the BoxFPN"):
        BoxFPN(_params(levels=(3, 4), anchor_shapes=(8, 16)), channels=(4, 8, 8, 8))


def test_ill_input_shape_and_arguments():
    net = BoxFPN(_params(), channels=(4, 8, 8, 8), fpn_channels=8, head_channels=8)
    with pytest.raises(ValueError, match="resize the slices"):
        net(torch.randn(1, 4, 96, 96))
    with pytest.raises(ValueError, match="expected 4-D"):
        net(torch.randn(4, 64, 64))
    with pytest.raises(ConfigError, match="norm"):
        BoxFPN(_params(), norm="layer")
    with pytest.raises(ConfigError, match="BoxParams"):
        BoxFPN({"levels": [3]})
