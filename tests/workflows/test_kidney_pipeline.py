# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The kidney bundle's patch-based pipeline, read from its configs: plan-driven patches with foreground
oversampling, body-cropped volumes, the size prior of what the adapter sees, and the honest target split (the
adapter and the oracle's model selection never see a test case)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from tests.bundle_utils import BUNDLES
from tlk_components.data import kidney, plan

CONFIGS = BUNDLES / "kidney_ct_da_segmentation" / "configs"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kidney_pipeline")
    data = kidney.write_demo(root / "data", size="tiny", seed=0)
    plan.plan(str(data), out=str(root / "plans.json"), max_patch_voxels=16**3, memory_voxels=4 * 16**3)
    from tlk_components.adaptation.intensity import ensure_alignment

    ensure_alignment(
        root / "intensity_alignment.json",
        kidney.amos22_datalist(kidney.resolve_layout(data).source, split="train"),
        kidney.kits19_datalist(kidney.resolve_layout(data).target, split="train", labels=False),
    )
    return root


def _parser(demo: Path, *extra: str) -> ConfigParser:
    p = ConfigParser()
    p.read_config([str(CONFIGS / "train.json"), *(str(CONFIGS / e) for e in extra)])
    p["dataset_dir"] = str(demo / "data")
    p["demo_dir"] = str(demo / "data")
    p["ckpt_dir"] = str(demo)
    p["plans_file"] = str(demo / "plans.json")
    p["output_dir"] = str(demo / "eval")
    p["num_workers"] = 0
    return p


def test_patch_size_and_batch_come_from_the_plan(demo: Path) -> None:
    p = _parser(demo)
    plans = plan.load_plans(demo / "plans.json")
    assert p.get_parsed_content("patch_size") == plans["patch_size"] == [16, 16, 16]
    assert p.get_parsed_content("batch_size") == plans["batch_size"] >= 2


def test_source_patches_oversample_the_kidney(demo: Path) -> None:
    """RandCropByPosNegLabeld with pos 1/3: at least a third of the patches hold kidney (the rest are random body
    patches, which hold kidney only by chance), every patch has the plan's size, and the cached volume is the
    body-cropped whole scan (larger than a patch), not one centre crop."""
    from monai.utils import set_determinism

    set_determinism(seed=0)
    p = _parser(demo, "pretrain.json")
    ds = p.get_parsed_content("train#dataset")
    holds_kidney = []
    for _ in range(30):
        for i in range(len(ds)):
            (patch,) = ds[i]
            assert tuple(patch["image"].shape) == (1, 16, 16, 16) and tuple(patch["label"].shape) == (1, 16, 16, 16)
            holds_kidney.append(bool((patch["label"] > 0).any()))
    share = float(np.mean(holds_kidney))
    assert share >= 1 / 3, share
    cached = ds._cache[0]
    assert all(s > 16 for s in cached["image"].shape[1:])  # whole body-cropped volume, sampled by patches
    # the body crop dropped the air around the patient: the cached volume is smaller than the resampled scan
    raw = kidney.amos22_datalist(kidney.resolve_layout(demo / "data").source, split="train")[0]
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(raw["image"]))
    target = p.get_parsed_content("target_spacing")
    resampled = np.asarray(img.shape) * np.asarray(img.header.get_zooms()[:3]) / np.asarray(target)
    assert all(c <= r + 1 for c, r in zip(cached["image"].shape[1:], resampled, strict=True))
    assert np.prod(cached["image"].shape[1:]) < 0.95 * np.prod(resampled)


def test_cached_source_case_is_compact(demo: Path) -> None:
    """What the cache holds per voxel: float32 image + uint8 label + int32 kidney indices + a capped background
    subset (MONAI's FgBgToIndicesd would add 8 bytes per voxel); the indices are exactly the kidney voxels."""
    p = _parser(demo, "pretrain.json")
    cached = p.get_parsed_content("train#dataset")._cache[0]
    label = np.asarray(cached["label"])
    assert label.dtype == np.uint8 and cached["image"].dtype == torch.float32
    fg, bg = cached["label_fg_indices"], cached["label_bg_indices"]
    assert fg.dtype == bg.dtype == np.int32
    np.testing.assert_array_equal(fg, np.flatnonzero(label.reshape(-1) > 0))
    assert (label.reshape(-1)[bg] == 0).all() and 0 < bg.size <= 100_000
    nbytes = sum(int(np.asarray(v).nbytes) for v in cached.values() if hasattr(v, "shape"))
    assert nbytes <= 5 * label.size + 4 * (fg.size + 100_000)  # nothing else per voxel in the cache


def test_target_patches_are_unlabelled_body_patches(demo: Path) -> None:
    p = _parser(demo)
    ds = p.get_parsed_content("train#target_dataset")
    (patch,) = ds[0] if isinstance(ds[0], list) else (ds[0],)
    assert set(patch) >= {"image"} and "label" not in patch
    assert tuple(patch["image"].shape) == (1, 16, 16, 16)


def test_size_prior_is_the_kidney_share_of_a_random_source_patch(demo: Path) -> None:
    """The prior is what the adapter's size term sees: the kidney share of random patches cut from the cached,
    body-cropped volumes (checked by sampling such patches from the source), not the share of body voxels."""
    from monai.transforms import RandSpatialCropd

    p = _parser(demo)
    prior = p.get_parsed_content("class_prior")
    pre = p.get_parsed_content("source_preprocessing")
    crop = RandSpatialCropd(["image", "label"], roi_size=[16, 16, 16], random_size=False)
    crop.set_random_state(0)
    shares, body_kid, body = [], 0, 0
    for item in kidney.amos22_datalist(kidney.resolve_layout(demo / "data").source, split="train"):
        case = pre(dict(item))
        shares += [float((crop(case)["label"] > 0).float().mean()) for _ in range(400)]
        import nibabel as nib

        img, lab = (np.asarray(nib.load(item[k]).dataobj) for k in ("image", "label"))
        body_kid += int(np.isin(lab[img > -500], [2, 3]).sum())
        body += int((img > -500).sum())
    assert sum(prior) == pytest.approx(1.0)
    assert prior[1] == pytest.approx(float(np.mean(shares)), rel=0.1)
    assert abs(prior[1] - body_kid / body) > 0.1 * prior[1]  # a patch does not see the body-voxel share
    assert (demo / "size_prior.json").is_file()
    p["prior_kidney_scale"] = 0.5
    assert p.get_parsed_content("class_prior")[1] == pytest.approx(0.5 * prior[1], rel=1e-6)


def test_honest_split_adapter_and_oracle_selection_never_see_test_cases(demo: Path) -> None:
    """Adaptation reads target images only (no label paths) and no test image; the oracle trains on the train
    split and selects its checkpoint on the dev split; evaluation uses the test split only."""
    adapt = _parser(demo).get_parsed_content("target_train_list")
    oracle = _parser(demo, "pretrain.json", "oracle.json")
    oracle_train = oracle.get_parsed_content("train#dataset#data")
    oracle_select = oracle.get_parsed_content("validate#dataset#data")
    test = _parser(demo, "evaluate.json").get_parsed_content("target_test_list")

    def images(items: list[dict]) -> set[str]:
        return {d["image"] for d in items}

    assert adapt and all("label" not in d for d in adapt)
    assert oracle_select and test and oracle_train
    assert not images(adapt) & images(test)
    assert not images(oracle_train) & images(test) and not images(oracle_select) & images(test)
    assert not images(oracle_select) & images(oracle_train)
    assert images(adapt) == images(oracle_train)
    assert all("label" in d for d in test)


def test_split_cases_fractions() -> None:
    items = list(range(30))
    train = kidney.split_cases(items, "train", 1 / 3, 0.15)
    dev = kidney.split_cases(items, "dev", 1 / 3, 0.15)
    test = kidney.split_cases(items, "test", 1 / 3, 0.15)
    assert (len(train), len(dev), len(test)) == (16, 4, 10) and sorted(train + dev + test) == items
    assert kidney.split_cases(items, "train", 1 / 3) == items[:20]  # no dev split: as before
    from tlk_components.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="leave no training case"):
        kidney.split_cases(list(range(3)), "train", 1 / 3, 0.5)
    with pytest.raises(ConfigError, match="split"):
        kidney.split_cases(items, "validation")


def test_evaluation_preprocessing_keeps_metadata_for_inversion(demo: Path) -> None:
    p = _parser(demo, "evaluate.json")
    tf = p.get_parsed_content("eval_preprocessing")
    item = p.get_parsed_content("target_test_list")[0]
    out = tf({"image": item["image"]})
    from monai.data import MetaTensor

    assert isinstance(out["image"], MetaTensor) and out["image"].applied_operations
    assert torch.isfinite(out["image"]).all()


def test_disk_cache_variant(demo: Path, tmp_path: Path) -> None:
    """cache_disk.json: the deterministic preprocessing is cached on disk (MONAI PersistentDataset) instead of in
    memory; patches come out the same way."""
    p = _parser(demo, "pretrain.json", "cache_disk.json")
    p["cache_dir"] = str(tmp_path / "cache")
    ds = p.get_parsed_content("train#dataset")
    (patch,) = ds[0]
    assert tuple(patch["image"].shape) == (1, 16, 16, 16) and "label" in patch
    assert list((tmp_path / "cache" / "source").glob("*.pt"))


def test_heavy_augmentation_variant_overrides_only_the_augmentation(demo: Path) -> None:
    """heavy_augmentation.json (the domain-generalisation baseline) swaps the augmentation list and nothing else."""
    base = _parser(demo, "pretrain.json")
    heavy = _parser(demo, "pretrain.json", "heavy_augmentation.json")
    heavy_aug, base_aug = heavy.get_parsed_content("augmentation"), base.get_parsed_content("augmentation")
    names = [type(t).__name__ for t in heavy_aug]
    assert {"RandHistogramShiftd", "RandShiftIntensityd"} <= set(names) and len(names) > len(base_aug)
    assert type(heavy_aug[0]).__name__ == type(base_aug[0]).__name__ == "RandAffined"
    assert heavy_aug[0].prob > base_aug[0].prob
    from monai.utils import set_determinism

    set_determinism(seed=0)
    ds = heavy.get_parsed_content("train#dataset")
    for i in range(len(ds)):
        (patch,) = ds[i]
        assert tuple(patch["image"].shape) == (1, 16, 16, 16) and torch.isfinite(patch["image"]).all()
    set_determinism(seed=None)


def test_body_crop_before_resampling_matches_resampling_first(demo: Path) -> None:
    """The cached preprocessing crops to the body before it resamples (so only the body is resampled, in float32):
    the result is the volume that resampling first and cropping after gives, up to the crop margin."""
    from monai.transforms import Compose

    p = _parser(demo)
    load, resample = p.get_parsed_content("preprocessing_load"), p.get_parsed_content("preprocessing_resample")
    names = [type(t).__name__ for t in load + resample]
    assert names.index("CropForegroundd") < names.index("Spacingd")
    crop, spacing = load[-1], resample[0]
    item = p.get_parsed_content("source_train_list")[0]
    loaded = Compose(load[:-1])(dict(item))
    cropped = crop(dict(loaded))
    assert np.prod(cropped["image"].shape) < np.prod(loaded["image"].shape)  # air around the patient is gone
    ours = spacing(cropped)
    reference = crop(spacing(dict(loaded)))
    assert ours["image"].dtype == torch.float32
    np.testing.assert_allclose(ours["image"].pixdim, reference["image"].pixdim)
    shape_ours, shape_ref = np.array(ours["image"].shape[1:]), np.array(reference["image"].shape[1:])
    assert (np.abs(shape_ours - shape_ref) <= 4).all(), (shape_ours, shape_ref)
    body_ours, body_ref = int((ours["image"] > -500).sum()), int((reference["image"] > -500).sum())
    assert abs(body_ours - body_ref) <= 0.02 * body_ref
    kidney_ours, kidney_ref = (int(np.isin(np.asarray(d["label"]), [2, 3]).sum()) for d in (ours, reference))
    assert kidney_ref > 0 and abs(kidney_ours - kidney_ref) <= 0.02 * kidney_ref


@pytest.mark.parametrize("extra", [(), ("pretrain.json",), ("oracle.json",), ("evaluate.json",)])
def test_every_stage_writes_the_demo_on_first_use_then_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...]
) -> None:
    """A fresh bundle folder: each stage's ``initialize`` writes the demo into the empty demo folder before any
    datalist is read (the datalists of the plan and the alignment are resolved only after that), then plans and
    aligns on it. Tiny phantoms stand in for the default demo size."""
    from functools import partial

    from monai.bundle import ConfigWorkflow

    monkeypatch.setattr(kidney, "write_demo", partial(kidney.write_demo, size="tiny"))
    data = tmp_path / "demo_data"
    overrides = {
        "dataset_dir": str(data),
        "demo_dir": str(data),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "eval"),
        "plan_max_patch_voxels": 16**3,
        "plan_memory_voxels": 4 * 16**3,
        "num_threads": 1,
    }
    files = [str(CONFIGS / "train.json"), *(str(CONFIGS / e) for e in extra)]
    workflow = ConfigWorkflow(config_file=files, workflow_type="train", **overrides)
    workflow.initialize()
    assert (data / "amos22" / "dataset.json").is_file() and any((data / "kits19").glob("case_*"))
    assert (tmp_path / "models" / "plans.json").is_file()
    assert (tmp_path / "models" / "intensity_alignment.json").is_file()
