# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""kidney_ct_da_segmentation end to end on tiny phantoms, through ``python -m monai.bundle run``.

Pretrain on the source, adapt without target labels (the target label files are corrupted while adapting: had
adaptation opened one, it would fail), resume, evaluate source-only and adapted side by side, and predict.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.bundle_utils import BUNDLES, run_bundle
from tlk_components.data import kidney

BUNDLE = "kidney_ct_da_segmentation"
SMALL = {"patch_size": [16, 16, 16]}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kidney_da")
    data = kidney.write_demo(root / "data", size="tiny", seed=0)
    return {"root": root, "data": Path(data), "models": root / "models", "eval": root / "eval"}


def _tb_tags(event_file: Path) -> set[str]:
    """The scalar tags of a TensorBoard event file (e.g. ``train_loss/pseudo_label``), without their prefix."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_file))
    acc.Reload()
    return {t.split("/")[-1] for t in acc.Tags()["scalars"]}


def _common(work: dict[str, Path]) -> dict:
    return {
        "dataset_dir": work["data"],
        "demo_dir": work["data"],
        "ckpt_dir": work["models"],
        "output_dir": work["eval"],
        **SMALL,
    }


def test_configs_are_valid_json() -> None:
    # metadata schema and README == eval_metrics: tests/zoo/test_metadata_schema.py, for every bundle
    for f in (BUNDLES / BUNDLE / "configs").glob("*.json"):
        json.loads(f.read_text())


@pytest.mark.slow
def test_pretrain_adapt_without_target_labels_evaluate_infer(work: dict[str, Path]) -> None:
    run_bundle(BUNDLE, ["train.json", "pretrain.json"], **_common(work), epochs=1, val_interval=1)
    assert (work["models"] / "pretrained.pt").is_file() and (work["models"] / "plans.json").is_file()

    # --- adaptation must never read a target label: corrupt every KiTS segmentation file while it runs
    segs = sorted((work["data"] / "kits19").glob("case_*/segmentation.nii.gz"))
    assert segs
    backup = work["root"] / "seg_backup"
    backup.mkdir()
    for s in segs:
        shutil.copy(s, backup / f"{s.parent.name}.nii.gz")
        s.write_bytes(b"unreadable: adaptation must not open target labels")
    dann = {
        **_common(work),
        "ckpt_dir": work["root"] / "models_dann",
        "output_dir": work["root"] / "eval_dann",
        "plans_file": work["models"] / "plans.json",
        "pretrained_path": work["models"] / "pretrained.pt",
    }
    try:
        # the default adapter (self-training on the source model's confident labels of strongly perturbed target
        # patches + size prior) and DANN (source labels + encoder adversary, intensity alignment, AdaBN)
        dann_out = run_bundle(BUNDLE, ["train.json", "train_dann.json"], **dann, epochs=1, epoch_length=2)
        out = run_bundle(BUNDLE, "train.json", **_common(work), epochs=1, epoch_length=2, val_interval=1)
        # the same corruption is caught by the oracle's verification, so the check is not vacuous
        bad = run_bundle(BUNDLE, ["train.json", "pretrain.json", "oracle.json"], **_common(work), epochs=1, check=False)
        assert bad.returncode != 0 and "segmentation.nii.gz" in bad.stdout
    finally:
        for s in segs:
            shutil.copy(backup / f"{s.parent.name}.nii.gz", s)
    assert (work["models"] / "model.pt").is_file()
    assert "AdaBN: re-estimated" in dann_out.stdout  # DANN's saved BatchNorm statistics are the target's
    assert "AdaBN" not in out.stdout  # the default keeps the source's
    assert json.loads((work["models"] / "intensity_alignment.json").read_text())["enabled"] is False
    # evaluating DANN's weights applies its alignment map and leaves it as DANN wrote it (fitted, enabled)
    align = work["root"] / "models_dann" / "intensity_alignment.json"
    fitted = align.read_text()
    assert json.loads(fitted)["enabled"] is True
    run_bundle(BUNDLE, ["train.json", "evaluate.json"], **{**dann, "output_dir": work["root"] / "eval_dann_test"})
    assert align.read_text() == fitted
    assert "target_mean_dice_kidney_adapted" in json.loads(
        (work["root"] / "eval_dann_test" / "metrics.json").read_text()
    )
    tb_terms = {t for f in (work["eval"] / "tb_adapt").iterdir() for t in _tb_tags(f)}
    assert {"pseudo_label", "target_prior"} <= tb_terms and "target_entropy" not in tb_terms
    assert (work["eval"] / "adapt_loss_curve.png").is_file()
    first = json.loads((work["eval"] / "adapt_time.json").read_text())
    assert first["iterations"] == 2

    # --- resume: a second run with more epochs continues from the last checkpoint
    out = run_bundle(BUNDLE, "train.json", **_common(work), epochs=2, epoch_length=2, val_interval=1)
    assert "resumed from" in out.stdout
    assert json.loads((work["eval"] / "adapt_time.json").read_text())["iterations"] == 4

    # --- evaluation: source-only and adapted side by side, per case
    run_bundle(BUNDLE, ["train.json", "evaluate.json"], **_common(work))
    metrics = json.loads((work["eval"] / "metrics.json").read_text())
    for key in ("target_mean_dice_kidney_source_only", "target_mean_dice_kidney_adapted"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["per_case"]) == {"source_only", "adapted"}
    assert (work["eval"] / "per_case_dice.csv").read_text().startswith("case,source_only,adapted")

    # --- evaluation against a separate labels folder (--labels_dir): the target folder holds images only
    images, labels = work["root"] / "images_only", work["root"] / "labels"
    shutil.copytree(work["data"] / "kits19", images, ignore=shutil.ignore_patterns("segmentation.nii.gz"))
    labels.mkdir()
    for s in segs:
        shutil.copy(s, labels / f"{s.parent.name}.nii.gz")
    sep = {**_common(work), "output_dir": work["root"] / "eval_sep"}
    run_bundle(BUNDLE, ["train.json", "evaluate.json"], **sep, target_dir=images, labels_dir=labels)
    sep_metrics = json.loads((work["root"] / "eval_sep" / "metrics.json").read_text())
    assert sep_metrics["per_case"] == metrics["per_case"]

    # --- inference: NIfTI with the input's affine and shape (resampled back), PNG overlays, mirroring TTA
    import nibabel as nib
    import numpy as np

    pred_dir = work["root"] / "pred"
    run_bundle(
        BUNDLE,
        "inference.json",
        ckpt_dir=work["models"],
        input_dir=work["data"] / "kits19",
        output_dir=pred_dir,
        mirror_axes=[0],
        **SMALL,
    )
    for case in ("case_00000", "case_00003"):
        src = nib.load(work["data"] / "kits19" / case / "imaging.nii.gz")
        out = nib.load(pred_dir / f"{case}_seg.nii.gz")
        assert out.shape == src.shape and np.allclose(out.affine, src.affine)
        assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1}
        assert (pred_dir / f"{case}_overlay.png").is_file()


def test_inference_network_matches_training() -> None:
    cfg = BUNDLES / BUNDLE / "configs"
    train = json.loads((cfg / "train.json").read_text())
    infer = json.loads((cfg / "inference.json").read_text())
    assert infer["network_def"] == train["network_def"]
    assert infer["patch_size"] == train["patch_size"]
