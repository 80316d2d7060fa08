# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""brats_mri_box_localization end to end on the tiny demo through ``python -m monai.bundle run``.

Train (1 epoch, validation every epoch), resume, evaluate (metrics.json, per-volume IoU CSV, overlays) and
predict (JSON per slice and per volume, PNG overlays, NIfTI box mask in the original geometry). The tiny
dataset's training split holds a tumour-free case, and a broken dataset fails before any compute.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import pytest

from tests.bundle_utils import BUNDLES, run_bundle
from tlk_components.data import brats

BUNDLE = "brats_mri_box_localization"
CFG = BUNDLES / BUNDLE / "configs"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("brats_box")
    data = brats.write_demo(root / "data", size="tiny", seed=0)
    return {"root": root, "data": Path(data), "models": root / "models", "eval": root / "eval"}


def _common(work: dict[str, Path]) -> dict:
    return {
        "dataset_dir": work["data"],
        "demo_dir": work["data"],
        "ckpt_dir": work["models"],
        "output_dir": work["eval"],
        "batch_size": 8,
    }


def test_configs_metadata_readme_and_duplicated_definitions_agree() -> None:
    for f in CFG.glob("*.json"):
        json.loads(f.read_text())
    # metadata schema and README == eval_metrics: tests/zoo/test_metadata_schema.py, for every bundle
    meta = json.loads((CFG / "metadata.json").read_text())
    readme = (BUNDLES / BUNDLE / "docs" / "README.md").read_text()
    train = json.loads((CFG / "train.json").read_text())
    infer = json.loads((CFG / "inference.json").read_text())
    for key in (
        "box_params",
        "network_def",
        "image_size",
        "max_slices",
        "levels",
        "anchor_shapes",
        "anchor_scales",
        "anchor_ratios",
        "iou_upper",
        "iou_lower",
        "iou_nms",
        "score_threshold",
    ):
        assert infer[key] == train[key], f"inference.json {key} differs from train.json"
    evaluate = json.loads((CFG / "evaluate.json").read_text())
    writer = next(h for h in evaluate["validate#handlers"] if h["_target_"].endswith("MetricsJsonWriter"))
    assert writer["keys"] == list(meta["eval_metrics"])
    assert train["optimizer"]["_target_"] == "torch.optim.Adam" and train["learning_rate"] == 0.0002
    assert "Adam" in readme and "0.0002" in readme


@pytest.mark.slow
def test_train_resume_evaluate_infer(work: dict[str, Path]) -> None:
    out = run_bundle(BUNDLE, "train.json", **_common(work), epochs=1, val_interval=1)
    assert (work["models"] / "model.pt").is_file() and (work["models"] / "checkpoint_last.pt").is_file()
    assert (work["eval"] / "loss_curve.png").is_file()
    assert "val_box_sensitivity_IoU_0.50" in out.stdout and "bbox_regression" in out.stdout

    out = run_bundle(BUNDLE, "train.json", **_common(work), epochs=2, val_interval=1)
    assert "resumed from" in out.stdout and "Epoch[2] Complete" in out.stdout and "Epoch[1] Complete" not in out.stdout

    run_bundle(BUNDLE, ["train.json", "evaluate.json"], **_common(work))
    metrics = json.loads((work["eval"] / "metrics.json").read_text())
    meta = json.loads((CFG / "metadata.json").read_text())
    for key in meta["eval_metrics"]:
        assert key in metrics
    assert metrics["AP_IoU_0.50_MaxDet_100"] is None or 0.0 <= metrics["AP_IoU_0.50_MaxDet_100"] <= 1.0
    rows = list(csv.DictReader(open(work["eval"] / "volume_iou.csv")))
    assert [r["case"] for r in rows] == ["BraTS20_Training_005"]  # the test split
    assert (work["eval"] / "volume_iou.png").is_file()
    assert (work["eval"] / "predictions" / "BraTS20_Training_005" / "BraTS20_Training_005_boxes.json").is_file()

    pred_dir = work["root"] / "pred"
    run_bundle(
        BUNDLE,
        "inference.json",
        input_dir=work["data"],
        demo_dir=work["root"] / "unused_demo",
        output_dir=pred_dir,
        ckpt_dir=work["models"],
    )
    for case in [f"BraTS20_Training_{i:03d}" for i in range(1, 6)]:
        result = json.loads((pred_dir / case / f"{case}_boxes.json").read_text())
        assert len(result["slices"]) == 12 and isinstance(result["volume_boxes"], list)
        assert all(len(s["boxes"]) == len(s["scores"]) for s in result["slices"])
        mask = nib.load(str(pred_dir / case / f"{case}_boxmask.nii.gz"))
        assert mask.shape == (96, 96, 12)


@pytest.mark.slow
def test_broken_dataset_fails_before_compute(work: dict[str, Path]) -> None:
    broken = work["root"] / "broken"
    shutil.copytree(work["data"], broken)
    (broken / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz").unlink()
    out = run_bundle(
        BUNDLE,
        "train.json",
        dataset_dir=broken,
        demo_dir=broken,
        ckpt_dir=work["root"] / "m2",
        output_dir=work["root"] / "e2",
        epochs=1,
        check=False,
    )
    assert out.returncode != 0
    assert "BraTS20_Training_002: BraTS20_Training_002_flair.nii.gz missing" in out.stdout
    assert not (work["root"] / "m2" / "model.pt").exists()


def _real_copy_variants(src: Path, dst: Path) -> Path:
    """A copy of the tiny demo as common BraTS 2020 copies ship it: ``.nii`` files, and case 2's segmentation
    misnamed (as case 355's ``W39_1998.09.19_Segm.nii`` of a popular copy)."""
    for case in sorted(src.glob("BraTS20_*")):
        (dst / case.name).mkdir(parents=True)
        for f in case.glob("*.nii.gz"):
            img = nib.load(str(f))
            nib.save(nib.Nifti1Image(img.get_fdata().astype("int16"), img.affine), str(dst / case.name / f.stem))
    c2 = dst / "BraTS20_Training_002"
    (c2 / "BraTS20_Training_002_seg.nii").rename(c2 / "W39_1998.09.19_Segm.nii")
    return dst


@pytest.mark.slow
def test_real_copy_variants_and_skip_bad_cases(work: dict[str, Path]) -> None:
    """Issue 12 (BraTS 1, 2): .nii read; a misnamed file stops the run by default, naming the case, the expected
    names and the file found; --skip_bad_cases true trains and predicts without it, prints and records it."""
    data = _real_copy_variants(work["data"], work["root"] / "nii")
    common = {"dataset_dir": data, "demo_dir": work["root"] / "no_demo", "batch_size": 8, "epochs": 1}
    out = run_bundle(
        BUNDLE, "train.json", **common, ckpt_dir=work["root"] / "m3", output_dir=work["root"] / "e3", check=False
    )
    assert out.returncode != 0 and not (work["root"] / "m3" / "model.pt").exists()
    assert "BraTS20_Training_002: BraTS20_Training_002_seg.nii.gz missing" in out.stdout
    assert "expected BraTS20_Training_002_seg.nii.gz or BraTS20_Training_002_seg.nii" in out.stdout
    assert "found instead: W39_1998.09.19_Segm.nii" in out.stdout

    out = run_bundle(
        BUNDLE,
        "train.json",
        **common,
        ckpt_dir=work["root"] / "m3",
        output_dir=work["root"] / "e3",
        val_interval=1,
        skip_bad_cases="true",
    )
    assert "leaving out 1 of 5 case(s)" in out.stdout and (work["root"] / "m3" / "model.pt").is_file()
    record = json.loads((work["root"] / "e3" / "skipped_cases.json").read_text())
    assert [r["case"] for r in record["skipped"]] == ["BraTS20_Training_002"]

    # inference: a case without FLAIR is refused by default and left out with --skip_bad_cases true
    (data / "BraTS20_Training_004" / "BraTS20_Training_004_flair.nii").unlink()
    pred = work["root"] / "pred3"
    infer = {"input_dir": data, "demo_dir": work["root"] / "no_demo", "ckpt_dir": work["root"] / "m3"}
    out = run_bundle(BUNDLE, "inference.json", **infer, output_dir=pred, check=False)
    assert out.returncode != 0 and "BraTS20_Training_004: BraTS20_Training_004_flair.nii.gz missing" in out.stdout
    run_bundle(BUNDLE, "inference.json", **infer, output_dir=pred, skip_bad_cases="true")
    record = json.loads((pred / "skipped_cases.json").read_text())
    assert [r["case"] for r in record["skipped"]] == ["BraTS20_Training_004"]
    done = sorted(p.name for p in pred.iterdir() if p.is_dir() and p.name.startswith("BraTS20_"))
    assert done == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003", "BraTS20_Training_005"]
