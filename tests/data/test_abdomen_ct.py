# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the abdomen_ct_attention_segmentation helpers: CT windowing, class count, and the shared NIfTI writer."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from tlk_components.data.abdomen_ct import CTIntensityd, NonCTRangeWarning, organ_names, resolve_num_classes
from tlk_components.engines.inference.segmentation import SaveNiftiLikeInputd
from tlk_components.utils.errors import ConfigError, DatasetError


def _ct(values: np.ndarray, name: str = "/d/img0001.nii.gz") -> MetaTensor:
    return MetaTensor(torch.as_tensor(values, dtype=torch.float32), meta={"filename_or_obj": name})


def test_window_reference() -> None:
    hu = np.array([[-1000.0, -175.0, 37.5, 250.0, 1200.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a real CT range must not warn
        out = CTIntensityd("image")({"image": _ct(hu)})["image"]
    assert np.allclose(np.asarray(out), [[0.0, 0.0, 0.5, 1.0, 1.0]])


def test_minmax_is_the_lecture_scaling() -> None:
    x = np.array([[2.0, 4.0, 10.0]])
    out = CTIntensityd("image", mode="minmax")({"image": _ct(x)})["image"]
    assert np.allclose(np.asarray(out), (x - x.min()) / (x.max() - x.min()))


@pytest.mark.parametrize("values", [[[0.0, 0.3, 1.0]], [[0.0, 800.0, 2400.0]], [[-20.0, 10.0, 40.0]]])
def test_ill_non_ct_range_warns_with_file_name(values) -> None:
    with pytest.warns(NonCTRangeWarning, match=r"mr0007\.nii\.gz: intensities span .*--intensity_mode minmax"):
        CTIntensityd("image")({"image": _ct(np.array(values), "/x/mr0007.nii.gz")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CTIntensityd("image", mode="minmax")({"image": _ct(np.array(values))})  # no warning without windowing


@pytest.mark.parametrize(
    "kwargs, match", [({"mode": "hu"}, "intensity_mode"), ({"a_min": 100, "a_max": 0}, "a_min < a_max")]
)
def test_ill_intensity_args(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        CTIntensityd("image", **kwargs)


def _dataset(tmp_path, labels: dict) -> str:
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels, "training": []}))
    return str(tmp_path)


def test_num_classes_from_data_and_checked(tmp_path) -> None:
    d = _dataset(tmp_path, {"0": "background", "1": "spleen", "2": "right kidney"})
    assert resolve_num_classes(d, "auto") == 3 and resolve_num_classes(d, 0) == 3 and resolve_num_classes(d, 4) == 4
    assert organ_names(d) == ["spleen", "right_kidney"]
    assert organ_names(d, 4) == ["spleen", "right_kidney", "class_3"]
    with pytest.raises(ConfigError, match=r"num_classes=2, but the data .* has 3 label values .*--num_classes 3"):
        resolve_num_classes(d, 2)
    assert resolve_num_classes(tmp_path / "no_json_here", "auto") == 14  # BTCV's labels


def test_shared_writer_keeps_btcv_affine_and_header(tmp_path) -> None:
    """The bundle writes predictions with the shared SaveNiftiLikeInputd: values, affine, header text and codes."""
    affine = np.array([[-1.5, 0, 0, 90], [0, -1.5, 0, 120], [0, 0, 2.5, -60], [0, 0, 0, 1]], dtype=float)
    src = nib.Nifti1Image(np.zeros((5, 4, 3), np.int16), affine)
    src.header["descrip"] = b"scanner X"
    src.set_sform(affine, code=2)
    src.set_qform(affine, code=1)
    nib.save(src, tmp_path / "img0061.nii.gz")
    pred = np.random.default_rng(0).integers(0, 14, (1, 5, 4, 3))
    image = MetaTensor(torch.zeros(1, 5, 4, 3), meta={"filename_or_obj": str(tmp_path / "img0061.nii.gz")})
    SaveNiftiLikeInputd("pred", tmp_path / "out")({"pred": torch.as_tensor(pred), "image": image})
    out = nib.load(tmp_path / "out" / "img0061_seg.nii.gz")
    assert np.array_equal(np.asarray(out.dataobj), pred[0]) and out.get_data_dtype() == np.uint8
    assert np.allclose(out.affine, affine) and out.header["descrip"] == b"scanner X"
    assert int(out.header["sform_code"]) == 2 and int(out.header["qform_code"]) == 1
    with pytest.raises(DatasetError, match="invert the preprocessing"):
        SaveNiftiLikeInputd("pred", tmp_path / "out")({"pred": torch.zeros(1, 2, 2, 2), "image": image})


# ------------------------------------------------------------------------------------------- dataset layouts
@pytest.fixture(scope="module")
def tiny_btcv(tmp_path_factory) -> Path:
    from tlk_components.data.btcv import write_demo

    return write_demo(tmp_path_factory.mktemp("btcv") / "data", size="tiny", seed=0)


def _synapse_copy(tiny: Path, root: Path) -> Path:
    """The tiny demo rearranged as the Synapse download unpacks: RawData/Training/{img,label}, RawData/Testing/img."""
    raw = root / "RawData"
    for src, dst in (("imagesTr", "Training/img"), ("labelsTr", "Training/label"), ("imagesTs", "Testing/img")):
        shutil.copytree(tiny / src, raw / dst)
    return root


def test_synapse_layout_is_read_and_verified(tiny_btcv: Path, tmp_path: Path) -> None:
    """The README's Synapse layout (RawData/Training/img + label) gives the same cases as the imagesTr layout."""
    from tlk_components.data.btcv import btcv_datalist, detect_layout, verify_dataset

    flat = tmp_path / "flat"  # imagesTr/labelsTr without dataset.json: the split by sorted case id
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        shutil.copytree(tiny_btcv / sub, flat / sub)
    syn = _synapse_copy(tiny_btcv, tmp_path / "syn")
    assert detect_layout(syn).name == "synapse" and detect_layout(syn / "RawData").name == "synapse"
    assert detect_layout(flat).name == "btcv" and detect_layout(tiny_btcv).name == "msd"
    for root in (syn, syn / "RawData"):
        for split in ("training", "validation", "test", "all"):
            got = [{k: Path(v).name for k, v in item.items()} for item in btcv_datalist(root, split)]
            want = [{k: Path(v).name for k, v in item.items()} for item in btcv_datalist(flat, split)]
            assert got == want and got, split
        assert Path(btcv_datalist(root, "training")[0]["label"]).parent == syn / "RawData" / "Training" / "label"
        report = verify_dataset(root)
        assert report.ok, report.summary()
    (syn / "RawData" / "Training" / "label" / "label0002.nii.gz").unlink()
    report = verify_dataset(syn)
    assert not report.ok and "img0002" in report.summary() and "label0002" in report.summary()


def test_ill_unknown_layout_lists_the_accepted_ones(tmp_path: Path) -> None:
    from tlk_components.data.btcv import btcv_datalist, verify_dataset

    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "ct.nii.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"no known dataset layout.*dataset\.json.*imagesTr/.*RawData/Training/img"):
        btcv_datalist(tmp_path, "training")
    summary = verify_dataset(tmp_path).summary()
    assert "dataset.json" in summary and "labelsTr/label0001.nii.gz" in summary and "RawData/Training/label" in summary


def test_inference_writes_the_demo_only_for_default_inputs(tmp_path: Path, monkeypatch) -> None:
    """Given inputs: nothing written. Default inputs: the demo into demo_data, or a cache when that is read-only."""
    import tlk_components.data.abdomen_ct as abd
    import tlk_components.data.datasets as zds

    written: list[Path] = []

    def fake_demo(bundle: str, writer, out_dir, size: str = "demo", seed: int = 0) -> Path:
        written.append(Path(out_dir))
        img = nib.Nifti1Image(np.full((8, 8, 6), -1000, np.int16), np.diag([3.0, 3.0, 4.0, 1.0]))
        (Path(out_dir) / "imagesTs").mkdir(parents=True)
        nib.save(img, Path(out_dir) / "imagesTs" / "img0061.nii.gz")
        return Path(out_dir)

    monkeypatch.setattr(zds, "write_demo_dataset", fake_demo)
    monkeypatch.setenv("TLK_HOME", str(tmp_path / "home"))
    demo = tmp_path / "bundle" / "demo_data"
    user = fake_demo("x", None, tmp_path / "user") / "imagesTs"
    written.clear()
    assert abd.inference_datalist(user, demo, demo) == [{"image": str(user / "img0061.nii.gz")}]
    assert written == [] and not demo.exists()  # a given input folder: nothing prepared
    monkeypatch.setattr(abd, "_can_write", lambda folder: False)  # read-only bundle folder
    items = abd.inference_datalist(demo / "imagesTs", demo, demo)
    cache = tmp_path / "home" / "demo_data" / "abdomen_ct_attention_segmentation"
    assert written == [cache] and items[0]["image"].startswith(str(cache)) and not demo.exists()
    monkeypatch.setattr(abd, "_can_write", lambda folder: True)
    written.clear()
    items = abd.inference_datalist(demo / "imagesTs", demo, demo)
    assert written == [demo] and items[0]["image"].startswith(str(demo))
    abd.inference_datalist(demo / "imagesTs", demo, demo)
    assert written == [demo]  # an existing demo is reused, not rewritten
