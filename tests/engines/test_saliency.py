# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Tests of Grad-CAM for segmentation, the attention-gate recorder and the saliency writers."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.visualize import GradCAM
from torch import nn

from tlk_components.engines.inference.saliency import (
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


# --------------------------------------------------------------------------------------- readable PNGs
class _Recorder:
    """Records what the PNG writers pass to ``imshow`` and ``text`` (arrays, vmin/vmax, alpha)."""

    def __init__(self, monkeypatch) -> None:
        import matplotlib.axes

        self.images: list[dict] = []
        self.texts: list[tuple[float, float, str]] = []
        imshow, text = matplotlib.axes.Axes.imshow, matplotlib.axes.Axes.text
        rec = self

        def fake_imshow(ax, x, *args, **kwargs):
            rec.images.append({"x": np.asarray(x), **kwargs})
            return imshow(ax, x, *args, **kwargs)

        def fake_text(ax, x, y, s, *args, **kwargs):
            rec.texts.append((x, y, s))
            return text(ax, x, y, s, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, "imshow", fake_imshow)
        monkeypatch.setattr(matplotlib.axes.Axes, "text", fake_text)


def _phantom_ct() -> np.ndarray:
    """RAS (x, y, z) = (20, 16, 10): air, a body ellipse at 40 HU with a gas bubble, a separate table at 200 HU."""
    x, y = np.meshgrid(np.arange(20), np.arange(16), indexing="ij")
    body = ((x - 9.5) / 7) ** 2 + ((y - 8) / 5) ** 2 <= 1
    ct = np.full((20, 16, 10), -1000.0, np.float32)
    ct[body] = 40.0
    ct[9:11, 7:9, :] = -900.0  # bowel gas inside the body
    ct[:, 15, :] = 200.0  # the table, not touching the body
    return ct


def test_soft_tissue_window_and_body_mask() -> None:
    from tlk_components.engines.inference.saliency import body_mask
    from tlk_components.engines.inference.segmentation import display_window

    ct = _phantom_ct()
    assert display_window(ct) == (-160.0, 240.0)  # W 400 / L 40, whatever the volume's percentiles
    lo, hi = display_window(np.linspace(0, 1, 50))  # not HU: percentiles of the normalised intensities
    assert 0.0 <= lo < hi <= 1.0
    mask = body_mask(ct)
    assert not mask[ct == -1000].any() and not mask[:, 15].any()  # air and the table excluded
    assert mask[9:11, 7:9].all() and mask[ct == 40].all()  # gas inside the body kept


def test_pngs_share_the_radiological_convention_with_markers(tmp_path, monkeypatch) -> None:
    """Saliency and prediction overlays show the patient's right (high RAS x) on the image's left, marked R / L."""
    from tlk_components.engines.inference.segmentation import save_overlay_png

    ct = _phantom_ct()
    ct[18, 8, :] = 1000.0  # a bright marker in the patient's right (RAS x increases to the right)
    rec = _Recorder(monkeypatch)
    lab = np.zeros(ct.shape, np.uint8)
    lab[5:14, 4:12, 3:7] = 1
    save_overlay_png(ct, lab, tmp_path / "overlay.png")
    save_saliency({"gradcam": torch.rand(1, *ct.shape)}, ct, nib.Nifti1Image(ct, np.eye(4)), tmp_path, "c", ["x"])
    cts = [im["x"] for im in rec.images if im.get("cmap") == "gray"]
    assert len(cts) == 3  # two overlay panels and one saliency panel
    for shown in cts:
        col = np.nonzero((shown == 1000.0).any(0))[0]
        assert list(col) == [1]  # x = 18 of 20 -> second column from the image's left
    for im in rec.images:
        if im.get("cmap") == "gray":
            assert (im["vmin"], im["vmax"]) == (-160.0, 240.0)
    assert rec.texts.count((0.02, 0.5, "R")) == 3 and rec.texts.count((0.98, 0.5, "L")) == 3


def test_saliency_png_masks_air_and_shows_the_organ_centre(tmp_path, monkeypatch) -> None:
    import tlk_components.engines.inference.saliency as sal

    ct = _phantom_ct()
    seg = np.zeros(ct.shape, np.int64)
    seg[6:12, 5:11, 4:9] = 2  # organ 2 spans slices 4..8: centroid 6
    seg[12:14, 5:7, 1:3] = 1  # organ 1: slices 1, 2 (centroid 1.5 -> 2)
    cam = torch.ones(2, *ct.shape)
    cam[:, :, :, 0] = 2.0  # the maps peak on the edge slice 0
    zs: list[int] = []
    real = sal.axial_display
    monkeypatch.setattr(sal, "axial_display", lambda v, z: (zs.append(int(z)), real(v, z))[1])
    rec = _Recorder(monkeypatch)
    ref = nib.Nifti1Image(ct, np.eye(4))
    att = torch.ones(1, *ct.shape)
    save_saliency({"gradcam": cam / 2, "attention": att}, ct, ref, tmp_path, "c", ["a", "b"], segmentation=seg)
    assert zs[0::3] == [sal.centroid_slice(seg == 1), sal.centroid_slice(seg == 2), sal.centroid_slice(seg > 0)]
    assert zs[0::3] == [2, 6, 6]  # all organs: (180 * 6 + 8 * 1.5) / 188 = 5.8
    body = sal.body_mask(ct)
    overlays = [im for im in rec.images if im.get("cmap") == "jet"]
    for im, z in zip(overlays, zs[0::3], strict=True):
        alpha = np.asarray(im["alpha"])
        air = sal.axial_display(~body, z)
        assert float(alpha[air].max()) == 0.0 and float(alpha[~air].min()) > 0.0  # painted on the body only
    save_saliency({"gradcam": cam / 2}, ct, ref, tmp_path, "d", ["a", "b"])  # no segmentation: the peak slice
    assert zs[-6::3] == [0, 0]


def test_gradcam_has_no_window_seams() -> None:
    """With region="prediction" each window would get its own Grad-CAM weight (the share of predicted voxels in
    it); the whole-volume pass gives one weight, so the map is proportional to the analytic relu(x) everywhere,
    continuous across where the window borders would be."""
    x = torch.linspace(-1.0, 3.0, 24).view(1, 1, 24, 1, 1).expand(1, 1, 24, 8, 8).clone()
    x[..., :12, :4, :] = -0.5  # first windows: fewer voxels predicted as class 1
    expected = torch.relu(x[0, 0]) / torch.relu(x).max()
    whole = SaliencyMapper(_Linear(), "feat", roi_size=(8, 8, 8), overlap=0.25)(x)["gradcam"][0]
    assert torch.allclose(whole, expected, atol=1e-5)
    windows = SaliencyMapper(_Linear(), "feat", roi_size=(8, 8, 8), overlap=0.25, whole_volume_max_voxels=0)(x)
    assert not torch.allclose(windows["gradcam"][0], expected, atol=1e-2)  # what the per-window maps looked like
