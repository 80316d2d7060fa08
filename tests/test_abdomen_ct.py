# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the abdomen_ct_attention_segmentation helpers: CT windowing, class count, and the shared NIfTI writer."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from tlk_components.data.abdomen_ct import CTIntensityd, NonCTRangeWarning, organ_names, resolve_num_classes
from tlk_components.engines.seg_inference import SaveNiftiLikeInputd
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
