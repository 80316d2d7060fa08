# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Issue 12, adversarial review: data checks before any compute and the user's data never overwritten.

* item 7: NaN/Inf voxels are named (file and count) by every NIfTI checker (shared ``check_finite``);
* item 12: implausible voxel spacing (100 mm) is refused;
* item 17: a 2-D NIfTI (or a 4-D series) fed to a 3-D model is refused by the checker and at inference, and a file
  or unwritable ``--output_dir`` gives a clear error naming the path;
* item 3: ``prepare-demo`` never writes into a non-empty folder that is not an earlier demo;
* item 4: ``convert_amos22 A A`` is refused; a second conversion into the same output merges or is refused.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from tests.bundle_utils import run_bundle
from tlk_components.data import btcv, kidney
from tlk_components.data.convert import convert_amos22, convert_kits19
from tlk_components.data.datasets import DEMO_MARKER, DatasetReport
from tlk_components.data.inputs import input_datalist
from tlk_components.data.nifti_checks import (
    check_finite,
    check_volume_header,
    count_nonfinite,
    save_nifti,
    spacing_problem,
    volume_shape_problem,
)
from tlk_components.data.registry import prepare_dataset, write_demo_dataset
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import ensure_output_dir


@pytest.fixture(scope="module")
def kid_demo(tmp_path_factory):
    return kidney.write_demo(tmp_path_factory.mktemp("kid") / "demo", size="tiny", seed=0)


@pytest.fixture(scope="module")
def btcv_demo(tmp_path_factory):
    return btcv.write_demo(tmp_path_factory.mktemp("btcv") / "demo", size="tiny", seed=0)


@pytest.fixture
def kid(kid_demo, tmp_path):
    return shutil.copytree(kid_demo, tmp_path / "demo")


@pytest.fixture
def abd(btcv_demo, tmp_path):
    return shutil.copytree(btcv_demo, tmp_path / "btcv")


def _rewrite(path, fn):
    img = nib.load(str(path))
    new = fn(np.asanyarray(img.dataobj).astype(np.float32), img)
    if not isinstance(new, nib.Nifti1Image):
        new = nib.Nifti1Image(new, img.affine, img.header)
    new.set_data_dtype(np.float32)  # the original header's int16 would cast NaN away
    save_nifti(new, path)


def _one_nan(a, img):
    a[1, 1, 1] = np.nan
    return a


# ------------------------------------------------------------------------------------------- item 7: NaN / Inf
def test_check_finite_names_file_and_count():
    report = DatasetReport("x")
    data = np.zeros((3, 3, 3), np.float32)
    assert check_finite(data, report, "c1", "/d/img.nii.gz") == 0 and report.ok
    data[0, 0, :2] = [np.nan, np.inf]
    assert check_finite(data, report, "c1", "/d/img.nii.gz", what="t1ce") == 2
    assert (
        report.problems == [report.problems[0]] and "c1: t1ce img.nii.gz has 2 NaN/Inf voxel(s)" in report.problems[0]
    )
    assert count_nonfinite(np.zeros(4, np.uint8)) == 0


@pytest.mark.parametrize(
    "rel, case",
    [
        ("amos22/imagesTr/amos_0002.nii.gz", "amos22/amos_0002"),
        ("kits19/case_00001/imaging.nii.gz", "kits19/case_00001"),
    ],
)
def test_one_nan_voxel_fails_kidney_checker(kid, rel, case):
    _rewrite(kid / rel, _one_nan)
    probs = kidney.verify_dataset(kid).problems
    assert any(p.startswith(case) and f"{os.path.basename(rel)} has 1 NaN/Inf voxel(s)" in p for p in probs), probs


@pytest.mark.parametrize("rel", ["imagesTr/img0002.nii.gz", "labelsTr/label0003.nii.gz", "imagesTs/img0061.nii.gz"])
def test_one_nan_voxel_fails_btcv_checker(abd, rel):
    _rewrite(abd / rel, _one_nan)
    probs = btcv.verify_dataset(abd).problems
    assert any(f"{os.path.basename(rel)} has 1 NaN/Inf voxel(s)" in p for p in probs), probs


# ------------------------------------------------------------------------------ item 12 / 17: spacing, 2-D
def test_spacing_and_shape_rules():
    assert spacing_problem((0.8, 0.8, 5.0)) is None and spacing_problem((3.0, 3.0, 20.0)) is None
    assert "(1.0, 1.0, 100.0) mm" in spacing_problem((1.0, 1.0, 100.0))
    assert spacing_problem((0.0, 1.0, 1.0)) is not None and spacing_problem((1.0, -1.0, 1.0)) is not None
    assert "2-D with shape (64, 64)" in volume_shape_problem((64, 64))
    assert "single slice" in volume_shape_problem((64, 64, 1))
    assert "4-D" in volume_shape_problem((8, 8, 8, 2), allow_singleton_channel=True)
    assert volume_shape_problem((8, 8, 8, 1), allow_singleton_channel=True) is None
    assert volume_shape_problem((8, 8, 8, 1)) is not None


def _with_spacing(zooms):
    def fn(a, img):
        new = nib.Nifti1Image(a, np.diag([*zooms, 1.0]))
        new.header.set_zooms(zooms)
        return new

    return fn


def test_100mm_spacing_fails_checkers(kid, abd):
    for lbl in (kid / "amos22/labelsTr/amos_0001.nii.gz", kid / "amos22/imagesTr/amos_0001.nii.gz"):
        _rewrite(lbl, _with_spacing((1.0, 1.0, 100.0)))
    probs = kidney.verify_dataset(kid).problems
    assert any("amos_0001.nii.gz has voxel spacing (1.0, 1.0, 100.0) mm" in p and "(0, 20]" in p for p in probs)
    _rewrite(abd / "imagesTs/img0061.nii.gz", _with_spacing((100.0, 1.0, 1.0)))
    assert any("img0061.nii.gz has voxel spacing (100.0, 1.0, 1.0)" in p for p in btcv.verify_dataset(abd).problems)


def test_2d_nifti_fails_btcv_checker(abd):
    _rewrite(abd / "imagesTs/img0061.nii.gz", lambda a, img: nib.Nifti1Image(a[:, :, 0], img.affine))
    probs = btcv.verify_dataset(abd).problems
    assert any("img0061.nii.gz is 2-D with shape" in p and "expected a 3-D volume" in p for p in probs), probs


def test_inference_inputs_refuse_2d_4d_and_bad_spacing(kid, tmp_path):
    src = kid / "amos22/imagesTr"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz", "e.nii.gz"):
        shutil.copy(src / "amos_0001.nii.gz", inputs / name)
    assert len(input_datalist(inputs)) == 5
    _rewrite(inputs / "b.nii.gz", lambda a, img: nib.Nifti1Image(a[:, :, 0], img.affine))
    _rewrite(inputs / "c.nii.gz", lambda a, img: nib.Nifti1Image(np.stack([a, a], -1), img.affine))
    _rewrite(inputs / "d.nii.gz", _with_spacing((1.0, 1.0, 100.0)))
    _rewrite(inputs / "e.nii.gz", lambda a, img: nib.Nifti1Image(a[..., None], img.affine))  # X x Y x Z x 1: fine
    with pytest.raises(DatasetError) as err:
        input_datalist(inputs)
    msg = str(err.value)
    assert "3 of 5 image(s)" in msg
    assert "b.nii.gz is 2-D with shape" in msg and "expected a 3-D volume" in msg
    assert "c.nii.gz is 4-D with shape" in msg and "d.nii.gz has voxel spacing (1.0, 1.0, 100.0)" in msg
    assert "a.nii.gz" not in msg and "e.nii.gz" not in msg
    assert check_volume_header(inputs / "e.nii.gz") is None


# ---------------------------------------------------------------------------------- item 17: --output_dir
def test_ensure_output_dir(tmp_path):
    assert ensure_output_dir(tmp_path / "a" / "b") == str(tmp_path / "a" / "b") and (tmp_path / "a/b").is_dir()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match=f"output_dir {f} is a file"):
        ensure_output_dir(f)
    with pytest.raises(ConfigError, match=f"output_dir {f / 'sub'} cannot be created"):
        ensure_output_dir(f / "sub")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write into read-only folders")
def test_ensure_output_dir_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match=f"output_dir {ro} is not writable"):
            ensure_output_dir(ro)
        with pytest.raises(ConfigError, match="cannot be created"):
            ensure_output_dir(ro / "sub")
    finally:
        ro.chmod(0o755)


def test_mnist_inference_with_a_file_as_output_dir(tmp_path):
    data = write_demo_dataset("mnist_mlp_classification", tmp_path / "data", size="tiny")
    out = tmp_path / "predictions.csv"
    out.write_text("not a folder")
    proc = run_bundle(
        "mnist_mlp_classification",
        "inference.json",
        input_dir=data / "t10k-images-idx3-ubyte.gz",
        output_dir=out,
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0 and f"output_dir {out} is a file" in proc.stdout, proc.stdout[-3000:]
    assert out.read_text() == "not a folder"


# ----------------------------------------------------------------------------------- item 3: prepare-demo
def _user_mnist(folder):
    folder.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes(gzip.compress(b"the user's real MNIST " + name.encode()))
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_prepare_demo_refuses_user_data(tmp_path, capsys):
    from tlk_components.cli import main

    user = tmp_path / "mnist"
    before = _user_mnist(user)
    with pytest.raises(SystemExit) as err:
        main(["prepare_demo", "mnist_mlp_classification", str(user), "--size", "tiny"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and str(user) in msg and DEMO_MARKER in msg and "new or empty folder" in msg
    assert {p.name: p.read_bytes() for p in user.iterdir()} == before, "the user's files are untouched"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        write_demo_dataset("mnist_mlp_classification", f, size="tiny")


def test_prepare_demo_rewrites_only_its_own_demo(tmp_path):
    from tlk_components.cli import main

    d = tmp_path / "kid"
    main(["prepare_demo", "kidney_ct_da_segmentation", str(d), "--size", "tiny", "--seed", "3"])
    marker = json.loads((d / DEMO_MARKER).read_text())
    assert marker["bundle"] == "kidney_ct_da_segmentation" and marker["size"] == "tiny" and marker["seed"] == 3
    assert "kits19/case_00000/imaging.nii.gz" in marker["files"] and kidney.verify_dataset(d).ok
    (d / "stale_from_demo.txt").write_text("written by the demo")
    marker["files"].append("stale_from_demo.txt")
    (d / DEMO_MARKER).write_text(json.dumps(marker))
    (d / "my_notes.txt").write_text("the user's")
    main(["prepare_demo", "kidney_ct_da_segmentation", str(d), "--size", "tiny", "--seed", "4"])
    assert json.loads((d / DEMO_MARKER).read_text())["seed"] == 4
    assert not (d / "stale_from_demo.txt").exists(), "files of the earlier demo are removed first"
    assert (d / "my_notes.txt").read_text() == "the user's", "files the user added are kept"
    with pytest.raises(DatasetError, match="demo dataset of 'kidney_ct_da_segmentation'"):
        write_demo_dataset("mnist_mlp_classification", d, size="tiny")


def test_prepare_dataset_writes_demo_only_into_an_empty_folder(tmp_path):
    d = tmp_path / "demo_data"
    assert prepare_dataset("mnist_mlp_classification", d, demo_dir=d, size="tiny") == str(d)
    assert json.loads((d / DEMO_MARKER).read_text())["bundle"] == "mnist_mlp_classification"
    user = tmp_path / "user"
    before = _user_mnist(user)
    with pytest.raises(DatasetError):
        prepare_dataset("mnist_mlp_classification", user, demo_dir=user, size="tiny")
    assert {p.name: p.read_bytes() for p in user.iterdir()} == before


# ------------------------------------------------------------------------------------ item 4: conversion
def test_conversion_refuses_its_own_input(kid):
    amos = kid / "amos22"
    before = (amos / "dataset.json").read_text()
    with pytest.raises(DatasetError, match="is the input folder"):
        convert_amos22(str(amos), str(amos))
    with pytest.raises(DatasetError, match="lies inside the input folder"):
        convert_amos22(str(amos), str(amos / "converted"))
    with pytest.raises(DatasetError, match="lies inside the output folder"):
        convert_kits19(str(kid / "kits19"), str(kid))
    with pytest.raises(DatasetError, match="lies inside the output folder"):
        convert_kits19(str(kid), str(kid))  # the demo folder holds kits19/
    assert (amos / "dataset.json").read_text() == before and not (amos / "imagesTr/amos_0001.nii.gz.tmp").exists()
    assert kidney.verify_dataset(kid).ok


def _split_kits(kid, tmp_path):
    first, second = tmp_path / "k1", tmp_path / "k2"
    for folder, cases in ((first, ("case_00000", "case_00001")), (second, ("case_00002", "case_00003"))):
        for c in cases:
            shutil.copytree(kid / "kits19" / c, folder / c)
    return first, second


def test_second_conversion_merges_records(kid, tmp_path):
    first, second = _split_kits(kid, tmp_path)
    out = tmp_path / "out"
    convert_kits19(str(first), str(out))
    convert_kits19(str(second), str(out))
    meta = json.loads((out / "dataset.json").read_text())
    cases = meta["tlk_conversion"]["cases"]
    assert sorted(cases) == ["case_00000", "case_00001", "case_00002", "case_00003"], "both conversions' records"
    assert meta["numTraining"] == 4 and len(meta["training"]) == 4
    assert cases["case_00000"]["source_file"] == str((first / "case_00000/imaging.nii.gz").resolve())
    assert meta["tlk_conversion"]["sources"] == [str(first.resolve()), str(second.resolve())]
    convert_kits19(str(first), str(out))  # the same input again: a no-op rewrite
    assert json.loads((out / "dataset.json").read_text()) == meta
    assert kidney.verify_dataset(out).ok


def test_second_conversion_refuses_conflicts(kid, tmp_path):
    first, second = _split_kits(kid, tmp_path)
    out = tmp_path / "out"
    convert_kits19(str(first), str(out))
    before = (out / "dataset.json").read_text()
    shutil.move(second / "case_00002", second / "case_00000")  # another volume under an existing case id
    with pytest.raises(DatasetError, match="case_00000: already converted from another volume"):
        convert_kits19(str(second), str(out))
    with pytest.raises(DatasetError, match="would mix label conventions"):
        convert_kits19(str(second), str(out), label_strategy="amos15")
    with pytest.raises(DatasetError, match="would mix label conventions"):
        convert_amos22(str(kid / "amos22"), str(out))
    assert (out / "dataset.json").read_text() == before, "nothing written when refused"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("user data")
    with pytest.raises(DatasetError, match="holds no earlier conversion"):
        convert_kits19(str(first), str(other))
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
