# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the kidney evaluation against KiTS19 / AMOS22 labels (tiny fake datasets written with nibabel)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tlk_components.cli import main
from tlk_components.engines.evaluators.kidney import (
    binary_metrics,
    evaluate_amos22,
    evaluate_kidney,
    evaluate_kits19,
    kidney_parts,
)
from tlk_components.engines.evaluators.segmentation import case_metrics
from tlk_components.utils.errors import ConfigError, DatasetError

SHAPE = (16, 16, 8)
SPACING = (1.5, 2.0, 3.0)
AFFINE = np.array(
    [[-1.5, 0, 0, 10.0], [0, -2.0, 0, 20.0], [0, 0, 3.0, -30.0], [0, 0, 0, 1]], dtype=float
)  # LPS-like, non-identity spacing
DIAGONAL = math.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPE, SPACING, strict=True)))


def _save(arr: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), affine), str(path))
    return path


def _kits_label() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:10, 2:10, 1:5] = 1  # kidney + tumour: 8*8*4 = 256 voxels
    lab[6:10, 6:10, 1:5] = 2  # tumour: 4*4*4 = 64 voxels
    return lab


def _write_kits(cases_dir: Path, n: int = 3, nii_case: int = 1) -> Path:
    """``n`` labelled cases; case ``nii_case`` stores its label uncompressed (segmentation.nii)."""
    for i in range(n):
        case = cases_dir / f"case_{i:05d}"
        _save(np.zeros(SHAPE), case / "imaging.nii.gz")
        _save(_kits_label(), case / ("segmentation.nii" if i == nii_case else "segmentation.nii.gz"))
    return cases_dir


def _binary_preds(pred_dir: Path) -> Path:
    lab = _kits_label()
    _save((lab > 0).astype(np.uint8), pred_dir / "case_00000_seg.nii.gz")  # perfect: Dice 1
    shifted = np.zeros(SHAPE, np.uint8)
    shifted[4:12, 2:10, 1:5] = 1  # shifted by 2 voxels in x: |P| = |G| = 256, |P∩G| = 6*8*4 = 192
    _save(shifted, pred_dir / "case_00001.nii")
    _save(np.zeros(SHAPE), pred_dir / "prediction_00002.nii.gz")  # empty: Dice 0
    (pred_dir / "case_00000_overlay.png").write_bytes(b"not a nifti")  # inference's overlays are ignored
    return pred_dir


@pytest.fixture
def kits(tmp_path: Path) -> Path:
    return _write_kits(tmp_path / "kits19")


def test_binary_metrics_formula_and_conventions() -> None:
    g = np.zeros(SHAPE, bool)
    g[2:10, 2:10, 1:5] = True
    p = np.zeros(SHAPE, bool)
    p[4:12, 2:10, 1:5] = True
    m = binary_metrics(p, g, SPACING, hd95=True)
    assert m["dice"] == pytest.approx(2 * 192 / (256 + 256))
    ref = case_metrics(torch.as_tensor(p[None]).float(), torch.as_tensor(g[None]).float(), 2, spacing=SPACING)
    assert m["hd95"] == pytest.approx(float(ref["hd95"][0]))  # the seg_eval numbers
    assert math.isnan(binary_metrics(np.zeros(SHAPE), np.zeros(SHAPE))["dice"])  # both empty: NaN
    assert binary_metrics(p, np.zeros(SHAPE))["dice"] == 0.0  # label empty, prediction not: 0
    empty = binary_metrics(np.zeros(SHAPE), g, SPACING, hd95=True)
    assert empty["dice"] == 0.0 and empty["hd95"] == pytest.approx(DIAGONAL)


def test_kidney_parts_split_the_composite() -> None:
    lab = _kits_label()  # 192 kidney tissue voxels, 64 tumour voxels
    tissue_only = lab == 1
    parts = kidney_parts(tissue_only, lab)
    assert parts == {"kidney_tissue_dice": pytest.approx(1.0), "tumour_found": 0.0}
    half = lab > 0
    half[6:10, 6:10, 1:3] = False  # half of the tumour missed
    assert kidney_parts(half, lab)["tumour_found"] == pytest.approx(0.5)
    amos_like = (lab > 0).astype(np.uint8)  # no tumour class: tissue = the whole kidney, nothing to find
    parts = kidney_parts(amos_like, amos_like)
    assert parts["kidney_tissue_dice"] == pytest.approx(1.0) and math.isnan(parts["tumour_found"])
    with pytest.raises(ValueError, match="shape"):
        kidney_parts(lab[:4], lab)


def test_kits19_binary_prediction(kits: Path, tmp_path: Path) -> None:
    preds = _binary_preds(tmp_path / "pred")
    out = tmp_path / "out"
    s = evaluate_kits19(preds, kits, out, hd95=True)
    rows = {r["case"]: r for r in s["per_case"]}
    assert list(rows) == ["case_00000", "case_00001", "case_00002"]
    assert rows["case_00000"]["kidney_dice"] == pytest.approx(1.0)
    assert rows["case_00001"]["kidney_dice"] == pytest.approx(0.75)
    assert rows["case_00002"]["kidney_dice"] == 0.0
    assert rows["case_00000"]["kidney_hd95_mm"] == pytest.approx(0.0)
    assert rows["case_00002"]["kidney_hd95_mm"] == pytest.approx(DIAGONAL)
    assert rows["case_00001"]["label"].endswith("segmentation.nii")
    # the parts: kidney tissue (tumour left out of both) and the share of the tumour found
    assert [rows[c]["kidney_tissue_dice"] for c in rows] == pytest.approx([1.0, 2 * 128 / (192 + 192), 0.0])
    assert [rows[c]["tumour_found"] for c in rows] == pytest.approx([1.0, 1.0, 0.0])
    assert s["kidney_tissue_dice"]["mean"] == pytest.approx((1 + 2 / 3) / 3) and s["tumour_found"]["n"] == 3
    assert rows["case_00000"]["kidney_volume_label_ml"] == pytest.approx(256 * 1.5 * 2.0 * 3.0 / 1000)
    dice = [1.0, 0.75, 0.0]
    assert s["n_cases"] == 3
    assert s["kidney_dice"]["mean"] == pytest.approx(np.mean(dice))
    assert s["kidney_dice"]["std"] == pytest.approx(np.std(dice, ddof=1))
    assert s["kidney_dice"]["n"] == 3
    # binary prediction: tumour not predicted -> null, no composite
    assert s["tumour_evaluated"] is False
    assert s["tumour_dice"] is None and s["kits19_composite_dice"] is None
    assert all(r["tumour_dice"] is None for r in s["per_case"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kidney_dice"]["mean"] == pytest.approx(np.mean(dice))
    assert saved["per_case"][2]["tumour_dice"] is None
    with open(out / "per_case_metrics.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [float(r["kidney_dice"]) for r in csv_rows] == pytest.approx(dice)
    assert {r["tumour_dice"] for r in csv_rows} == {"not predicted"}
    assert (out / "dice_per_case.png").stat().st_size > 1000


def test_kits19_three_class_prediction(kits: Path, tmp_path: Path) -> None:
    lab = _kits_label()
    pred_dir = tmp_path / "pred3"
    _save(lab, pred_dir / "case_00000_seg.nii.gz")  # perfect kidney and tumour
    partial = (lab > 0).astype(np.uint8)
    partial[6:10, 6:10, 1:3] = 2  # tumour: |P| = 32, |G| = 64, |P∩G| = 32 -> Dice 2/3
    _save(partial, pred_dir / "case_00001_seg.nii.gz")
    s = evaluate_kits19(pred_dir, kits, tmp_path / "out3")
    rows = s["per_case"]
    assert [r["kidney_dice"] for r in rows] == pytest.approx([1.0, 1.0])
    assert [r["tumour_dice"] for r in rows] == pytest.approx([1.0, 2 / 3])
    assert [r["kits19_composite_dice"] for r in rows] == pytest.approx([1.0, 5 / 6])
    assert s["tumour_evaluated"] is True
    assert s["tumour_dice"]["mean"] == pytest.approx(5 / 6)
    assert s["kits19_composite_dice"]["challenge_score"] == pytest.approx((1.0 + 5 / 6) / 2)
    assert "kidney_hd95_mm" not in rows[0] and s["kidney_hd95_mm"] is None  # not asked for


@pytest.mark.parametrize("given", ["clone", "parent"])
def test_kits19_official_repository_layout(tmp_path: Path, given: str) -> None:
    _write_kits(tmp_path / "ds" / "kits19" / "data", n=2)
    lab = _kits_label()
    _save((lab > 0).astype(np.uint8), tmp_path / "pred" / "case_00000_seg.nii.gz")
    _save((lab > 0).astype(np.uint8), tmp_path / "pred" / "case_00001_seg.nii")
    kits_dir = tmp_path / "ds" / "kits19" if given == "clone" else tmp_path / "ds"
    s = evaluate_kits19(tmp_path / "pred", kits_dir, tmp_path / "out")
    assert s["n_cases"] == 2 and s["kidney_dice"]["mean"] == pytest.approx(1.0)
    assert s["labels_dir"] == str(tmp_path / "ds" / "kits19" / "data")


def test_kits19_geometry_mismatch(kits: Path, tmp_path: Path) -> None:
    pred_dir = tmp_path / "pred"
    _save(np.zeros((16, 16, 9)), pred_dir / "case_00000_seg.nii.gz")  # another shape (resampled grid)
    with pytest.raises(DatasetError) as e:
        evaluate_kits19(pred_dir, kits, tmp_path / "out")
    msg = str(e.value)
    assert "case_00000_seg.nii.gz" in msg and "segmentation.nii.gz" in msg and "original geometry" in msg
    assert "(16, 16, 9)" in msg and "(16, 16, 8)" in msg
    other = AFFINE.copy()
    other[0, 0] = -1.0  # same shape, other spacing
    _save(np.zeros(SHAPE), pred_dir / "case_00000_seg.nii.gz", affine=other)
    with pytest.raises(DatasetError, match="original geometry") as e:
        evaluate_kits19(pred_dir, kits, tmp_path / "out")
    assert "affine" in str(e.value)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_kits19_missing_labels_listed(kits: Path, tmp_path: Path) -> None:
    _save(np.zeros(SHAPE), kits / "case_00210" / "imaging.nii.gz")  # test-set case: no segmentation
    pred_dir = tmp_path / "pred"
    for case in ("case_00000_seg", "case_00007_seg", "case_00210_seg"):
        _save(np.zeros(SHAPE), pred_dir / f"{case}.nii.gz")
    with pytest.raises(DatasetError) as e:
        evaluate_kits19(pred_dir, kits, tmp_path / "out")
    msg = str(e.value)
    assert "2 prediction(s) have no ground-truth label" in msg
    assert "case_00007" in msg and "case_00210" in msg and "- case_00000" not in msg


def test_prediction_folder_problems(kits: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="run inference first"):
        evaluate_kits19(empty, kits, tmp_path / "out")
    with pytest.raises(DatasetError, match="does not exist; run inference first"):
        evaluate_kits19(tmp_path / "nowhere", kits, tmp_path / "out")
    odd = tmp_path / "odd"
    _save(np.zeros(SHAPE), odd / "img0001_seg.nii.gz")
    with pytest.raises(DatasetError, match="img0001_seg.nii.gz: name not recognised"):
        evaluate_kits19(odd, kits, tmp_path / "out")
    dup = tmp_path / "dup"
    _save(np.zeros(SHAPE), dup / "case_00000_seg.nii.gz")
    _save(np.zeros(SHAPE), dup / "case_00000.nii")
    with pytest.raises(DatasetError, match="more than one prediction"):
        evaluate_kits19(dup, kits, tmp_path / "out")
    bad = tmp_path / "bad"
    _save(np.full(SHAPE, 5), bad / "case_00000_seg.nii.gz")
    with pytest.raises(DatasetError, match=r"values \[5\] outside 0..2"):
        evaluate_kits19(bad, kits, tmp_path / "out")
    with pytest.raises(DatasetError, match="no KiTS19 case_NNNNN folders"):
        evaluate_kits19(bad, tmp_path / "empty", tmp_path / "out")


# ------------------------------------------------------------------------------------------------------ AMOS22


def _amos_label() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:6, 2:10, 1:5] = 2  # right kidney: 128 voxels
    lab[10:14, 2:10, 1:5] = 3  # left kidney: 128 voxels
    lab[2:6, 12:15, 1:5] = 1  # spleen
    return lab


def _write_amos(base: Path, n: int = 2) -> Path:
    training = []
    for i in range(1, n + 1):
        name = f"amos_{i:04d}.nii.gz"
        _save(np.zeros(SHAPE), base / "imagesTr" / name)
        _save(_amos_label(), base / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (base / "dataset.json").write_text(
        json.dumps({"labels": {"2": "right kidney", "3": "left kidney"}, "training": training})
    )
    return base


def test_amos22_binary_prediction(tmp_path: Path) -> None:
    amos = _write_amos(tmp_path / "data" / "amos22")
    lab = _amos_label()
    pred_dir = tmp_path / "pred"
    _save(np.isin(lab, (2, 3)).astype(np.uint8), pred_dir / "amos_0001_seg.nii.gz")  # perfect
    _save((lab == 2).astype(np.uint8), pred_dir / "amos_0002.nii")  # right only: 2*128 / (128 + 256) = 2/3
    s = evaluate_amos22(pred_dir, tmp_path / "data", tmp_path / "out")  # a folder holding amos22/
    assert s["labels_dir"] == str(amos)
    assert s["prediction_values"] == "binary"
    assert [r["kidney_dice"] for r in s["per_case"]] == pytest.approx([1.0, 2 / 3])
    assert s["kidney_dice"]["mean"] == pytest.approx(5 / 6)
    assert s["right_kidney_dice"] is None and s["per_case"][0]["right_kidney_dice"] is None
    assert (tmp_path / "out" / "dice_per_case.png").stat().st_size > 1000


def test_amos22_per_side_prediction(tmp_path: Path) -> None:
    amos = _write_amos(tmp_path / "amos", n=2)
    lab = _amos_label()
    pred = lab.copy()  # spleen (1) stays: not kidney in AMOS label values
    pred[10:14, 6:10, 1:5] = 0  # left kidney: |P| = 64 of 128 -> left Dice 2/3; kidney 2*192 / (192 + 256) = 6/7
    pred_dir = tmp_path / "pred"
    _save(pred, pred_dir / "amos_0001_seg.nii.gz")
    _save((lab == 1).astype(np.uint8), pred_dir / "amos_0002_seg.nii.gz")  # only spleen (value 1): no kidney
    s = evaluate_amos22(pred_dir, amos, tmp_path / "out", hd95=True)
    assert s["prediction_values"] == "amos_labels"
    r1, r2 = s["per_case"]
    assert r1["kidney_dice"] == pytest.approx(6 / 7)
    assert r1["right_kidney_dice"] == pytest.approx(1.0) and r1["left_kidney_dice"] == pytest.approx(2 / 3)
    assert r2["kidney_dice"] == 0.0 and r2["kidney_hd95_mm"] == pytest.approx(DIAGONAL)
    assert s["left_kidney_dice"]["mean"] == pytest.approx(1 / 3)


def test_amos22_missing_label_and_bad_names(tmp_path: Path) -> None:
    amos = _write_amos(tmp_path / "amos", n=1)
    pred_dir = tmp_path / "pred"
    _save(np.zeros(SHAPE), pred_dir / "amos_0001_seg.nii.gz")
    _save(np.zeros(SHAPE), pred_dir / "amos_0042_seg.nii.gz")
    with pytest.raises(DatasetError, match="amos_0042"):
        evaluate_amos22(pred_dir, amos, tmp_path / "out")
    with pytest.raises(DatasetError, match="name not recognised"):
        evaluate_amos22(_binary_preds(tmp_path / "kits_pred"), amos, tmp_path / "out")


# --------------------------------------------------------------------------------------------------------- CLI


def test_evaluate_kidney_needs_one_dataset(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        evaluate_kidney(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="both were given"):
        evaluate_kidney(str(tmp_path), str(tmp_path / "out"), kits_dir="a", amos_dir="b")


def test_cli_in_process(kits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preds = _binary_preds(tmp_path / "pred")
    out = tmp_path / "out"
    main(["evaluate_kidney", "--pred_dir", str(preds), "--kits_dir", str(kits), "--output_dir", str(out)])
    assert "kidney_dice" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_cases"] == 3 and metrics["kidney_dice"]["mean"] == pytest.approx(1.75 / 3)
    with pytest.raises(SystemExit) as e:
        main(
            ["evaluate_kidney", "--pred_dir", str(tmp_path / "none"), "--kits_dir", str(kits), "--output_dir", str(out)]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "run inference first" in err and "Traceback" not in err


def test_cli_subprocess(kits: Path, tmp_path: Path) -> None:
    preds = _binary_preds(tmp_path / "pred")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tlk_components", "evaluate_kidney", "--pred_dir", str(preds)]
    cmd += ["--kits_dir", str(kits), "--output_dir", str(out), "--hd95", "true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kidney_hd95_mm"]["n"] == 3
    assert (out / "per_case_metrics.csv").read_text().startswith("case,kidney_dice,kidney_hd95_mm,")
    assert (out / "dice_per_case.png").stat().st_size > 1000
