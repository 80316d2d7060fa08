# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""BraTS data module (layout checks, demo writer, datasets) and the issue's bad-input cases end to end."""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tlk_components.boxes.params import BoxParams
from tlk_components.boxes.targets import BoxTargetBuilder, BoxTargetsd
from tlk_components.data.brats import (
    BratsSliceDataset,
    BratsVolumeDataset,
    brats_datalist,
    case_cache_bytes,
    check_cases,
    estimate_cache_bytes,
    find_case_file,
    load_case,
    mean_projection,
    prepare_inputs,
    verify_dataset,
    write_demo,
)
from tlk_components.data.registry import prepare_dataset
from tlk_components.engines.evaluators.box import BoxEvaluator
from tlk_components.engines.evaluators.box_metrics import BoxAveragePrecision, BoxPPV, BoxSensitivity, VolumeIoU
from tlk_components.engines.trainers.box import BoxTrainer
from tlk_components.losses.focal import BoxLocalizationLoss
from tlk_components.networks.fpn import BoxFPN
from tlk_components.utils.errors import ConfigError, DatasetError

SMALL_NET = dict(channels=(4, 8, 8, 8), fpn_channels=8, head_channels=8, head_blocks=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("brats") / "data", size="tiny", seed=0)


def _params() -> BoxParams:
    return BoxParams(image_shape=(96, 96), levels=(2, 3), anchor_shapes=(12, 24))


def _digest(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.nii.gz")):
        h.update(f.name.encode())
        h.update(np.asarray(nib.load(str(f)).dataobj).tobytes())
    return h.hexdigest()


def test_demo_layout_and_determinism(tiny, tmp_path):
    cases = sorted(p.name for p in tiny.iterdir())
    assert cases == [f"BraTS20_Training_{i:03d}" for i in range(1, 6)]
    files = sorted(p.name for p in (tiny / cases[0]).iterdir())
    assert files == [f"{cases[0]}_{s}.nii.gz" for s in ("flair", "seg", "t1", "t1ce", "t2")]
    assert verify_dataset(tiny).ok
    again = write_demo(tmp_path / "again", size="tiny", seed=0)
    assert _digest(again) == _digest(tiny)
    seg = np.asarray(nib.load(str(tiny / cases[0] / f"{cases[0]}_seg.nii.gz")).dataobj)
    assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4} and seg.max() > 0
    empty = np.asarray(nib.load(str(tiny / cases[1] / f"{cases[1]}_seg.nii.gz")).dataobj)
    assert empty.max() == 0  # a case without tumour
    flair = np.asarray(nib.load(str(tiny / cases[0] / f"{cases[0]}_flair.nii.gz")).dataobj).astype(float)
    t1 = np.asarray(nib.load(str(tiny / cases[0] / f"{cases[0]}_t1.nii.gz")).dataobj).astype(float)
    tumour = seg > 0
    assert flair[tumour].mean() > flair[(flair > 0) & ~tumour].mean()  # bright on FLAIR
    assert t1[tumour].mean() < t1[(t1 > 0) & ~tumour].mean()  # dark on T1


def test_loading_binarises_and_splits(tiny):
    v = load_case(tiny / "BraTS20_Training_001", image_size=(64, 64), max_slices=0)
    assert v["image"].shape == (12, 4, 64, 64) and v["label"].shape == (12, 1, 64, 64)
    assert set(torch.unique(v["label"]).tolist()) == {0, 1}
    assert v["orig_shape"] == (96, 96, 12)
    assert [d["case"] for d in brats_datalist(tiny, "train")] == [f"BraTS20_Training_{i:03d}" for i in (1, 2, 3)]
    assert [d["case"] for d in brats_datalist(tiny, "validation")] == ["BraTS20_Training_004"]
    assert [d["case"] for d in brats_datalist(tiny, "test")] == ["BraTS20_Training_005"]
    with pytest.raises(ConfigError, match="split"):
        brats_datalist(tiny, "val")


def test_mean_intensity_projection_155_to_48():
    img = np.arange(155, dtype=np.float32)[None, None, None, :].repeat(4, 0)
    lbl = np.zeros((1, 1, 155), dtype=np.uint8)
    lbl[..., 100] = 1
    out, out_lbl, ranges = mean_projection(img, lbl, 48)
    assert out.shape[-1] == 48 and ranges[0].tolist() == [0, 4] and ranges[-1][1] == 155
    assert out[0, 0, 0, 0] == pytest.approx(1.5)  # mean of slices 0..3
    hit = [i for i in range(48) if out_lbl[0, 0, i]]
    assert len(hit) == 1 and ranges[hit[0]][0] <= 100 < ranges[hit[0]][1]
    same, _, r = mean_projection(img[..., :40], None, 48)
    assert same.shape[-1] == 40 and r.shape == (40, 2)


def _broken(tiny, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(tiny, d)
    (d / "BraTS20_Training_001" / "BraTS20_Training_001_t1ce.nii.gz").unlink()
    c3 = d / "BraTS20_Training_003"
    nib.save(nib.Nifti1Image(np.zeros((96, 80, 12), np.int16), np.eye(4)), str(c3 / "BraTS20_Training_003_t2.nii.gz"))
    c4 = d / "BraTS20_Training_004"
    seg = np.asarray(nib.load(str(c4 / "BraTS20_Training_004_seg.nii.gz")).dataobj).copy()
    seg[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(c4 / "BraTS20_Training_004_seg.nii.gz"))
    return d


def test_ill_dataset_every_bad_case_named(tiny, tmp_path):
    report = verify_dataset(_broken(tiny, tmp_path))
    text = "\n".join(report.problems)
    assert len(report.problems) == 3 and report.n_cases == 5
    assert "BraTS20_Training_001: BraTS20_Training_001_t1ce.nii.gz missing (sequence 't1ce'; expected" in text
    assert "BraTS20_Training_003: sequences have different shapes" in text and "t2 (96, 80, 12)" in text
    assert "BraTS20_Training_004: BraTS20_Training_004_seg.nii.gz holds unexpected label values [3]" in text
    with pytest.raises(DatasetError) as err:
        prepare_dataset("brats_mri_box_localization", tmp_path / "broken")
    assert str(err.value).count("BraTS20_Training_00") >= 3
    with pytest.raises(DatasetError, match="different shapes|has shape"):
        load_case(tmp_path / "broken" / "BraTS20_Training_003")
    assert not verify_dataset(tmp_path / "nothing").ok


def test_inference_inputs_need_no_seg(tiny, tmp_path):
    d = tmp_path / "inputs"
    shutil.copytree(tiny / "BraTS20_Training_005", d / "BraTS20_Training_005")
    (d / "BraTS20_Training_005" / "BraTS20_Training_005_seg.nii.gz").unlink()
    assert prepare_inputs(d) == str(d)
    assert not verify_dataset(d).ok  # training data does need it
    v = BratsVolumeDataset(brats_datalist(d, "all"), with_label=False)[0]
    assert "label" not in v and v["image"].shape == (12, 4, 96, 96)


def test_volume_without_tumour_trains_and_evaluates(tiny):
    torch.manual_seed(0)
    p = _params()
    free = [{"case": "BraTS20_Training_002", "dir": str(tiny / "BraTS20_Training_002")}]
    ds = BratsSliceDataset(free, transform=BoxTargetsd(keys="label", params=p))
    assert all(int(ds[i]["num_boxes"]) == 0 for i in range(len(ds)))
    net = BoxFPN(p, **SMALL_NET)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    trainer = BoxTrainer("cpu", 1, DataLoader(ds, batch_size=6), net, opt, BoxLocalizationLoss())
    trainer.run()
    assert math.isfinite(float(trainer.state.output["loss"]))
    metrics = {"sens": BoxSensitivity(), "ppv": BoxPPV(score_threshold=0.0), "vi": VolumeIoU(score_threshold=0.0)}
    ev = BoxEvaluator(
        "cpu",
        DataLoader(BratsVolumeDataset(free), batch_size=1),
        net,
        p,
        key_val_metric={"ap": BoxAveragePrecision(0.5)},
        additional_metrics=metrics,
    )
    ev.run()
    m = ev.state.metrics
    assert math.isnan(m["sens"]) and math.isnan(m["ap"])  # nothing to find: undefined, not a crash
    assert all(len(g["boxes"]) == 0 for g in ev.state.output["gt"])
    assert len(ev.state.output["pred"]) == 12


def test_ill_boxes_anchors_and_levels():
    p = _params()
    # a box partly outside the image is clipped to it (the same targets as the clipped box)
    b = BoxTargetBuilder(p)
    out = b.flat(torch.tensor([[-10.0, 80.0, 20.0, 120.0]]), torch.tensor([1]))
    ref = b.flat(torch.tensor([[0.0, 80.0, 20.0, 96.0]]), torch.tensor([1]))
    assert torch.equal(out["cls"], ref["cls"]) and out["cls"].sum() > 0
    with pytest.raises(ConfigError, match="larger than image_shape"):
        BoxParams(image_shape=(96, 96), levels=(2, 3), anchor_shapes=(12, 96))
    with pytest.raises(ConfigError, match="deeper than the BoxFPN"):
        BoxFPN(BoxParams(image_shape=(96, 96), levels=(3, 5), anchor_shapes=(12, 24)), channels=(8, 16, 24, 32, 48))


# ----------------------------------------------------------------------------------------------- issue 12
def _to_nii(case_dir, names=("flair", "t1", "t1ce", "t2", "seg")):
    """Rewrite some files of a case as uncompressed ``.nii`` (as common BraTS 2020 copies ship them)."""
    for name in names:
        gz = case_dir / f"{case_dir.name}_{name}.nii.gz"
        img = nib.load(str(gz))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), str(gz.with_suffix("")))
        gz.unlink()


def test_nii_and_nii_gz_are_both_read(tiny, tmp_path):
    """Issue 12 (BraTS 1): .nii files (all of a case, or mixed with .nii.gz) pass the checker, load and infer."""
    d = tmp_path / "nii"
    shutil.copytree(tiny, d)
    _to_nii(d / "BraTS20_Training_001")
    _to_nii(d / "BraTS20_Training_002", ("t1", "seg"))
    assert verify_dataset(d).ok
    assert find_case_file(d / "BraTS20_Training_001", "seg").name == "BraTS20_Training_001_seg.nii"
    ref = load_case(tiny / "BraTS20_Training_001", max_slices=0)
    v = load_case(d / "BraTS20_Training_001", max_slices=0)
    assert torch.equal(v["image"], ref["image"]) and torch.equal(v["label"], ref["label"])
    assert len(BratsVolumeDataset(brats_datalist(d, "all"), with_label=False)) == 5
    inputs = tmp_path / "inputs"
    shutil.copytree(d / "BraTS20_Training_001", inputs / "BraTS20_Training_001")
    (inputs / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii").unlink()
    assert prepare_inputs(inputs) == str(inputs)  # inference input discovery
    # both suffixes for one sequence: ambiguous, reported
    shutil.copy(d / "BraTS20_Training_003" / "BraTS20_Training_003_t2.nii.gz", d / "BraTS20_Training_003" / "x")
    _to_nii(d / "BraTS20_Training_003", ("t2",))
    (d / "BraTS20_Training_003" / "x").rename(d / "BraTS20_Training_003" / "BraTS20_Training_003_t2.nii.gz")
    report = verify_dataset(d)
    assert len(report.problems) == 1 and "_t2.nii.gz and BraTS20_Training_003_t2.nii both exist" in report.problems[0]


def _misnamed(tiny, tmp_path):
    """A copy whose case 2 has its segmentation misnamed, as case 355 of a popular BraTS 2020 copy."""
    d = tmp_path / "misnamed"
    shutil.copytree(tiny, d)
    _to_nii(d / "BraTS20_Training_002")
    c2 = d / "BraTS20_Training_002"
    (c2 / "BraTS20_Training_002_seg.nii").rename(c2 / "W39_1998.09.19_Segm.nii")
    return d


def test_misnamed_segmentation_names_case_expected_and_found(tiny, tmp_path):
    """Issue 12 (BraTS 1): the error names the case folder, the expected names (both suffixes), the files found."""
    d = _misnamed(tiny, tmp_path)
    report = verify_dataset(d)
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert problem.startswith("BraTS20_Training_002: BraTS20_Training_002_seg.nii.gz missing (segmentation 'seg'")
    assert "expected BraTS20_Training_002_seg.nii.gz or BraTS20_Training_002_seg.nii" in problem
    assert "found instead: W39_1998.09.19_Segm.nii" in problem and "--skip_bad_cases true" in problem
    with pytest.raises(DatasetError, match="W39_1998.09.19_Segm.nii"):
        load_case(d / "BraTS20_Training_002")
    assert verify_dataset(d, require_label=False).ok  # inference inputs need no seg
    nested = tmp_path / "BraTS2020_TrainingData"
    (nested / "MICCAI_BraTS2020_TrainingData").mkdir(parents=True)
    shutil.copytree(tiny / "BraTS20_Training_001", nested / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_001")
    assert "pass that folder as --dataset_dir" in verify_dataset(nested).problems[0]


def test_bad_cases_refused_by_default_or_skipped_listed_and_recorded(tiny, tmp_path, capsys):
    """Issue 12 (BraTS 2): default stops naming the case; skip_bad_cases leaves it out, prints and records it."""
    d = _misnamed(tiny, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="BraTS20_Training_002.*W39_1998.09.19_Segm.nii"):
        check_cases(d, output_dir=out)
    assert not (out / "skipped_cases.json").exists()
    skipped = check_cases(d, output_dir=out, skip_bad_cases="true")
    assert skipped == ["BraTS20_Training_002"]
    printed = capsys.readouterr().out
    assert "leaving out 1 of 5 case(s)" in printed and "BraTS20_Training_002: BraTS20_Training_002_seg" in printed
    record = json.loads((out / "skipped_cases.json").read_text())
    assert [r["case"] for r in record["skipped"]] == ["BraTS20_Training_002"] and record["n_cases"] == 5
    assert "W39_1998.09.19_Segm.nii" in record["skipped"][0]["reasons"][0]
    # the split is made before the exclusion: no other case changes split
    assert [i["case"] for i in brats_datalist(d, "train", exclude=skipped)] == [
        "BraTS20_Training_001",
        "BraTS20_Training_003",
    ]
    assert [i["case"] for i in brats_datalist(d, "test", exclude=skipped)] == ["BraTS20_Training_005"]
    # inference inputs need no seg: nothing skipped, and the stale record of the earlier run is removed
    assert check_cases(d, output_dir=out, skip_bad_cases=True, require_label=False) == []
    assert not (out / "skipped_cases.json").exists()
    with pytest.raises(ConfigError, match="skip_bad_cases"):
        check_cases(d, skip_bad_cases="maybe")
    only_bad = tmp_path / "only_bad"
    shutil.copytree(d / "BraTS20_Training_002", only_bad / "BraTS20_Training_002")
    with pytest.raises(DatasetError, match="no good case is left"):
        check_cases(only_bad, skip_bad_cases=True)


def test_cache_size_estimated_from_headers_and_refused_when_too_big(tiny, tmp_path, monkeypatch, caplog):
    """Issue 12 (BraTS 3): the cache estimate is logged before loading; a cache beyond memory stops with the fix."""
    import tlk_components.data.brats as brats

    case = tiny / "BraTS20_Training_001"  # 96 x 96 x 12
    assert case_cache_bytes(case, (240, 240), 48) == 12 * 240 * 240 * 17
    assert case_cache_bytes(case, (96, 96), 4, with_label=False) == 4 * 96 * 96 * 16
    data = brats_datalist(tiny, "all")
    assert estimate_cache_bytes(data, (96, 96), 48) == 5 * 12 * 96 * 96 * 17
    monkeypatch.setattr(brats, "load_case", lambda *a, **k: pytest.fail("loaded before the size check"))
    monkeypatch.setattr(brats, "available_memory_bytes", lambda: 1000)
    with pytest.raises(DatasetError) as err:
        BratsSliceDataset(data, image_size=(240, 240))
    msg = str(err.value)
    assert "in-memory cache needs about 5 case(s) x 11.2 MB = 56 MB" in msg and "--cache disk --cache_dir" in msg
    monkeypatch.undo()
    assert brats.available_memory_bytes() > 0  # /proc/meminfo or sysconf
    with caplog.at_level("INFO", logger="tlk_components.data.brats"):
        BratsVolumeDataset(data[:1], max_slices=4)
    assert "in-memory cache of 1 case(s) x 0.6 MB" in caplog.text


def test_disk_cache_matches_memory_cache(tiny, tmp_path):
    """Issue 12 (BraTS 3): cache='disk' stores each case once as .npy files and gives the same items."""
    data = brats_datalist(tiny, "train")[:2]
    mem = BratsSliceDataset(data, max_slices=6)
    disk = BratsSliceDataset(data, max_slices=6, cache="disk", cache_dir=tmp_path / "cache")
    assert len(disk) == len(mem) == 12
    for i in (0, 7, 11):
        assert torch.equal(disk[i]["image"], mem[i]["image"]) and torch.equal(disk[i]["label"], mem[i]["label"])
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4
    vol = BratsVolumeDataset(data, max_slices=6, cache="disk", cache_dir=tmp_path / "cache")[1]
    ref = BratsVolumeDataset(data, max_slices=6)[1]
    assert torch.equal(vol["image"], ref["image"]) and torch.equal(vol["ranges"], ref["ranges"])
    assert torch.equal(vol["affine"], ref["affine"]) and vol["case"] == ref["case"]
    with pytest.raises(ConfigError, match="cache_dir"):
        BratsSliceDataset(data, cache="disk")
    with pytest.raises(ConfigError, match="Did you mean 'disk'"):
        BratsSliceDataset(data, cache="disc")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="cache_dir .*a_file.* cannot be created"):
        BratsSliceDataset(data, cache="disk", cache_dir=tmp_path / "a_file" / "cache")


def test_ill_one_nan_voxel_in_a_sequence_is_named(tiny, tmp_path):
    """One NaN voxel in a float sequence fails the checker before any compute (it used to pass and train NaN)."""
    d = tmp_path / "nan"
    shutil.copytree(tiny / "BraTS20_Training_001", d / "BraTS20_Training_001")
    f = d / "BraTS20_Training_001" / "BraTS20_Training_001_flair.nii.gz"
    img = nib.load(str(f))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(f))
    report = verify_dataset(d)
    assert not report.ok
    assert "BraTS20_Training_001: BraTS20_Training_001_flair.nii.gz has 1 NaN/Inf voxel(s)" in "\n".join(
        report.problems
    )
