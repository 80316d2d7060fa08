# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Every bundle network compiles with ``torch.jit.script`` (how MONAI's ``ckpt_export`` and the Model Zoo's CI
export TorchScript) and the compiled module computes what the eager one does, after a save/load round trip."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.bundle import ConfigParser

from tlk_components.boxes.params import BoxParams
from tlk_components.networks.fpn import BoxFPN
from tlk_components.networks.mlp import MLP
from tlk_components.networks.se import SqueezeExcitation
from tlk_components.networks.unet3d import AttentionUNet3D, UNet3D

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def _round_trip(net: torch.nn.Module) -> torch.jit.ScriptModule:
    """Script ``net`` and reload it from bytes, as a ``model.ts`` would be."""
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buf)
    buf.seek(0)
    return torch.jit.load(buf)


def _max_diff(a: Any, b: Any) -> float:
    """Largest absolute difference of two outputs with the same structure (tensors, lists/tuples, dicts)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape
        return float((a - b).abs().max())
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        return max(_max_diff(a[k], b[k]) for k in a)
    assert isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b)
    return max(_max_diff(x, y) for x, y in zip(a, b, strict=True))


def _check(net: torch.nn.Module, x: torch.Tensor) -> Any:
    net.eval()
    scripted = _round_trip(net)
    with torch.no_grad():
        eager, compiled = net(x), scripted(x)
    assert _max_diff(eager, compiled) <= 1e-5
    return compiled


def test_unet3d_scripts() -> None:
    """The abdomen bundle's network_def (batch norm, bias), narrower."""
    torch.manual_seed(0)
    _check(UNet3D(out_channels=3, channels=(4, 8, 16), norm="batch", bias=True), torch.rand(1, 1, 8, 8, 4))


def test_unet3d_with_se_scripts() -> None:
    """The abdomen bundle's train_se.json variant: scSE after every level."""
    torch.manual_seed(0)
    net = UNet3D(out_channels=3, channels=(4, 8, 16), norm="instance", dropout=0.1, se_type="scse")
    _check(net, torch.rand(2, 1, 8, 4, 4))


@pytest.mark.parametrize(("se_type", "aggregation"), [("cse", "add"), ("sse", "add"), ("scse", "max")])
def test_se_blocks_script(se_type: str, aggregation: str) -> None:
    torch.manual_seed(0)
    _check(SqueezeExcitation(3, 8, se_type, reduction=2, aggregation=aggregation), torch.rand(2, 8, 4, 4, 4))


def test_unet3d_2d_scripts() -> None:
    torch.manual_seed(0)
    _check(UNet3D(spatial_dims=2, out_channels=2, channels=(4, 8, 16), se_type="sse"), torch.rand(1, 1, 8, 12))


def test_attention_unet_scripts() -> None:
    torch.manual_seed(0)
    _check(AttentionUNet3D(out_channels=3, channels=(4, 8, 16)), torch.rand(1, 1, 8, 8, 4))


def test_scripted_unet_keeps_the_shape_check() -> None:
    scripted = torch.jit.script(UNet3D(out_channels=2, channels=(4, 8, 16)).eval())
    with pytest.raises(torch.jit.Error, match=r"UNet3D: input spatial shape \(6, 8, 8\) must be a multiple of 4"):
        scripted(torch.rand(1, 1, 6, 8, 8))
    scripted = torch.jit.script(AttentionUNet3D(out_channels=2, channels=(4, 8)).eval())
    with pytest.raises(torch.jit.Error, match="AttentionUNet3D: input spatial shape"):
        scripted(torch.rand(1, 1, 5, 8, 8))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_box_fpn_scripts(spatial_dims: int) -> None:
    torch.manual_seed(0)
    params = BoxParams(image_shape=(32, 32), levels=(2, 3), anchor_shapes=(4, 8))
    net = BoxFPN(params, channels=(4, 8, 8, 8), fpn_channels=8, head_channels=8, spatial_dims=spatial_dims)
    x = torch.rand(1, 4, 32, 32) if spatial_dims == 2 else torch.rand(1, 4, 2, 32, 32)
    out = _check(net, x)
    assert set(out) == {"classification", "box_regression"}
    assert [tuple(m.shape[-2:]) for m in out["classification"]] == [(8, 8), (4, 4)]
    assert isinstance(net(x)["classification"], list)  # eager: the same Dict[str, List[Tensor]]


def test_box_fpn_scripted_shape_check() -> None:
    params = BoxParams(image_shape=(32, 32), levels=(2, 3), anchor_shapes=(4, 8))
    scripted = torch.jit.script(BoxFPN(params, channels=(4, 8, 8, 8), fpn_channels=8, head_channels=8).eval())
    with pytest.raises(torch.jit.Error, match=r"input slices are \(32, 16\), the BoxParams image_shape is \(32, 32\)"):
        scripted(torch.rand(1, 4, 32, 16))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_box_fpn_trace_fallback() -> None:
    """Tracing (the documented fallback, strict=False for a dict output) still works: tuples while tracing."""
    torch.manual_seed(0)
    params = BoxParams(image_shape=(32, 32), levels=(2, 3), anchor_shapes=(4, 8))
    net = BoxFPN(params, channels=(4, 8, 8, 8), fpn_channels=8, head_channels=8).eval()
    x = torch.rand(1, 4, 32, 32)
    traced = torch.jit.trace(net, x, strict=False, check_trace=False)
    with torch.no_grad():
        assert _max_diff(net(x), traced(x)) <= 1e-5


def test_mlp_scripts() -> None:
    torch.manual_seed(0)
    _check(MLP(dims=[784, 32, 32, 32, 10]), torch.rand(3, 1, 28, 28))


def test_kidney_monai_unet_scripts() -> None:
    """The kidney bundle's network_def (MONAI UNet) as configured in its inference.json."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "kidney_ct_da_segmentation" / "configs" / "inference.json"))
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    assert type(net).__name__ == "UNet"
    _check(net, torch.rand(1, 1, 16, 16, 16))
