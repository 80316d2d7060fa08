# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the dataset fingerprint, the plan rules, plans.json and the CT normalisation transform."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tlk_components.data import kidney
from tlk_components.data.plan import ensure_plans, intensity_stats, load_plans, make_plan, plan
from tlk_components.data.transforms import CTNormalized, KidneyFromAmosd
from tlk_components.utils.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return kidney.write_demo(tmp_path_factory.mktemp("plan") / "demo", size="tiny", seed=0)


def test_intensity_stats_reference():
    v = np.arange(1001, dtype=float)  # 0..1000
    s = intensity_stats(v)
    assert s["mean"] == pytest.approx(500.0) and s["median"] == pytest.approx(500.0)
    assert s["percentile_00_5"] == pytest.approx(5.0) and s["percentile_99_5"] == pytest.approx(995.0)
    with pytest.raises(DatasetError, match="no foreground"):
        intensity_stats(np.array([]))


def test_plan_on_demo_uses_source_foreground_and_never_target_labels(demo, tmp_path, monkeypatch):
    import tlk_components.data.plan as plan_mod

    read = []
    real = plan_mod.load_nifti
    monkeypatch.setattr(plan_mod, "load_nifti", lambda p: read.append(str(p)) or real(p))
    path = plan(str(demo), out=str(tmp_path / "plans.json"))
    assert not any("segmentation" in p for p in read), "the target's labels must not be read"
    assert any("labelsTr" in p for p in read)
    plans = load_plans(path)
    fp = plans["fingerprint"]
    assert fp["source"]["intensity_region"] == "foreground" and fp["target"]["intensity_region"] == "body"
    # median spacing in RAS axis order (the source is stored LPS, the target slices-first), per-case spacings
    import nibabel as nib

    def ras_zooms(pattern: str) -> list:
        return np.median(
            [nib.as_closest_canonical(nib.load(f)).header.get_zooms()[:3] for f in sorted(demo.glob(pattern))], 0
        )

    np.testing.assert_allclose(fp["source"]["spacing"]["median"], ras_zooms("amos22/imagesTr/*.nii.gz"), rtol=1e-3)
    np.testing.assert_allclose(fp["target"]["spacing"]["median"], ras_zooms("kits19/case_*/imaging.nii.gz"), rtol=1e-3)
    assert fp["source"]["body_label_shares"]["2"] > 0 and "body_label_shares" not in fp["target"]
    norm = plans["normalization"]
    assert norm["clip_low"] < norm["mean"] < norm["clip_high"] and norm["std"] > 0
    assert norm["clip_low"] == fp["source"]["intensity"]["percentile_00_5"]
    assert plans["target_spacing"] == fp["source"]["spacing"]["median"]
    assert all(p % 16 == 0 for p in plans["patch_size"]) and plans["batch_size"] >= 2


def test_plan_rules():
    fp = {
        "n_cases": 10,
        "spacing": {"median": [0.8, 0.8, 5.0], "p10": [0.7, 0.7, 2.5]},
        "shape": {"median": [512, 512, 100]},
        "intensity": {"percentile_00_5": -50.0, "percentile_99_5": 250.0, "mean": 100.0, "std": 60.0},
    }
    p = make_plan(fp)
    assert p["target_spacing"] == [0.8, 0.8, 2.5]  # anisotropic axis -> 10th percentile
    assert np.prod(p["patch_size"]) <= 96 * 96 * 64 and all(v % 16 == 0 for v in p["patch_size"])
    p2 = make_plan(fp, target_spacing=[1.62, 1.62, 3.22], divisor=8, max_patch_voxels=64**3)
    assert p2["target_spacing"] == [1.62, 1.62, 3.22] and np.prod(p2["patch_size"]) <= 64**3
    assert all(v % 8 == 0 for v in p2["patch_size"])
    with pytest.raises(ConfigError, match="target_spacing"):
        make_plan(fp, target_spacing=[1, 1])
    with pytest.raises(ConfigError, match="divisor"):
        make_plan(fp, divisor=0)


def test_ensure_plans_and_ill_plans_file(demo, tmp_path):
    p = tmp_path / "sub" / "plans.json"
    assert ensure_plans(demo, p) == str(p) and p.is_file()
    mtime = p.stat().st_mtime_ns
    ensure_plans(demo, p)
    assert p.stat().st_mtime_ns == mtime  # not rewritten
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="missing keys"):
        load_plans(bad)
    with pytest.raises(ConfigError, match="not found"):
        CTNormalized("image", plans_file=tmp_path / "none.json")
    with pytest.raises(ConfigError, match="normalization"):
        CTNormalized("image", plans_file=bad)
    with pytest.raises(DatasetError, match="does not exist"):
        plan(str(tmp_path / "missing"))


def test_ct_normalized_reference(tmp_path):
    t = CTNormalized("image", clip_low=-100, clip_high=300, mean=100, std=50)
    x = np.array([-1000.0, 0.0, 100.0, 1000.0], dtype=np.float32)
    np.testing.assert_allclose(t({"image": x})["image"], [-4.0, -2.0, 0.0, 4.0])
    out = t({"image": torch.tensor(x)})["image"]
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), [-4.0, -2.0, 0.0, 4.0])
    path = tmp_path / "plans.json"
    path.write_text(json.dumps({"normalization": {"clip_low": -100, "clip_high": 300, "mean": 100, "std": 50}}))
    np.testing.assert_allclose(CTNormalized("image", plans_file=path)({"image": x})["image"], [-4, -2, 0, 4])
    with pytest.raises(ConfigError, match="std"):
        CTNormalized("image", clip_low=0, clip_high=1, mean=0, std=0)
    with pytest.raises(ConfigError, match="clip_low"):
        CTNormalized("image", clip_low=5, clip_high=1, mean=0, std=1)
    with pytest.raises(ConfigError, match="plans_file"):
        CTNormalized("image", mean=0)


def test_kidney_from_amos_reference():
    scores = torch.zeros(16, 2, 1, 1)
    scores[3, 0] = 5.0  # voxel 0: left kidney wins
    scores[6, 1] = 5.0  # voxel 1: liver wins
    scores[2, 1] = 1.0
    out = KidneyFromAmosd("pred")({"pred": scores})["pred"]
    assert out.shape == (2, 2, 1, 1)
    assert out[:, 0].flatten().tolist() == [0.0, 5.0] and out[:, 1].flatten().tolist() == [5.0, 1.0]
    with pytest.raises(ConfigError, match="16 channels"):
        KidneyFromAmosd("pred")({"pred": torch.zeros(2, 2, 2, 2)})
