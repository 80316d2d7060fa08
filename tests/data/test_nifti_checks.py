# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Bad-input tests of the NIfTI integrity checks (issue 3 "Bad input") on the KiTS19, AMOS22, BTCV and converted
layouts: every problem is named, and all bad cases are listed at once."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from tlk_components.data import btcv, kidney
from tlk_components.data.convert import convert_kits19
from tlk_components.data.datasets import DatasetReport
from tlk_components.data.nifti_checks import CasePair, check_pairs, load_nifti, save_nifti
from tlk_components.data.registry import prepare_dataset
from tlk_components.utils.errors import DatasetError


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return kidney.write_demo(tmp_path_factory.mktemp("kid") / "demo", size="tiny", seed=0)


@pytest.fixture
def data(demo, tmp_path):
    dst = tmp_path / "demo"
    shutil.copytree(demo, dst)
    return dst


def _rewrite(path, fn):
    img = nib.load(str(path))
    arr = np.asanyarray(img.dataobj)
    new = fn(arr, img)
    save_nifti(new, path)


def _nifti(arr, affine):
    return nib.Nifti1Image(arr, affine)


def test_clean_demo_passes(demo):
    report = kidney.verify_dataset(demo)
    assert report.ok, report.summary()
    assert report.n_cases == 8


def test_ill_missing_label_kits(data):
    (data / "kits19/case_00001/segmentation.nii.gz").unlink()
    report = kidney.verify_dataset(data)
    assert not report.ok
    assert any("case_00001" in p and "label missing" in p for p in report.problems)


def test_ill_missing_label_amos(data):
    (data / "amos22/labelsTr/amos_0002.nii.gz").unlink()
    report = kidney.verify_dataset(data)
    assert any("amos_0002" in p and "label missing" in p for p in report.problems)


def test_ill_geometry_mismatch(data):
    seg = data / "kits19/case_00000/segmentation.nii.gz"
    _rewrite(seg, lambda a, img: _nifti(a[:-1], img.affine))  # one slice short
    lbl = data / "amos22/labelsTr/amos_0001.nii.gz"

    def shifted(a, img):
        aff = img.affine.copy()
        aff[:3, 3] += 25.0  # origin moved
        return _nifti(a, aff)

    _rewrite(lbl, shifted)
    probs = kidney.verify_dataset(data).problems
    assert any("case_00000" in p and "shape" in p for p in probs)
    assert any("amos_0001" in p and "affine" in p for p in probs)


def test_ill_spacing_mismatch(data):
    lbl = data / "amos22/labelsTr/amos_0003.nii.gz"
    _rewrite(lbl, lambda a, img: _nifti(a, img.affine @ np.diag([1.5, 1, 1, 1])))
    probs = kidney.verify_dataset(data).problems
    assert any("amos_0003" in p and "spacing" in p for p in probs)


def test_ill_unexpected_label_values(data):
    seg = data / "kits19/case_00002/segmentation.nii.gz"
    _rewrite(seg, lambda a, img: _nifti(np.where(a == 2, 7, a).astype(np.uint8), img.affine))
    probs = kidney.verify_dataset(data).problems
    assert any("case_00002" in p and "unexpected value" in p and "[7]" in p for p in probs)


def test_ill_nan_voxels(data):
    img_path = data / "kits19/case_00003/imaging.nii.gz"

    def with_nan(a, img):
        f = a.astype(np.float32)
        f[0, 0, :3] = np.nan
        return _nifti(f, img.affine)

    _rewrite(img_path, with_nan)
    probs = kidney.verify_dataset(data).problems
    assert any("case_00003" in p and "3 NaN/Inf" in p for p in probs)


@pytest.mark.parametrize("ndim", [2, 4])
def test_ill_not_3d(data, ndim):
    img_path = data / "amos22/imagesTr/amos_0004.nii.gz"

    def reshape(a, img):
        return _nifti(a[:, :, 0] if ndim == 2 else a[..., None].repeat(2, axis=3), img.affine)

    _rewrite(img_path, reshape)
    probs = kidney.verify_dataset(data).problems
    assert any("amos_0004" in p and f"{ndim}-D" in p and "expected a 3-D volume" in p for p in probs)


def test_ill_corrupt_gz(data):
    path = data / "kits19/case_00001/imaging.nii.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # truncated download
    probs = kidney.verify_dataset(data).problems
    assert any("case_00001" in p and "not a readable NIfTI" in p for p in probs)
    with pytest.raises(ValueError, match="imaging.nii.gz is not a readable NIfTI"):
        load_nifti(path)


def test_ill_empty_folders(tmp_path):
    (tmp_path / "kits19").mkdir()
    (tmp_path / "amos22" / "imagesTr").mkdir(parents=True)
    probs = kidney.verify_dataset(tmp_path).problems
    assert any("no case_NNNNN folders" in p for p in probs)
    assert any("imagesTr" in p and "is empty" in p for p in probs)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "unrecognised layout" in kidney.verify_dataset(empty).summary()
    assert not btcv.verify_dataset(empty).ok
    report = check_pairs([], DatasetReport(str(empty)))
    assert "no cases found" in report.problems[0]


def test_all_bad_cases_listed_at_once_and_raised(data):
    (data / "kits19/case_00001/segmentation.nii.gz").unlink()
    (data / "amos22/labelsTr/amos_0002.nii.gz").unlink()
    path = data / "kits19/case_00003/imaging.nii.gz"
    path.write_bytes(path.read_bytes()[:100])
    report = kidney.verify_dataset(data)
    assert len(report.problems) == 3
    with pytest.raises(DatasetError) as err:
        report.raise_if_bad()
    msg = str(err.value)
    assert "case_00001" in msg and "amos_0002" in msg and "case_00003" in msg and "Fix:" in msg
    # prepare_dataset (every bundle's initialize) stops before compute with the same list
    with pytest.raises(DatasetError, match="3 problem"):
        prepare_dataset("kidney_ct_da_segmentation", data)


def test_ill_each_public_layout_and_converted(data, tmp_path):
    # the checks run on a bare KiTS19 folder, a bare AMOS22 folder and the converted MSD layout
    assert kidney.verify_dataset(data / "kits19").ok
    assert kidney.verify_dataset(data / "amos22").ok
    conv = convert_kits19(str(data / "kits19"), str(tmp_path / "conv"))
    assert kidney.resolve_layout(conv).kind == "converted" and kidney.verify_dataset(conv).ok
    (tmp_path / "conv/labelsTr/case_00000.nii.gz").unlink()
    assert any("case_00000" in p and "label missing" in p for p in kidney.verify_dataset(conv).problems)
    # KiTS19's unlabelled test cases (>= 210) need no segmentation
    shutil.copytree(data / "kits19/case_00000", data / "kits19/case_00210")
    (data / "kits19/case_00210/segmentation.nii.gz").unlink()
    assert kidney.verify_dataset(data / "kits19").ok


def test_ill_btcv_bad_cases(tmp_path):
    out = btcv.write_demo(tmp_path / "b", size="tiny")
    (out / "labelsTr/label0002.nii.gz").unlink()
    _rewrite(
        out / "labelsTr/label0001.nii.gz", lambda a, img: _nifti(np.where(a == 13, 20, a).astype(np.uint8), img.affine)
    )
    (out / "dataset.json").write_text("{not json")
    report = btcv.verify_dataset(out)
    assert any("invalid JSON" in p for p in report.problems)
    (out / "dataset.json").unlink()
    probs = btcv.verify_dataset(out).problems
    assert any("img0002" in p and "label missing" in p for p in probs)
    assert any("img0001" in p and "[20]" in p for p in probs)


def test_check_pairs_float_label_and_unlabelled(tmp_path):
    aff = np.eye(4)
    save_nifti(_nifti(np.zeros((4, 4, 4), np.float32), aff), tmp_path / "i.nii.gz")
    save_nifti(_nifti(np.full((4, 4, 4), 0.5, np.float32), aff), tmp_path / "l.nii.gz")
    report = check_pairs(
        [CasePair("c1", tmp_path / "i.nii.gz", tmp_path / "l.nii.gz"), CasePair("c2", tmp_path / "i.nii.gz", None)],
        DatasetReport(str(tmp_path)),
        range(3),
    )
    assert any("c1" in p and "non-integer" in p for p in report.problems)
    assert any("c2" in p and "label missing" in p for p in report.problems)
    ok = check_pairs([CasePair("c2", tmp_path / "i.nii.gz", None)], DatasetReport("x"), require_labels=False)
    assert ok.ok
