# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Tests of Grad-CAM for segmentation, the attention-gate recorder and the saliency writers."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.visualize import GradCAM
from torch import nn

from tlk_components.engines.saliency import (
    AttentionGateRecorder,
    SaliencyMapper,
    SegmentationGradCAM,
    attention_gate_names,
    check_layer,
    layer_names,
    save_saliency,
)
from tlk_components.networks.unet3d import AttentionUNet3D, UNet3D
from tlk_components.utils.errors import ConfigError


def _unet() -> UNet3D:
    torch.manual_seed(0)
    return UNet3D(out_channels=4, channels=(4, 8, 16), norm="instance", bias=True).eval()


def _att() -> AttentionUNet3D:
    torch.manual_seed(0)
    return AttentionUNet3D(out_channels=4, channels=(4, 8, 16)).eval()


@pytest.mark.parametrize("make, layer", [(_unet, "decoders.1"), (_unet, "bottleneck"), (_att, "model.1.merge")])
def test_volume_region_equals_monai_gradcam(make, layer: str) -> None:
    """region="volume" is MONAI's GradCAM (class score summed over the volume), computed in one forward pass."""
    net = make()
    x = torch.rand(1, 1, 16, 12, 8)
    _, ours = SegmentationGradCAM(net, layer, region="volume")(x)
    ref = GradCAM(net, layer, postprocessing=lambda t: t)
    expected = torch.cat([ref(x, class_idx=c) for c in (1, 2, 3)], dim=1)
    assert ours.shape == (1, 3, 16, 12, 8)
    assert torch.allclose(ours, expected, atol=1e-6)


class _Linear(nn.Module):
    """logit_0 = 0, logit_1 = x: Grad-CAM at ``feat`` must be proportional to x (analytic reference)."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv3d(1, 1, 1, bias=False)
        self.head = nn.Conv3d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.feat.weight.fill_(1.0)
            self.head.weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(x))


def test_analytic_gradcam_on_linear_network() -> None:
    x = torch.zeros(1, 1, 6, 6, 6)
    x[..., 1:3, 1:3, 1:3] = 2.0
    x[..., 4, 4, 4] = -1.0  # predicted as background (logit 1 < 0)
    logits, cam = SegmentationGradCAM(_Linear(), "feat", region="prediction")(x)
    # S = sum over voxels predicted as class 1 (x > 0) of x; dS/dA = mask; w = mean(mask); L = relu(w * x)
    mask = (x > 0).float()
    expected = torch.relu(mask.mean() * x)
    assert torch.allclose(cam, expected)
    assert torch.equal(logits.argmax(1, keepdim=True).float(), mask)


def test_prediction_region_is_zero_for_unpredicted_class() -> None:
    net = _unet()
    x = torch.rand(1, 1, 8, 8, 8)
    logits, cams = SegmentationGradCAM(net, "decoders.0", region="prediction")(x)
    predicted = {int(c) for c in logits.argmax(1).unique()}
    for i, c in enumerate((1, 2, 3)):
        if c not in predicted:
            assert float(cams[0, i].abs().max()) == 0.0
    assert (cams >= 0).all()
    assert net.training is False


def test_layer_names_and_ill_layer() -> None:
    net = _unet()
    names = layer_names(net)
    assert {"encoders.0", "bottleneck", "decoders.1", "head"} <= set(names)
    assert check_layer(net, "decoders.1") == "decoders.1"
    with pytest.raises(ConfigError, match=r"decoder\.1.*not a layer of UNet3D.*Closest: \['decoders\.1'.*Valid layers"):
        check_layer(net, "decoder.1")
    with pytest.raises(ConfigError, match="bottleneck"):  # the message lists every valid layer
        SegmentationGradCAM(net, "no_such_layer")


def test_ill_class_index() -> None:
    with pytest.raises(ConfigError, match="classes \\[7\\] do not exist"):
        SegmentationGradCAM(_unet(), "decoders.0", classes=[1, 7])(torch.rand(1, 1, 8, 8, 8))


def test_attention_gate_recorder() -> None:
    net = _att()
    assert attention_gate_names(net) == ["model.1.attention.psi", "model.1.submodule.1.attention.psi"]
    assert attention_gate_names(_unet()) == []
    x = torch.rand(1, 1, 16, 16, 8)
    with AttentionGateRecorder(net) as rec:
        net(x)
    fine, coarse = rec.coefficients["model.1.attention.psi"], rec.coefficients["model.1.submodule.1.attention.psi"]
    assert fine.shape == (1, 1, 16, 16, 8) and coarse.shape == (1, 1, 8, 8, 4)
    assert float(fine.min()) >= 0 and float(fine.max()) <= 1
    n_hooks = sum(len(m._forward_hooks) for m in net.modules())
    assert n_hooks == 0  # hooks removed on exit


@pytest.mark.parametrize("make, layer, n_gates", [(_unet, "decoders.1", 0), (_att, "model.1.merge", 2)])
def test_saliency_mapper_whole_volume(make, layer: str, n_gates: int) -> None:
    net = make()
    mapper = SaliencyMapper(net, layer, roi_size=(8, 8, 8), overlap=0.25, region="volume")
    out = mapper(torch.rand(1, 1, 12, 10, 9))
    assert out["gradcam"].shape == (3, 12, 10, 9)
    assert out["attention"].shape == (n_gates, 12, 10, 9)
    peaks = out["gradcam"].flatten(1).amax(1)
    assert torch.all((peaks == 0) | torch.isclose(peaks, torch.ones_like(peaks)))
    if n_gates:
        assert float(out["attention"].min()) >= 0 and float(out["attention"].max()) <= 1


def test_save_saliency_nifti_and_png(tmp_path) -> None:
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, -5.0]
    ref = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), affine)
    ref.set_sform(affine, code=1)
    ref.set_qform(affine, code=1)
    ct = np.linspace(-1000, 300, 120, dtype=np.float32).reshape(6, 5, 4)
    maps = {"gradcam": torch.rand(2, 6, 5, 4), "attention": torch.rand(1, 6, 5, 4)}
    written = save_saliency(maps, ct, ref, tmp_path, "img0001", ["spleen", "liver"], ["model.1.attention.psi"])
    names = sorted(p.name for p in written)
    assert names == [
        "attention.png",
        "attention_gate0.nii.gz",
        "gradcam.png",
        "gradcam_liver.nii.gz",
        "gradcam_spleen.nii.gz",
    ]
    saved = nib.load(tmp_path / "img0001" / "gradcam_liver.nii.gz")
    assert np.allclose(saved.affine, affine) and saved.shape == (6, 5, 4)
    assert np.allclose(saved.get_fdata(), maps["gradcam"][1].numpy(), atol=1e-6)
    assert (tmp_path / "img0001" / "gradcam.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="resample the maps"):
        save_saliency({"gradcam": torch.rand(2, 3, 3, 3)}, ct, ref, tmp_path, "bad", ["a", "b"])
