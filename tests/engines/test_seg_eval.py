# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the per-organ Dice / HD95 evaluation (metrics, ignite report, folder evaluation, bad input)."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from scipy import ndimage

from tlk_components.engines.evaluators.segmentation import (
    SegmentationReport,
    case_metrics,
    check_label_files,
    evaluate_folders,
)
from tlk_components.utils.errors import ConfigError, DatasetError

ORGANS = ["spleen", "liver", "aorta"]


def _cube_labels() -> tuple[torch.Tensor, torch.Tensor]:
    gt = torch.zeros(1, 20, 18, 16)
    gt[0, 3:10, 3:10, 3:9] = 1
    gt[0, 12:17, 10:15, 8:13] = 2
    pred = gt.clone()
    pred[0, 3:10, 3:10, 3:9] = 0
    pred[0, 4:11, 3:10, 3:9] = 1  # spleen shifted by one voxel along x
    pred[0, 12:17, 10:15, 12] = 0  # liver loses a slice
    return pred, gt


def _reference_hd95(p: np.ndarray, g: np.ndarray, spacing: tuple[float, ...]) -> float:
    """max of the two directed 95th-percentile surface distances (MONAI's definition), by brute force."""

    def edges(m: np.ndarray) -> np.ndarray:
        return m ^ ndimage.binary_erosion(m)

    ep, eg = edges(p), edges(g)
    d_to_g = ndimage.distance_transform_edt(~eg, sampling=spacing)[ep]
    d_to_p = ndimage.distance_transform_edt(~ep, sampling=spacing)[eg]
    return max(np.percentile(d_to_g, 95), np.percentile(d_to_p, 95))


def test_case_metrics_reference() -> None:
    pred, gt = _cube_labels()
    spacing = (1.5, 1.0, 2.0)
    m = case_metrics(pred, gt, num_classes=4, spacing=spacing)
    for i, c in enumerate((1, 2)):
        p, g = (pred[0] == c).numpy(), (gt[0] == c).numpy()
        dice = 2 * (p & g).sum() / (p.sum() + g.sum())
        assert m["dice"][i] == pytest.approx(dice, rel=1e-6)
        assert m["hd95"][i] == pytest.approx(_reference_hd95(p, g, spacing), rel=1e-5)
    # organ 3 is in neither label nor prediction: NaN, left out of means
    assert math.isnan(m["dice"][2]) and math.isnan(m["hd95"][2])


def test_onehot_input_equals_label_map() -> None:
    pred, gt = _cube_labels()
    onehot = torch.nn.functional.one_hot(pred[0].long(), 4).movedim(-1, 0).float()
    a = case_metrics(pred, gt, 4)
    b = case_metrics(onehot, gt, 4)
    assert np.allclose(a["dice"], b["dice"], equal_nan=True) and np.allclose(a["hd95"], b["hd95"], equal_nan=True)


def test_missing_prediction_gets_worst_case() -> None:
    _, gt = _cube_labels()
    pred = torch.where(gt == 2, torch.zeros_like(gt), gt)  # liver never predicted
    m = case_metrics(pred, gt, 4, spacing=(1.0, 2.0, 1.0))
    assert m["dice"][1] == 0.0
    assert m["hd95"][1] == pytest.approx(math.sqrt(20**2 + 36**2 + 16**2))  # image diagonal in mm
    assert m["dice"][0] == 1.0 and m["hd95"][0] == 0.0


def test_ill_label_value_and_shape() -> None:
    pred, gt = _cube_labels()
    gt[0, 0, 0, 0] = 7
    with pytest.raises(DatasetError, match="outside 0..3.*--num_classes"):
        case_metrics(pred, gt, 4)
    with pytest.raises(ValueError, match="differs from label shape"):
        case_metrics(pred[:, :10], _cube_labels()[1], 4)


def _engine_output(case: str, pred: torch.Tensor, gt: torch.Tensor) -> dict:
    affine = torch.diag(torch.tensor([1.5, 1.0, 2.0, 1.0], dtype=torch.float64))
    meta = {"filename_or_obj": f"/data/labelsTr/{case}.nii.gz"}
    return {"pred": MetaTensor(pred, affine=affine), "label": MetaTensor(gt, affine=affine, meta=meta)}


def test_segmentation_report_handler(tmp_path) -> None:
    pred, gt = _cube_labels()
    batches = [[_engine_output("label0001", pred, gt)], [_engine_output("label0002", gt, gt)]]
    engine = Engine(lambda e, batch: batch)
    report = SegmentationReport(tmp_path, ORGANS, hd95=True)
    report.attach(engine)
    engine.run(batches, max_epochs=1)
    metrics = engine.state.metrics
    expected = case_metrics(pred, gt, 4, spacing=(1.5, 1.0, 2.0))
    assert metrics["dice_spleen"] == pytest.approx((expected["dice"][0] + 1.0) / 2)
    assert math.isnan(metrics["dice_aorta"])
    assert metrics["mean_dice"] == pytest.approx((np.nanmean(expected["dice"]) + 1.0) / 2)
    assert "mean_hd95_mm" in metrics
    with open(tmp_path / "per_case_metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["label0001", "label0002"]
    assert list(rows[0]) == [
        "case",
        *[f"dice_{o}" for o in ORGANS],
        "mean_dice",
        *[f"hd95_{o}" for o in ORGANS],
        "mean_hd95",
    ]
    assert float(rows[1]["dice_liver"]) == 1.0 and rows[1]["dice_aorta"] == "nan"
    assert (tmp_path / "dice_per_organ.png").read_bytes()[:4] == b"\x89PNG"
    details = report.details()
    assert details["n_cases"] == 2 and len(details["per_case"]) == 2


def test_report_without_means_keeps_key_metric(tmp_path) -> None:
    pred, gt = _cube_labels()
    engine = Engine(lambda e, batch: batch)
    report = SegmentationReport(tmp_path, ORGANS, hd95=False, prefix="val_", set_means=False, write_files=False)
    report.attach(engine)
    engine.state.metrics = {}
    engine.run([[_engine_output("label0001", pred, gt)]], max_epochs=1)
    assert "val_mean_dice" not in engine.state.metrics and "val_dice_liver" in engine.state.metrics
    assert not list(tmp_path.iterdir())


def test_ill_organ_names() -> None:
    with pytest.raises(ConfigError, match="organ_names"):
        SegmentationReport("/tmp/x", [])


def test_check_label_files_names_every_missing_case(tmp_path) -> None:
    (tmp_path / "label0001.nii.gz").write_bytes(b"x")
    items = [
        {"image": "/d/imagesTr/img0001.nii.gz", "label": str(tmp_path / "label0001.nii.gz")},
        {"image": "/d/imagesTr/img0002.nii.gz", "label": str(tmp_path / "label0002.nii.gz")},
        {"image": "/d/imagesTr/img0003.nii.gz"},
    ]
    with pytest.raises(DatasetError) as err:
        check_label_files(items)
    text = str(err.value)
    assert "2 evaluation case(s)" in text and "img0002.nii.gz: label file" in text and "label0002.nii.gz" in text
    assert "img0003.nii.gz: no 'label' entry" in text and "img0001" not in text
    assert check_label_files(items[:1]) == items[:1]


def _save(arr: np.ndarray, path, spacing=(2.0, 2.0, 3.0)) -> None:
    img = nib.Nifti1Image(arr.astype(np.uint8), np.diag([*spacing, 1.0]))
    nib.save(img, str(path))


def test_evaluate_folders(tmp_path) -> None:
    pred, gt = _cube_labels()
    (tmp_path / "pred").mkdir()
    (tmp_path / "labels").mkdir()
    _save(pred[0].numpy(), tmp_path / "pred" / "img0001_seg.nii.gz")
    _save(gt[0].numpy(), tmp_path / "labels" / "label0001.nii.gz")
    out = evaluate_folders(tmp_path / "pred", tmp_path / "labels", tmp_path / "eval", ORGANS)
    ref = case_metrics(pred, gt, 4, spacing=(2.0, 2.0, 3.0))
    assert out["mean_dice"] == pytest.approx(float(np.nanmean(ref["dice"])))
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["dice_per_organ"]["aorta"] is None and saved["n_cases"] == 1
    assert (tmp_path / "eval" / "per_case_metrics.csv").is_file()
    # a prediction without its label: clear error naming the case and the expected file
    _save(pred[0].numpy(), tmp_path / "pred" / "img0002_seg.nii.gz")
    with pytest.raises(DatasetError, match=r"img0002: label file .*label0002\.nii\.gz not found"):
        evaluate_folders(tmp_path / "pred", tmp_path / "labels", tmp_path / "eval", ORGANS)


# ------------------------------------------------------------------------------------- original geometry
def test_resampled_prediction_is_scored_on_the_label_grid(tmp_path) -> None:
    """A prediction made on the resampled training grid is scored in the label file's own geometry: its Dice and
    HD95 are those of the original-grid comparison (an independent world-coordinate resampling with nibabel), not
    those of the training grid (where this prediction is perfect and the thin organ does not exist)."""
    from monai.transforms import Compose, EnsureTyped, LoadImaged, Orientationd, Spacingd
    from nibabel.processing import resample_from_to

    from tlk_components.engines.evaluators.segmentation import original_grid_postprocessing

    affine = np.diag([-1.0, -1.25, 1.5, 1.0])  # stored LPS, anisotropic 1 x 1.25 x 1.5 mm
    affine[:3, 3] = [30.0, 20.0, -10.0]
    lab = np.zeros((24, 20, 24), np.uint8)
    lab[14:20, 10:16, 4:20] = 2
    lab[6:17, 5:14, 9:11] = 1  # a 2-slice organ, thinner than the 4 mm training grid
    nib.save(nib.Nifti1Image((lab * 100.0 - 50).astype(np.float32), affine), tmp_path / "img0001.nii.gz")
    nib.save(nib.Nifti1Image(lab, affine), tmp_path / "label0001.nii.gz")
    keys = ["image", "label"]
    pre = Compose(
        [
            LoadImaged(keys, ensure_channel_first=True, image_only=True),
            EnsureTyped(keys),
            Orientationd(keys, axcodes="RAS", labels=None),
            Spacingd(keys, pixdim=[2.0, 2.0, 4.0], mode=["bilinear", "nearest"]),
        ]
    )
    d = pre({"image": str(tmp_path / "img0001.nii.gz"), "label": str(tmp_path / "label0001.nii.gz")})
    coarse = d["label"][0].long()  # a perfect prediction on the training grid
    on_training_grid = case_metrics(coarse[None], d["label"], 3, spacing=[2.0, 2.0, 4.0])
    d["pred"] = torch.nn.functional.one_hot(coarse, 3).movedim(-1, 0).float() * 10.0  # logits
    out = original_grid_postprocessing(pre, 3)(d)
    assert out["pred"].shape == out["label"].shape == (3, 24, 20, 24)
    assert np.allclose(out["label"].pixdim, [1.0, 1.25, 1.5])
    got = case_metrics(out["pred"], out["label"], 3, spacing=[float(s) for s in out["label"].pixdim])

    reference = nib.load(tmp_path / "label0001.nii.gz")
    probs = [
        np.asarray(
            resample_from_to(
                nib.Nifti1Image((coarse.numpy() == c).astype(np.float32), d["label"].affine.numpy()),
                reference,
                order=1,
                mode="nearest",
            ).dataobj
        )
        for c in range(3)
    ]
    back = torch.as_tensor(np.argmax(np.stack(probs), 0))[None]
    want = case_metrics(back, torch.as_tensor(lab)[None], 3, spacing=[1.0, 1.25, 1.5])
    assert np.allclose(got["dice"], want["dice"]) and np.allclose(got["hd95"], want["hd95"])
    assert got["dice"][0] == 0.0 and 0.5 < got["dice"][1] < 0.9  # what the training grid cannot see:
    assert math.isnan(on_training_grid["dice"][0]) and on_training_grid["dice"][1] == 1.0


def test_ill_label_off_its_image_grid(tmp_path) -> None:
    from tlk_components.engines.evaluators.segmentation import LoadOriginalLabeld

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.uint8), np.eye(4)), tmp_path / "label0001.nii.gz")
    label = MetaTensor(torch.zeros(1, 2, 2, 2), meta={"filename_or_obj": str(tmp_path / "label0001.nii.gz")})
    with pytest.raises(DatasetError, match=r"label0001\.nii\.gz: label shape \(4, 4, 3\) differs"):
        LoadOriginalLabeld("label")({"label": label, "pred": torch.zeros(3, 5, 5, 5)})
