# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the shared CT segmentation inference: Gaussian sliding window, mirroring TTA, inversion to the
original grid and NIfTI/PNG writing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, decollate_batch

from tlk_components.data import kidney
from tlk_components.data.inputs import case_name, input_datalist
from tlk_components.engines.inference.segmentation import (
    SaveNiftiLikeInputd,
    ct_preprocessing,
    prediction_postprocessing,
)
from tlk_components.engines.inference.sliding_window import GaussianSlidingWindowInferer
from tlk_components.utils.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return kidney.write_demo(tmp_path_factory.mktemp("inf") / "demo", size="tiny", seed=2)


class _Threshold(torch.nn.Module):
    """Two-class 'network': channel 1 = input above 0.5 (a perfect segmenter of a mask fed as image)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x > 0.5).float()
        return torch.cat([1 - fg, fg], dim=1) * 10.0


def test_sliding_window_equals_full_forward_for_pointwise_net():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, kernel_size=1)
    x = torch.randn(1, 1, 20, 18, 11)
    with torch.no_grad():
        full = net(x)
        sw = GaussianSlidingWindowInferer(roi_size=(8, 8, 8))(x, net)
        tta = GaussianSlidingWindowInferer(roi_size=(8, 8, 8), mirror_axes=(0, 1, 2))(x, net)
    torch.testing.assert_close(sw, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tta, full, atol=1e-5, rtol=1e-4)


def test_mirroring_averages_all_flips():
    inf = GaussianSlidingWindowInferer(roi_size=(4, 4, 4), mirror_axes=(0, 1, 2))
    assert len(inf.flips()) == 8 and () in inf.flips() and (2, 3, 4) in inf.flips()

    class Ramp(torch.nn.Module):  # output depends on position inside the window: not flip-equivariant
        def forward(self, x):
            ramp = torch.linspace(0, 1, x.shape[2]).view(1, 1, -1, 1, 1)
            return x + ramp

    x = torch.zeros(1, 1, 4, 4, 4)
    plain = GaussianSlidingWindowInferer(roi_size=(4, 4, 4))(x, Ramp())
    flip0 = GaussianSlidingWindowInferer(roi_size=(4, 4, 4), mirror_axes=(0,))(x, Ramp())
    torch.testing.assert_close(flip0, torch.full_like(x, 0.5))  # ramp + reversed ramp, averaged
    assert not torch.allclose(plain, flip0)


def test_tuple_outputs_use_first_item():
    net = torch.nn.Conv3d(1, 2, 1)
    x = torch.randn(1, 1, 6, 6, 6)
    with torch.no_grad():
        out = GaussianSlidingWindowInferer(roi_size=(6, 6, 6))(x, lambda t: (net(t), [t]))
        torch.testing.assert_close(out, net(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"overlap": 1.0}, "overlap"),
        ({"mirror_axes": (3,)}, "mirror_axes"),
        ({"roi_size": (0, 4, 4)}, "roi_size"),
        ({"sigma_scale": 0}, "sigma_scale"),
    ],
)
def test_ill_inferer_arguments(kwargs, match):
    args = {"roi_size": (4, 4, 4), **kwargs}
    with pytest.raises(ConfigError, match=match):
        GaussianSlidingWindowInferer(**args)


def test_prediction_back_on_original_grid_affine_and_header(demo, tmp_path):
    """A mask fed through preprocessing (RAS + resampling) and a perfect segmenter comes back on the KiTS19 grid
    (slices first) with the input's affine and header, and matches the original mask."""
    items = [{"image": str(demo / f"kits19/case_0000{i}/segmentation.nii.gz")} for i in range(2)]
    pre = ct_preprocessing(spacing=(5.0, 5.0, 6.0), normalize=False)
    post = prediction_postprocessing(preprocessing=pre, output_dir=tmp_path / "out")
    inf = GaussianSlidingWindowInferer(roi_size=(16, 16, 16), mirror_axes=(0, 1, 2))
    for batch in DataLoader(Dataset(items, pre), batch_size=1):
        with torch.no_grad():
            batch["pred"] = inf(batch["image"], _Threshold())
        for case in decollate_batch(batch):
            post(case)
    for i in range(2):
        ref = nib.load(demo / f"kits19/case_0000{i}/segmentation.nii.gz")
        out = nib.load(tmp_path / f"out/case_0000{i}_seg.nii.gz")
        assert out.shape == ref.shape and nib.aff2axcodes(out.affine) == ("I", "P", "L")
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
        assert out.header.get_zooms() == ref.header.get_zooms() and out.get_data_dtype() == np.uint8
        a, b = np.asarray(out.dataobj) > 0, np.asarray(ref.dataobj) > 0
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.8, dice  # resampled twice (bilinear on probabilities), same anatomy in the same place
        png = tmp_path / f"out/case_0000{i}_overlay.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ill_prediction_not_inverted(demo, tmp_path):
    src = str(demo / "kits19/case_00000/imaging.nii.gz")
    from monai.data import MetaTensor

    pred = MetaTensor(torch.zeros(1, 3, 3, 3), meta={"filename_or_obj": src})
    with pytest.raises(DatasetError, match="invert the preprocessing"):
        SaveNiftiLikeInputd("pred", output_dir=tmp_path)({"pred": pred})
    with pytest.raises(DatasetError, match="filename_or_obj"):
        SaveNiftiLikeInputd("pred", output_dir=tmp_path)({"pred": torch.zeros(1, 3, 3, 3)})
    with pytest.raises(ConfigError, match="plans_file"):
        ct_preprocessing(normalize=True)


def test_input_datalist_layouts(demo, tmp_path):
    kits = input_datalist(demo / "kits19")
    assert len(kits) == 4 and case_name(kits[0]["image"]) == "case_00000"
    amos = input_datalist(demo / "amos22")
    assert len(amos) == 4 and case_name(amos[0]["image"]) == "amos_0001"
    assert case_name("/x/imagesTr/la_003_0000.nii.gz") == "la_003"
    # the KiTS19 repository clone keeps its cases in data/
    import shutil

    shutil.copytree(demo / "kits19" / "case_00001", tmp_path / "kits19" / "data" / "case_00001")
    clone = input_datalist(tmp_path / "kits19")
    assert [case_name(i["image"]) for i in clone] == ["case_00001"]
    with pytest.raises(DatasetError, match="no .nii"):
        input_datalist(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        input_datalist(tmp_path / "nope")


def test_save_like_input_keeps_distinct_qform_and_sform(tmp_path):
    """A reference whose qform and sform differ (both coded) keeps both, with their codes, in label maps and in
    float maps (save_nifti_like); a volume of the wrong shape is refused."""
    from monai.data import MetaTensor

    from tlk_components.engines.inference.segmentation import save_nifti_like

    sform = np.diag([-3.0, -3.0, 4.0, 1.0])
    sform[:3, 3] = (10.0, 20.0, -30.0)
    qform = np.diag([-3.0, -3.0, 4.0, 1.0])
    ref = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), sform)
    ref.set_sform(sform, code=2)
    ref.set_qform(qform, code=1)
    src = tmp_path / "img0001.nii.gz"
    nib.save(ref, src)
    pred = MetaTensor(torch.ones(1, 4, 5, 6), meta={"filename_or_obj": str(src)})
    SaveNiftiLikeInputd("pred", output_dir=tmp_path / "out")({"pred": pred})
    save_nifti_like(np.full((4, 5, 6), 0.5), nib.load(src), tmp_path / "out/map.nii.gz", descrip="grad-cam spleen")
    for name, dtype in (("img0001_seg.nii.gz", np.uint8), ("map.nii.gz", np.float32)):
        out = nib.load(tmp_path / "out" / name)
        assert out.get_data_dtype() == dtype
        q, qcode = out.get_qform(coded=True)
        s, scode = out.get_sform(coded=True)
        assert (int(qcode), int(scode)) == (1, 2)
        np.testing.assert_allclose(q, qform, atol=1e-5)
        np.testing.assert_allclose(s, sform, atol=1e-5)
    assert bytes(nib.load(tmp_path / "out/map.nii.gz").header["descrip"]).startswith(b"grad-cam spleen")
    with pytest.raises(DatasetError, match="differs from the input"):
        save_nifti_like(np.zeros((2, 2, 2)), nib.load(src), tmp_path / "out/bad.nii.gz")
