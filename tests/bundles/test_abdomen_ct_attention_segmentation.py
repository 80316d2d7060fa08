# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""End-to-end tests of ``abdomen_ct_attention_segmentation`` through ``python -m monai.bundle run`` on tiny data.

Train, train + evaluate, resume, inference with and without saliency (3D U-Net and Attention U-Net), and every
bad input of issue 6: image/label shape mismatch, more label values than classes, a non-CT intensity range with
windowing on, a missing label for an evaluation case, and a saliency layer that does not exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from tests.bundle_utils import BUNDLES, run_bundle
from tlk_components.data.btcv import write_demo
from tlk_components.zoo.runner import bundle_command

BUNDLE = "abdomen_ct_attention_segmentation"
CONFIGS = BUNDLES / BUNDLE / "configs"
# tiny phantoms are ~24x24x15 voxels of 8.1x8.1x10.8 mm: keep that grid, and a 2-level net on 16^3 patches
SMALL = {
    "spacing": [8.1, 8.1, 10.8],
    "patch_size": [16, 16, 16],
    "channels": [4, 8, 16],
    "num_samples": 1,
    "batch_size": 2,
    "cache_rate": 0.0,
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo(tmp_path_factory.mktemp("btcv") / "data", size="tiny", seed=0)


@pytest.fixture(scope="module")
def trained(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the 3D U-Net, then the evaluation layered on it."""
    run = tmp_path_factory.mktemp("unet")
    common = {"dataset_dir": tiny, "ckpt_dir": run / "models", "output_dir": run / "eval", **SMALL}
    run_bundle(BUNDLE, "train.json", epochs=1, val_interval=1, **common)
    proc = run_bundle(BUNDLE, ["train.json", "evaluate.json"], **common)
    (run / "evaluate.log").write_text(proc.stdout)
    return run


def test_train_writes_checkpoints_and_reports(trained: Path) -> None:
    assert (trained / "models" / "model.pt").is_file() and (trained / "models" / "checkpoint_last.pt").is_file()
    for name in ("loss_curve.png", "val_dice_per_organ.png", "val_per_case_metrics.csv"):
        assert (trained / "eval" / name).is_file(), name
    assert list((trained / "eval").glob("events.out.tfevents.*")), "TensorBoard logs"


def test_evaluate_metrics_json_and_csv(trained: Path) -> None:
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    metrics = json.loads((trained / "eval" / "metrics.json").read_text())
    for key in meta["eval_metrics"]:
        assert isinstance(metrics[key], float), key
    assert 0.0 <= metrics["mean_dice"] <= 1.0 and metrics["mean_hd95_mm"] >= 0.0
    assert len(metrics["dice_per_organ"]) == 13 and metrics["n_cases"] == 2
    rows = (trained / "eval" / "per_case_metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case,dice_spleen,") and "hd95_left_adrenal_gland" in rows[0]
    assert [r.split(",")[0] for r in rows[1:]] == ["label0004", "label0005"]  # the validation cases
    assert (trained / "eval" / "dice_per_organ.png").is_file() and (trained / "eval" / "hd95_per_organ.png").is_file()


def test_resume_continues_and_keeps_a_better_best_model(trained: Path, tiny: Path, tmp_path: Path) -> None:
    """Resuming restores epoch and best metric (ResumeFromLast -> trainer.state.best_metric -> the saver): a model
    that does not beat the restored best never overwrites model.pt."""
    run = tmp_path / "resume"
    shutil.copytree(trained / "models", run / "models")
    last = run / "models" / "checkpoint_last.pt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["best_metric"] is not None  # the first run recorded its best validation Dice
    ckpt["best_metric"] = 0.99  # pretend the saved model.pt scored 0.99: one epoch more cannot beat it
    # the same run, continued with its eval folder elsewhere (another --output_dir is otherwise refused as another run)
    ckpt["run_info"]["overrides"]["output_dir"] = str((run / "eval").resolve())
    torch.save(ckpt, last)
    before = (run / "models" / "model.pt").read_bytes()
    proc = run_bundle(
        BUNDLE, "train.json", dataset_dir=tiny, ckpt_dir=run / "models", output_dir=run / "eval", epochs=2,
        val_interval=1, **SMALL,
    )  # fmt: skip
    assert "resumed from" in proc.stdout and "epoch 1" in proc.stdout
    assert "Epoch[2] Complete" in proc.stdout and "Epoch[1] Complete" not in proc.stdout
    assert "val_mean_dice" in proc.stdout and "saved best model" not in proc.stdout
    assert (run / "models" / "model.pt").read_bytes() == before
    assert torch.load(last, map_location="cpu", weights_only=True)["best_metric"] == pytest.approx(0.99)


def test_inference_without_saliency(trained: Path, tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    run_bundle(
        BUNDLE, "inference.json", dataset_dir=tiny, input_dir=tiny / "imagesTs", ckpt_dir=trained / "models",
        output_dir=out, **{k: SMALL[k] for k in ("spacing", "patch_size", "channels")},
    )  # fmt: skip
    src = nib.load(tiny / "imagesTs" / "img0061.nii.gz")
    pred = nib.load(out / "img0061_seg.nii.gz")
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    assert pred.header.get_sform(coded=True)[1] == src.header.get_sform(coded=True)[1]
    assert pred.get_data_dtype() == np.uint8 and int(np.asarray(pred.dataobj).max()) <= 13
    assert not (out / "saliency").exists()


def _random_weights(ckpt_dir: Path) -> Path:
    """An untrained network of the SMALL recipe saved as ``ckpt_dir/model.pt`` (inference only needs weights)."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["channels"] = SMALL["channels"]
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), ckpt_dir / "model.pt")
    return ckpt_dir


def _tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in sorted(root.rglob("*"))}


def test_inference_on_given_inputs_writes_nothing_into_a_read_only_bundle(tiny: Path, tmp_path: Path) -> None:
    """Item 16: with --input_dir, inference neither prepares the training data nor writes under the bundle."""
    bundle = tmp_path / "ro_bundle"
    shutil.copytree(BUNDLES / BUNDLE, bundle, ignore=shutil.ignore_patterns("demo_data", "models", "eval"))
    ckpt = _random_weights(tmp_path / "weights")
    before = _tree(bundle)
    modes = {p: p.stat().st_mode for p in [bundle, *bundle.rglob("*")]}
    for p in modes:
        p.chmod(modes[p] & ~0o222)  # read-only for everyone (root still could write: the tree is compared too)
    try:
        cmd = bundle_command(
            [bundle / "configs" / "inference.json"],
            {
                "input_dir": tiny / "imagesTs",
                "output_dir": tmp_path / "pred",
                "ckpt_dir": ckpt,
                **{k: SMALL[k] for k in ("spacing", "patch_size", "channels")},
            },
        )
        env = dict(os.environ, TLK_NUM_THREADS="1", TLK_HOME=str(tmp_path / "home"))
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _tree(bundle) == before, "inference wrote into the bundle folder"
    assert not (tmp_path / "home").exists(), "inference wrote a demo although --input_dir was given"
    assert (tmp_path / "pred" / "img0061_seg.nii.gz").is_file()


def test_attention_unet_inference_with_saliency(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "att"
    common = {"dataset_dir": tiny, "ckpt_dir": run / "models", **SMALL}
    run_bundle(
        BUNDLE, ["train.json", "train_attention_unet.json"], epochs=1, val_interval=1, output_dir=run / "eval", **common
    )
    out = run / "pred"
    run_bundle(
        BUNDLE, ["inference.json", "train_attention_unet.json"], input_dir=tiny / "imagesTs", output_dir=out,
        saliency="true", dataset_dir=tiny, ckpt_dir=run / "models",
        **{k: SMALL[k] for k in ("spacing", "patch_size", "channels")},
    )  # fmt: skip
    case = out / "saliency" / "img0061"
    src = nib.load(tiny / "imagesTs" / "img0061.nii.gz")
    cams = sorted(case.glob("gradcam_*.nii.gz"))
    assert len(cams) == 13 and {p.name for p in case.glob("attention_gate*.nii.gz")} == {
        "attention_gate0.nii.gz",
        "attention_gate1.nii.gz",
    }
    for path in (cams[0], case / "attention_gate0.nii.gz"):
        img = nib.load(path)
        assert img.shape == src.shape and np.allclose(img.affine, src.affine)
        data = np.asarray(img.dataobj)
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1 + 1e-5
    assert (case / "gradcam.png").read_bytes()[:4] == b"\x89PNG" and (case / "attention.png").is_file()
    assert (out / "img0061_seg.nii.gz").is_file()


def test_configs_agree() -> None:
    """inference.json repeats train.json's network and preprocessing settings (STYLE P3): they must be equal."""
    train = json.loads((CONFIGS / "train.json").read_text())
    infer = json.loads((CONFIGS / "inference.json").read_text())
    keys = (
        "network_def", "channels", "norm", "patch_size", "plans_file", "mirror_axes", "spacing", "intensity_mode",
        "window_min", "window_max",
    )  # fmt: skip
    for key in keys:
        assert infer[key] == train[key], key


def test_patch_and_batch_size_come_from_the_plan_and_patches_oversample_foreground(tiny: Path, tmp_path: Path):
    """The first run plans (``models/plans.json`` at the configured spacing); the patch and batch size are the
    plan's; two thirds of the cached-index patches are centred on an organ, none lies entirely in the air."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"dataset_dir": str(tiny), "ckpt_dir": str(tmp_path / "m"), "bundle_root": str(tmp_path)})
    parser.get_parsed_content("plan")  # what initialize runs after writing or checking the data
    plans = json.loads((tmp_path / "m" / "plans.json").read_text())
    assert plans["target_spacing"] == parser.get_parsed_content("spacing") == [3.0, 3.0, 4.0]
    patch = parser.get_parsed_content("patch_size")
    assert patch == plans["patch_size"] and all(p % 16 == 0 for p in patch)
    assert np.prod(patch) <= parser["plan_max_patch_voxels"]
    assert parser.get_parsed_content("batch_size") == plans["batch_size"] >= 2
    dataset = parser.get_parsed_content("train#dataset")
    dataset.transform.set_random_state(0)
    with_organ = []
    for i in range(24):
        patches = dataset[i % len(dataset)]
        assert len(patches) == parser["num_samples"]
        for p in patches:
            assert tuple(p["image"].shape) == (1, *patch) and tuple(p["label"].shape) == (1, *patch)
            assert float(p["image"].max()) > 0  # windowed CT: air is 0
            with_organ.append(bool((p["label"] > 0).any()))
    assert np.mean(with_organ) >= 0.6


def test_nnunet_augmentation_variant_builds_the_shared_pieces(tiny: Path, tmp_path: Path) -> None:
    """``train_nnunet_augmentation.json``: cached compact indices, foreground-oversampled patches and the shared
    nnU-Net augmentation, never mirrored left-right; the default keeps the intensity-only recipe."""
    names = {}
    for variant in ([], ["train_nnunet_augmentation.json"]):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / c) for c in ["train.json", *variant]])
        parser.update({"dataset_dir": str(tiny), "ckpt_dir": str(tmp_path / "m"), "bundle_root": str(tmp_path)})
        parser.get_parsed_content("plan")
        transforms = parser.get_parsed_content("train#preprocessing").transforms
        names[len(variant)] = [type(t).__name__ for t in transforms]
        flips = [t for t in transforms if type(t).__name__ == "RandFlipd"]
        assert sorted(t.flipper.spatial_axis for t in flips) == ([1, 2] if variant else [])
    assert "CompactFgBgIndicesd" in names[1] and "RandAffined" in names[1] and "RandShiftIntensityd" not in names[1]
    assert "CompactFgBgIndicesd" not in names[0] and names[0][-2:] == ["RandScaleIntensityd", "RandShiftIntensityd"]


@pytest.mark.parametrize(
    "variant, expected",
    [([], "UNet3D"), (["train_se.json"], "SqueezeExcitation"), (["train_attention_unet.json"], "AttentionUNet3D")],
)
def test_variants_select_the_network(variant: list[str], expected: str) -> None:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in ["train.json", *variant]])
    parser["out_classes"] = 14
    net = parser.get_parsed_content("network_def")
    assert expected in {type(m).__name__ for m in net.modules()}
    if not variant:
        assert "SqueezeExcitation" not in {type(m).__name__ for m in net.modules()}


# ----------------------------------------------------------------------------------------------- bad input
def _copy(tiny: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny, tmp_path / "data"))


def test_ill_image_label_shape_mismatch(tiny: Path, tmp_path: Path) -> None:
    data = _copy(tiny, tmp_path)
    label = nib.load(data / "labelsTr" / "label0002.nii.gz")
    cropped = np.asarray(label.dataobj)[:, :-3]
    nib.save(nib.Nifti1Image(cropped, label.affine, label.header), data / "labelsTr" / "label0002.nii.gz")
    proc = run_bundle(BUNDLE, "train.json", check=False, dataset_dir=data, ckpt_dir=tmp_path / "m", epochs=1, **SMALL)
    assert proc.returncode != 0
    assert re.search(r"img0002: image shape \(\d+, \d+, \d+\) != label shape", proc.stdout)


def test_ill_more_label_values_than_classes(tiny: Path, tmp_path: Path) -> None:
    proc = run_bundle(
        BUNDLE, "train.json", check=False, dataset_dir=tiny, ckpt_dir=tmp_path / "m", epochs=1, num_classes=5, **SMALL
    )
    assert proc.returncode != 0
    assert "num_classes=5, but the data" in proc.stdout and "has 14 label values" in proc.stdout
    assert "--num_classes 14" in proc.stdout


def test_ill_label_value_outside_dataset_labels(tiny: Path, tmp_path: Path) -> None:
    data = _copy(tiny, tmp_path)
    label = nib.load(data / "labelsTr" / "label0003.nii.gz")
    arr = np.asarray(label.dataobj).copy()
    arr[0, 0, 0] = 20
    nib.save(nib.Nifti1Image(arr, label.affine, label.header), data / "labelsTr" / "label0003.nii.gz")
    proc = run_bundle(BUNDLE, "train.json", check=False, dataset_dir=data, ckpt_dir=tmp_path / "m", epochs=1, **SMALL)
    assert proc.returncode != 0 and "img0003" in proc.stdout and "20" in proc.stdout


def test_ill_non_ct_range_warns(trained: Path, tiny: Path, tmp_path: Path) -> None:
    src = nib.load(tiny / "imagesTs" / "img0061.nii.gz")
    arr = np.asarray(src.dataobj).astype(np.float32)
    scaled = (arr - arr.min()) / (arr.max() - arr.min())  # an already normalised, non-HU image
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(scaled, src.affine), tmp_path / "in" / "mr0001.nii.gz")
    proc = run_bundle(
        BUNDLE, "inference.json", dataset_dir=tiny, input_dir=tmp_path / "in", ckpt_dir=trained / "models",
        output_dir=tmp_path / "pred", **{k: SMALL[k] for k in ("spacing", "patch_size", "channels")},
    )  # fmt: skip
    assert "mr0001.nii.gz: intensities span [0, 1]" in proc.stdout
    assert "does not look like CT" in proc.stdout and "--intensity_mode minmax" in proc.stdout
    quiet = run_bundle(
        BUNDLE, "inference.json", dataset_dir=tiny, input_dir=tmp_path / "in", ckpt_dir=trained / "models",
        output_dir=tmp_path / "pred2", intensity_mode="minmax",
        **{k: SMALL[k] for k in ("spacing", "patch_size", "channels")},
    )  # fmt: skip
    assert "does not look like CT" not in quiet.stdout and (tmp_path / "pred2" / "mr0001_seg.nii.gz").is_file()


def test_ill_missing_label_for_evaluation_case(trained: Path, tiny: Path, tmp_path: Path) -> None:
    data = _copy(tiny, tmp_path)
    (data / "labelsTr" / "label0005.nii.gz").unlink()  # a validation (evaluation) case
    proc = run_bundle(
        BUNDLE, ["train.json", "evaluate.json"], check=False, dataset_dir=data, ckpt_dir=trained / "models",
        output_dir=tmp_path / "eval", **SMALL,
    )  # fmt: skip
    assert proc.returncode != 0
    assert re.search(r"img0005: label missing \(expected .*label0005\.nii\.gz\)", proc.stdout)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_ill_saliency_layer_name(trained: Path, tiny: Path, tmp_path: Path) -> None:
    proc = run_bundle(
        BUNDLE, "inference.json", check=False, dataset_dir=tiny, input_dir=tiny / "imagesTs",
        ckpt_dir=trained / "models", output_dir=tmp_path / "pred", saliency="true", saliency_layer="decoder.9",
        **{k: SMALL[k] for k in ("spacing", "patch_size", "channels")},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "saliency_layer='decoder.9' is not a layer of UNet3D" in proc.stdout
    assert "Valid layers" in proc.stdout and "decoders.1" in proc.stdout and "bottleneck" in proc.stdout
