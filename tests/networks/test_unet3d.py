# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the 3D U-Net, the squeeze-and-excitation blocks and the validated Attention U-Net."""

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks import ChannelSELayer
from monai.networks.nets import AttentionUnet

from tlk_components.networks.se import SpatialSELayer, SqueezeExcitation, make_se_block
from tlk_components.networks.unet3d import AttentionUNet3D, UNet3D
from tlk_components.utils.errors import ConfigError


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_source_lecture_layer_widths() -> None:
    """channels=(64,128,256,512) gives the lecture's ec0..ec7 / dc8..dc0 convolution shapes."""
    net = UNet3D(in_channels=1, out_channels=14)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items() if k.endswith("weight")}
    expected = {
        "encoders.0.conv1.conv.weight": (32, 1, 3, 3, 3),  # ec0
        "encoders.0.conv2.conv.weight": (64, 32, 3, 3, 3),  # ec1
        "encoders.1.conv1.conv.weight": (64, 64, 3, 3, 3),  # ec2
        "encoders.1.conv2.conv.weight": (128, 64, 3, 3, 3),  # ec3
        "encoders.2.conv1.conv.weight": (128, 128, 3, 3, 3),  # ec4
        "encoders.2.conv2.conv.weight": (256, 128, 3, 3, 3),  # ec5
        "bottleneck.conv1.conv.weight": (256, 256, 3, 3, 3),  # ec6
        "bottleneck.conv2.conv.weight": (512, 256, 3, 3, 3),  # ec7
        "upsamples.2.conv.weight": (512, 512, 2, 2, 2),  # dc9 (transposed: in, out)
        "decoders.2.conv1.conv.weight": (256, 768, 3, 3, 3),  # dc8: 256 + 512 -> 256
        "decoders.2.conv2.conv.weight": (256, 256, 3, 3, 3),  # dc7
        "upsamples.1.conv.weight": (256, 256, 2, 2, 2),  # dc6
        "decoders.1.conv1.conv.weight": (128, 384, 3, 3, 3),  # dc5: 128 + 256 -> 128
        "decoders.1.conv2.conv.weight": (128, 128, 3, 3, 3),  # dc4
        "upsamples.0.conv.weight": (128, 128, 2, 2, 2),  # dc3
        "decoders.0.conv1.conv.weight": (64, 192, 3, 3, 3),  # dc2: 64 + 128 -> 64
        "decoders.0.conv2.conv.weight": (64, 64, 3, 3, 3),  # dc1
        "head.conv.weight": (14, 64, 1, 1, 1),  # dc0
    }
    assert shapes == expected
    # the lecture's convolutions have no bias (only the logit head has one here)
    assert [k for k in net.state_dict() if k.endswith("bias")] == ["head.conv.bias"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"norm": None},
        {"norm": "batch"},
        {"norm": "instance", "bias": True, "dropout": 0.1},
        {"norm": "instance", "se_type": "cse"},
        {"norm": "instance", "se_type": "sse"},
        {"norm": "instance", "se_type": "scse", "se_reduction": 4},
    ],
)
def test_unet3d_shapes_and_gradients(kwargs: dict) -> None:
    torch.manual_seed(0)
    net = UNet3D(in_channels=2, out_channels=5, channels=(8, 16, 32), **kwargs)
    x = torch.rand(2, 2, 16, 8, 12)
    y = net(x)
    assert y.shape == (2, 5, 16, 8, 12)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_unet3d_2d() -> None:
    net = UNet3D(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), norm="batch")
    assert net(torch.rand(2, 1, 8, 6)).shape == (2, 3, 8, 6)


def test_se_option_adds_blocks() -> None:
    plain = UNet3D(out_channels=3, channels=(8, 16, 32), norm="instance")
    se = UNet3D(out_channels=3, channels=(8, 16, 32), norm="instance", se_type="scse")
    assert _n_params(se) > _n_params(plain)
    blocks = [m for m in se.modules() if isinstance(m, SqueezeExcitation)]
    assert len(blocks) == 5  # 2 encoders + bottleneck + 2 decoders
    assert not any(isinstance(m, SqueezeExcitation) for m in plain.modules())


def test_cse_is_monai_block_and_scse_adds_branches() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 8, 4, 4, 4)
    block = SqueezeExcitation(3, 8, "scse", reduction=2)
    assert isinstance(block.cse, ChannelSELayer)
    assert torch.allclose(block(x), block.cse(x) + block.sse(x))
    mx = SqueezeExcitation(3, 8, "scse", aggregation="max")
    assert torch.allclose(mx(x), torch.maximum(mx.cse(x), mx.sse(x)))
    # sSE is x * sigmoid(1x1 conv): with zero weights and bias the gate is 0.5 everywhere
    sse = SpatialSELayer(3, 8)
    torch.nn.init.zeros_(sse.conv.weight)
    torch.nn.init.zeros_(sse.conv.bias)
    assert torch.allclose(sse(x), 0.5 * x)
    assert isinstance(make_se_block(3, 8, None), torch.nn.Identity)


def test_attention_unet_matches_monai() -> None:
    """The wrapper only validates: same state-dict keys and the same output as MONAI's AttentionUnet."""
    torch.manual_seed(0)
    ours = AttentionUNet3D(out_channels=4, channels=(8, 16, 32), strides=(2, 2)).eval()
    ref = AttentionUnet(3, 1, 4, channels=(8, 16, 32), strides=(2, 2)).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.rand(1, 1, 16, 16, 8)
    assert torch.allclose(ours(x), ref(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"channels": [8]}, "at least 2"),
        ({"channels": [8, 15]}, "even"),
        ({"channels": "16"}, "list"),
        ({"out_channels": 1}, "out_channels"),
        ({"in_channels": 0}, "in_channels"),
        ({"norm": "layer"}, "norm"),
        ({"se_type": "se"}, "se_type"),
        ({"se_reduction": 0}, "se_reduction"),
        ({"dropout": 1.0}, "dropout"),
        ({"spatial_dims": 4}, "spatial_dims"),
    ],
)
def test_ill_unet3d_args(kwargs: dict, match: str) -> None:
    args = {"out_channels": 3, "channels": (8, 16)} | kwargs
    with pytest.raises(ConfigError, match=match):
        UNet3D(**args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strides": [2]}, "strides"),
        ({"strides": [2, 0]}, "strides"),
        ({"kernel_size": 2}, "odd"),
        ({"channels": [8]}, "at least 2"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_ill_attention_unet_args(kwargs: dict, match: str) -> None:
    args = {"out_channels": 3, "channels": (8, 16, 32)} | kwargs
    with pytest.raises(ConfigError, match=match):
        AttentionUNet3D(**args)


def test_ill_se_reduction_too_large() -> None:
    with pytest.raises(ConfigError, match="se_reduction"):
        SqueezeExcitation(3, 4, "cse", reduction=8)


@pytest.mark.parametrize(
    "net", [UNet3D(out_channels=3, channels=(4, 8, 16)), AttentionUNet3D(out_channels=3, channels=(4, 8, 16))]
)
def test_ill_input_not_divisible(net: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="multiple of 4.*DivisiblePad"):
        net(torch.rand(1, 1, 16, 10, 16))
