# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Tests of the abdominal CT phantom generator and the two CT demo writers."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from tlk_components.data import btcv, kidney
from tlk_components.data.phantoms import (
    AMOS_LABELS,
    BTCV_LABELS,
    PhantomStyle,
    generate_phantom,
    reorient_array,
)
from tlk_components.utils.errors import ConfigError


def test_deterministic_and_case_dependent():
    a = generate_phantom(PhantomStyle(), seed=3, case_index=1, spacing_scale=2.0)
    b = generate_phantom(PhantomStyle(), seed=3, case_index=1, spacing_scale=2.0)
    c = generate_phantom(PhantomStyle(), seed=3, case_index=2, spacing_scale=2.0)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.organs, b.organs)
    assert not np.array_equal(a.organs, c.organs)


def test_btcv_labels_all_present_and_anatomy_plausible():
    ph = generate_phantom(btcv.BTCV_STYLE, seed=0, case_index=0)
    lab = ph.labels(BTCV_LABELS)
    assert set(np.unique(lab)) == set(range(14))
    img = ph.image
    # RAS on disk is LPS for this style: bring it back to check left/right
    lab_ras, _ = reorient_array(lab, ph.affine, ph.axcodes, "RAS")
    xs = np.nonzero(lab_ras == 6)[0].mean(), np.nonzero(lab_ras == 1)[0].mean()  # liver, spleen x index
    assert xs[0] > xs[1], "liver must lie on the patient's right (+x in RAS), spleen on the left"
    assert img[lab == 2].mean() > img[lab == 6].mean() + 30  # bright kidney vs liver in this style
    assert img.min() < -800  # air outside the body


def test_kidney_demo_domains_differ_as_the_real_ones(tmp_path):
    """The kidney demo (adult real-geometry phantoms): AMOS-like source stored LPS without tumours, KiTS-like target
    stored slices-first with tumours, per-case spacing (the class-prior shift between the domains' fields of view is
    tested over many cases in test_adult_phantoms.py)."""
    out = kidney.write_demo(tmp_path / "demo", size="tiny", seed=0)
    src = [nib.load(p) for p in sorted((out / "amos22" / "imagesTr").glob("*.nii.gz"))]
    tgt = [nib.load(p) for p in sorted((out / "kits19").glob("case_*/imaging.nii.gz"))]
    assert all(nib.aff2axcodes(i.affine) == ("L", "P", "S") for i in src)
    assert all(nib.aff2axcodes(i.affine) == ("I", "P", "L") for i in tgt)
    assert len({tuple(np.round(i.header.get_zooms(), 2)) for i in src + tgt}) > 1  # spacing varies per case
    src_lab = [np.asarray(nib.load(p).dataobj) for p in sorted((out / "amos22" / "labelsTr").glob("*.nii.gz"))]
    tgt_lab = [np.asarray(nib.load(p).dataobj) for p in sorted((out / "kits19").glob("case_*/segmentation.nii.gz"))]
    assert all(2 in np.unique(t) for t in tgt_lab)  # tumours in every target case
    assert all(np.isin(s_, [2, 3]).any() for s_ in src_lab)  # both domains always show the kidneys


def test_labels_mapping_and_amos_has_15():
    ph = generate_phantom(PhantomStyle(tumours=(0, 0)), seed=1, case_index=0)
    assert set(np.unique(ph.labels(AMOS_LABELS))) == set(range(16))
    with pytest.raises(ConfigError, match="unknown structure"):
        ph.labels({"heart": 1})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hu": {"brain": 30}}, "unknown tissue"),
        ({"axcodes": "XYZ"}, "axcodes"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"tumours": (2, 1)}, "tumours"),
        ({"medulla_scale": 1.5}, "medulla_scale"),
    ],
)
def test_ill_style_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PhantomStyle(**kwargs)


def test_ill_generate_arguments():
    with pytest.raises(ConfigError, match="spacing_scale"):
        generate_phantom(PhantomStyle(), spacing_scale=0)


def test_kidney_write_demo_layouts(tmp_path):
    out = kidney.write_demo(tmp_path / "demo", size="tiny", seed=0)
    amos, kits = out / "amos22", out / "kits19"
    meta = json.loads((amos / "dataset.json").read_text())
    assert meta["labels"]["2"] == "right kidney" and len(meta["labels"]) == 16
    assert (amos / "imagesTr" / "amos_0001.nii.gz").is_file() and (amos / "labelsTr" / "amos_0001.nii.gz").is_file()
    seg = nib.load(kits / "case_00000" / "segmentation.nii.gz")
    assert nib.aff2axcodes(seg.affine) == ("I", "P", "L")
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
    assert kidney.verify_dataset(out).ok
    # datalists: adaptation lists carry no label path at all
    unlabelled = kidney.kits19_datalist(out, split="train", labels=False)
    assert unlabelled and all(set(d) == {"image"} for d in unlabelled)
    train, test = kidney.kits19_datalist(out, "train"), kidney.kits19_datalist(out, "test")
    assert len(train) + len(test) == 4 and not {d["image"] for d in train} & {d["image"] for d in test}
    assert len(kidney.amos22_datalist(out)) == 4
    # same seed, same bytes
    again = kidney.write_demo(tmp_path / "again", size="tiny", seed=0)
    assert (again / "kits19/case_00001/imaging.nii.gz").read_bytes() == (
        kits / "case_00001/imaging.nii.gz"
    ).read_bytes()


def test_btcv_write_demo_and_datalists(tmp_path):
    out = btcv.write_demo(tmp_path / "btcv", size="tiny", seed=0)
    assert (out / "imagesTr" / "img0001.nii.gz").is_file() and (out / "labelsTr" / "label0001.nii.gz").is_file()
    assert btcv.num_classes(out) == 14
    assert [len(btcv.btcv_datalist(out, s)) for s in ("training", "validation", "test")] == [3, 2, 1]
    assert btcv.verify_dataset(out).ok
    # without dataset.json the folder pairing imgNNNN <-> labelNNNN is used
    (out / "dataset.json").unlink()
    items = btcv.btcv_datalist(out, "all")
    assert len(items) == 5 and items[0]["label"].endswith("label0001.nii.gz")
    assert btcv.verify_dataset(out).ok
