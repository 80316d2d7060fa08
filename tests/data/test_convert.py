# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the KiTS19 / AMOS22 conversion to the RAS MSD layout and of restoring predictions."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from tlk_components.data import kidney
from tlk_components.data.btcv import msd_datalist
from tlk_components.data.convert import convert_amos22, convert_kits19, from_ras, restore_prediction, to_ras
from tlk_components.utils.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return kidney.write_demo(tmp_path_factory.mktemp("conv") / "demo", size="tiny", seed=1)


def test_kits19_conversion_ras_and_tumour_merged(demo, tmp_path):
    out = convert_kits19(str(demo), str(tmp_path / "kits"))
    meta = json.loads((tmp_path / "kits/dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "kidney"} and meta["numTraining"] == 4
    rec = meta["tlk_conversion"]["cases"]["case_00000"]
    assert rec["axcodes"] == "IPL"
    src_img = nib.load(demo / "kits19/case_00000/imaging.nii.gz")
    src_seg = np.asarray(nib.load(demo / "kits19/case_00000/segmentation.nii.gz").dataobj)
    img = nib.load(tmp_path / "kits/imagesTr/case_00000.nii.gz")
    seg = np.asarray(nib.load(tmp_path / "kits/labelsTr/case_00000.nii.gz").dataobj)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert img.shape == tuple(reversed(src_img.shape))  # IPL (z, y, x) -> RAS (x, y, z)
    assert set(np.unique(seg)) == {0, 1} and 2 in np.unique(src_seg)
    assert (seg > 0).sum() == (src_seg > 0).sum()  # tumour merged into kidney, nothing lost
    # same world position for the same voxel: compare world coordinates of the first kidney voxel
    ijk = np.argwhere(seg > 0)[0]
    world = img.affine @ np.r_[ijk, 1]
    back = np.linalg.inv(src_img.affine) @ world
    assert src_seg[tuple(np.rint(back[:3]).astype(int))] > 0
    assert len(msd_datalist(out)) == 4 and kidney.verify_dataset(out).ok


def test_amos22_both_label_strategies(demo, tmp_path):
    keep = convert_amos22(str(demo / "amos22"), str(tmp_path / "a15"), label_strategy="amos15")
    merged = convert_amos22(str(demo), str(tmp_path / "akid"), label_strategy="kidney")
    l15 = np.asarray(nib.load(tmp_path / "a15/labelsTr/amos_0001.nii.gz").dataobj)
    lk = np.asarray(nib.load(tmp_path / "akid/labelsTr/amos_0001.nii.gz").dataobj)
    assert len(np.unique(l15)) >= 12 and set(np.unique(lk)) == {0, 1}
    np.testing.assert_array_equal(lk, np.isin(l15, [2, 3]).astype(lk.dtype))
    assert json.loads((tmp_path / "akid/dataset.json").read_text())["labels"] == {"0": "background", "1": "kidney"}
    assert kidney.verify_dataset(keep).ok and kidney.verify_dataset(merged).ok


@pytest.mark.parametrize("axcodes", ["IPL", "LPS", "SAR", "RAS"])
def test_orientation_round_trip(axcodes):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3, size=(5, 6, 7)).astype(np.uint8)
    from tlk_components.data.phantoms import reorient_array

    base = np.diag([2.0, 3.0, 4.0, 1.0])
    base[:3, 3] = [-10, 20, 5]
    oriented, affine = reorient_array(data, base, "RAS", axcodes)
    img = nib.Nifti1Image(oriented, affine)
    ras, record = to_ras(img)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(np.asarray(ras.dataobj), data)
    back = from_ras(np.asarray(ras.dataobj), record, header=img.header)
    np.testing.assert_array_equal(np.asarray(back.dataobj), oriented)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)


def test_restore_prediction_goes_back_to_original(demo, tmp_path):
    out = convert_kits19(str(demo / "kits19"), str(tmp_path / "kits"))
    # a "prediction" on the converted grid: the converted label itself
    pred = tmp_path / "case_00002_seg.nii.gz"
    lbl = nib.load(tmp_path / "kits/labelsTr/case_00002.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(lbl.dataobj), lbl.affine), pred)
    restored = restore_prediction(str(pred), out, str(tmp_path / "restored.nii.gz"))
    orig = nib.load(demo / "kits19/case_00002/segmentation.nii.gz")
    res = nib.load(restored)
    assert res.shape == orig.shape
    np.testing.assert_allclose(res.affine, orig.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(res.dataobj), (np.asarray(orig.dataobj) > 0).astype(np.uint8))
    with pytest.raises(DatasetError, match="no orientation record"):
        restore_prediction(str(pred), out, str(tmp_path / "x.nii.gz"), case="case_09999")
    with pytest.raises(DatasetError, match="does not map onto"):
        from_ras(
            np.zeros((2, 2, 2)),
            json.loads((tmp_path / "kits/dataset.json").read_text())["tlk_conversion"]["cases"]["case_00002"],
        )


def test_ill_conversion_inputs(demo, tmp_path):
    with pytest.raises(ConfigError, match="label_strategy"):
        convert_amos22(str(demo), str(tmp_path / "x"), label_strategy="organs")
    bad = tmp_path / "bad"
    (bad / "case_00000").mkdir(parents=True)
    with pytest.raises(DatasetError, match="case_00000"):
        convert_kits19(str(bad), str(tmp_path / "y"))


def test_cli_commands(demo, tmp_path, capsys):
    from tlk_components.cli import main

    main(["convert_kits19", str(demo), str(tmp_path / "k")])
    main(["convert_amos22", str(demo), str(tmp_path / "a"), "--label_strategy", "kidney"])
    main(["plan", str(demo), "--out", str(tmp_path / "plans.json")])
    assert (tmp_path / "k/dataset.json").is_file() and (tmp_path / "a/labelsTr/amos_0001.nii.gz").is_file()
    assert json.loads((tmp_path / "plans.json").read_text())["batch_size"] >= 2
    with pytest.raises(SystemExit) as err:
        main(["convert_amos22", str(demo), str(tmp_path / "b"), "--label_strategy", "organs"])
    assert err.value.code == 2 and "label_strategy" in capsys.readouterr().err


# ------------------------------------------------------------- issue 12: the real downloads' common variants


def _real_download_copy(demo, tmp_path):
    """The demo rewritten as users hold the real data: the KiTS19 repository clone (``kits19/data/case_*``) with
    uncompressed ``.nii`` files, and an AMOS22 release whose dataset.json also lists an MRI scan (id >= 501)."""
    import shutil

    root = tmp_path / "downloads"
    kits = root / "kits19" / "data"
    shutil.copytree(demo / "kits19", kits)
    for f in kits.glob("case_*/*.nii.gz"):
        nib.save(nib.load(f), f.with_name(f.name.removesuffix(".gz")))
        f.unlink()
    amos = root / "amos22"
    shutil.copytree(demo / "amos22", amos)
    meta = json.loads((amos / "dataset.json").read_text())
    first = meta["training"][0]
    for key, sub in (("image", "imagesTr"), ("label", "labelsTr")):  # an MRI scan, listed like the CT ones
        shutil.copy(amos / first[key], amos / sub / "amos_0507.nii.gz")
    meta["training"].append({"image": "./imagesTr/amos_0507.nii.gz", "label": "./labelsTr/amos_0507.nii.gz"})
    # one CT case stored uncompressed while dataset.json still names the .nii.gz
    img = amos / "imagesTr" / "amos_0001.nii.gz"
    nib.save(nib.load(img), img.with_suffix(""))
    img.unlink()
    (amos / "dataset.json").write_text(json.dumps(meta))
    return root


def test_real_download_variants_are_read_as_they_are(demo, tmp_path, caplog):
    root = _real_download_copy(demo, tmp_path)
    assert kidney.resolve_layout(root / "kits19").kind == "kits19"
    assert kidney.verify_dataset(root).ok, kidney.verify_dataset(root).problems
    kits = kidney.kits19_datalist(root, split="all")
    assert kits and all(i["image"].endswith("/imaging.nii") and "/kits19/data/case_" in i["image"] for i in kits)
    assert all(i["label"].endswith("/segmentation.nii") for i in kits)
    with caplog.at_level("INFO"):
        amos = kidney.amos22_datalist(root, split="all")
    assert not any("amos_0507" in i["image"] for i in amos) and "left out 1 MRI case" in caplog.text
    assert amos[0]["image"].endswith("imagesTr/amos_0001.nii") and len(amos) == len(kidney.amos22_datalist(demo))
    # conversion reads the same variants
    out = convert_kits19(str(root / "kits19"), str(tmp_path / "conv_kits"))
    assert json.loads((tmp_path / "conv_kits/dataset.json").read_text())["numTraining"] == len(kits)
    convert_amos22(str(root / "amos22"), str(tmp_path / "conv_amos"))
    assert not (tmp_path / "conv_amos/imagesTr/amos_0507.nii.gz").exists()
    assert kidney.verify_dataset(out).ok


def test_kits_case_with_both_nifti_forms_is_refused(demo, tmp_path):
    root = _real_download_copy(demo, tmp_path)
    case = root / "kits19" / "data" / "case_00000"
    nib.save(nib.load(case / "imaging.nii"), case / "imaging.nii.gz")
    report = kidney.verify_dataset(root / "kits19")
    assert not report.ok and any("both imaging.nii.gz and imaging.nii" in p for p in report.problems)
    with pytest.raises(DatasetError, match="keep one of them"):
        kidney.kits19_datalist(root / "kits19")
