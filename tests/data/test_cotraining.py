# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Two-view data: demo writer, folder-tree pairing, aligned seeded splits and every bad-input case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlk_components.data.cotraining import (
    digit_views,
    load_samples,
    load_splits,
    read_pairs_csv,
    split_samples,
    verify_dataset,
    write_demo,
)
from tlk_components.utils.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("cot") / "tiny", size="tiny")


@pytest.fixture
def copy(tiny, tmp_path) -> Path:
    return Path(shutil.copytree(tiny, tmp_path / "ds"))


def test_demo_is_valid_and_views_are_complementary(tiny):
    assert verify_dataset(tiny).ok
    s = load_samples(tiny)
    assert len(s) == 120 and s.class_names == [str(c) for c in range(10)]
    assert np.bincount(s.labels).tolist() == [12] * 10
    # the two views of a sample are the two (noisy) halves of the same digit: together they rebuild it
    from sklearn.datasets import load_digits

    idx = int(Path(s.view0[7]).stem.split("_")[1])
    a, b = np.asarray(Image.open(s.view0[7])), np.asarray(Image.open(s.view1[7]))
    assert a.shape == b.shape == (16, 8)
    full = np.concatenate([a, b], axis=1)[::2, ::2].astype(float)
    clean = load_digits().images[idx] * 255 / 16
    assert np.corrcoef(full.ravel(), clean.ravel())[0, 1] > 0.8
    assert 0 < np.abs(full - clean).mean() < 3 * 255 / 16  # noisy, but the noise is bounded
    assert Path(s.view0[7]).name == Path(s.view1[7]).name and Path(s.view0[7]).parent.name == str(s.labels[7])


def test_demo_is_deterministic(tmp_path):
    a, b = write_demo(tmp_path / "a", size="tiny", seed=3), write_demo(tmp_path / "b", size="tiny", seed=3)
    assert (a / "samples.csv").read_text() == (b / "samples.csv").read_text()


def test_digit_views_split_halves_and_add_independent_noise():
    img = np.arange(64, dtype=float).reshape(8, 8) / 4
    v0, v1 = digit_views(img)  # no generator: noise-free halves
    assert v0.shape == v1.shape == (16, 8)
    np.testing.assert_allclose(np.concatenate([v0, v1], axis=1)[::2, ::2], img * 255 / 16, atol=0.5)
    n0, n1 = digit_views(img, np.random.default_rng(0))
    d0, d1 = n0.astype(float) - v0, n1.astype(float) - v1
    assert d0.std() > 10 and d1.std() > 10 and abs(np.corrcoef(d0.ravel(), d1.ravel())[0, 1]) < 0.3


def test_folder_trees_without_csv(copy):
    (copy / "samples.csv").unlink()
    (copy / "classes.json").unlink()
    s = load_samples(copy)
    assert len(s) == 120 and s.class_names == [str(c) for c in range(10)]
    assert all(
        Path(a).relative_to(copy / "view0") == Path(b).relative_to(copy / "view1")
        for a, b in zip(s.view0, s.view1, strict=True)
    )


def test_split_sizes_match_source_notebook():
    # 4,303 samples -> 3,227 unlabelled, 754 train, 107 validation, 215 test (document 003, cells 19-21)
    # (the benchmark's setting: 75 % of the labelled rows hidden; the bundle itself uses the labels as given)
    sp = split_samples(np.arange(4303) % 2, unlabelled_fraction=0.75, seed=13)
    assert {k: len(v) for k, v in sp.items()} == {"train": 754, "val": 107, "test": 215, "unlabelled": 3227}
    allidx = np.concatenate(list(sp.values()))
    assert len(np.unique(allidx)) == 4303


def test_split_is_seeded_and_keeps_views_aligned(tiny):
    a, b, c = load_splits(tiny, seed=1), load_splits(tiny, seed=1), load_splits(tiny, seed=2)
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("train", "val", "test", "unlabelled"))
    assert not np.array_equal(a.train, c.train)
    s = a.samples
    for k in ("train", "val", "test", "unlabelled"):
        for i in getattr(a, k):
            assert Path(s.view0[i]).name == Path(s.view1[i]).name  # same sample in both views
            assert Path(s.view0[i]).parent.name == s.class_names[s.labels[i]]


def test_unknown_labels_go_to_pool():
    labels = np.array([0, 1, -1, 2, -1, 0, 1, 2, 0, 1])
    sp = split_samples(labels, unlabelled_fraction=0.5, test_fraction=0.0, val_fraction=0.0)
    assert {2, 4} <= set(sp["unlabelled"].tolist())
    assert len(sp["unlabelled"]) == 2 + 4 and len(sp["train"]) == 4


def test_ill_split_fractions():
    with pytest.raises(ConfigError, match="unlabelled_fraction=1.0"):
        split_samples(np.zeros(10, int), unlabelled_fraction=1.0)
    with pytest.raises(ConfigError, match="test_fraction"):
        split_samples(np.zeros(10, int), test_fraction=-0.1)
    with pytest.raises(ConfigError, match="none for training"):
        split_samples(np.full(5, -1))  # no sample has a known label


def _set_label(line: str, label: str) -> str:
    cells = line.split(",")
    cells[2] = label
    return ",".join(cells)


def _rewrite_csv(ds: Path, fn) -> None:
    lines = (ds / "samples.csv").read_text().splitlines()
    (ds / "samples.csv").write_text("\n".join(fn(lines)) + "\n")


def test_ill_csv_views_of_different_lengths(copy):
    _rewrite_csv(copy, lambda ls: ls[:3] + [ls[3].split(",")[0] + ",,3"] + ls[4:])
    r = verify_dataset(copy)
    assert not r.ok and any("line 4" in p and "view1" in p for p in r.problems)


def test_ill_missing_file_unknown_label_all_listed(copy):
    s = load_samples(copy)
    Path(s.view1[5]).unlink()
    Path(s.view0[9]).unlink()
    _rewrite_csv(copy, lambda ls: ls[:2] + [_set_label(ls[2], "seven")] + ls[3:])
    r = verify_dataset(copy)
    text = "\n".join(r.problems)
    assert len(r.problems) == 3, text
    assert f"{Path(s.view1[5]).name}: view1 image file missing" in text
    assert f"{Path(s.view0[9]).name}: view0 image file missing" in text
    assert "label 'seven' is not in the class map" in text
    with pytest.raises(DatasetError, match="3 problem"):
        load_samples(copy)


def test_ill_trees_misaligned_and_unpaired(copy):
    (copy / "samples.csv").unlink()
    s = load_samples(copy)
    # a view-1 file moved to another class folder: labels disagree between views
    moved = Path(s.view1[0])
    target = copy / "view1" / "9" / moved.name
    moved.rename(target)
    # a view-0 file without a twin
    extra = copy / "view0" / "3" / "extra.png"
    shutil.copy(s.view0[1], extra)
    r = verify_dataset(copy)
    text = "\n".join(r.problems)
    assert "labels misaligned between views" in text and moved.name in text
    assert "extra.png: no matching file in view1/" in text
    assert "views of different lengths" in text


def test_ill_class_map_and_layout(tmp_path, copy):
    (copy / "classes.json").write_text(json.dumps({"0": 0, "1": 2}))
    assert any("0..1" in p for p in verify_dataset(copy).problems)
    assert "neither samples.csv" in verify_dataset(tmp_path).summary()
    assert "not found" in verify_dataset(tmp_path / "nope").summary()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\nx,y\n")
    with pytest.raises(DatasetError, match="header"):
        read_pairs_csv(bad)


def test_ill_unreadable_image(copy):
    s = load_samples(copy)
    Path(s.view0[2]).write_bytes(b"not a png")
    r = verify_dataset(copy)
    assert any(Path(s.view0[2]).name in p and "unreadable" in p for p in r.problems)


# ----------------------------------------------------------------------- issue 12: real users' data, hostile input


def _csv_rows(ds: Path) -> tuple[str, list[list[str]]]:
    lines = (ds / "samples.csv").read_text().splitlines()
    return lines[0], [ln.split(",") for ln in lines[1:]]


def _write_rows(ds: Path, header: str, rows: list[list[str]]) -> None:
    (ds / "samples.csv").write_text("\n".join([header] + [",".join(r) for r in rows]) + "\n")


def test_demo_has_unlabelled_rows_with_hidden_truth(tiny):
    """The demo is a real semi-supervised dataset: 75 % empty labels; the pool is exactly those rows."""
    header, rows = _csv_rows(tiny)
    assert header == "view0,view1,label,hidden_label"
    empty = [r for r in rows if r[2] == ""]
    assert len(empty) == 90 and all(r[3] == r[0].split("/")[1] for r in empty)
    sp = load_splits(tiny)
    s = sp.samples
    assert set(sp.unlabelled.tolist()) == {i for i, r in enumerate(rows) if r[2] == ""}
    assert not s.labelled[sp.unlabelled].any() and (s.labels[sp.unlabelled] >= 0).all()  # hidden truth kept
    assert sp.sizes() == {"train": 21, "val": 3, "test": 6, "unlabelled": 90}


def test_users_labels_used_as_given(tmp_path):
    """No labelled row is hidden by default: a fully labelled dataset has an empty pool."""
    ds = write_demo(tmp_path / "all", size="tiny", hidden_fraction=0.0)
    sp = load_splits(ds)
    assert len(sp.unlabelled) == 0 and len(sp.train) + len(sp.val) + len(sp.test) == 120
    assert len(load_splits(ds, unlabelled_fraction=0.75).unlabelled) == 90  # the benchmark's explicit hiding


def test_fixed_val_test_by_split_column_and_list_files(copy):
    header, rows = _csv_rows(copy)
    labelled = [i for i, r in enumerate(rows) if r[2]]
    for r in rows:
        r.append("")
    test_ids, val_ids = labelled[:4], labelled[4:7]
    for i in test_ids:
        rows[i][4] = "test"
    _write_rows(copy, header + ",split", rows)
    (copy / "val.txt").write_text("\n".join(rows[i][0] for i in val_ids) + "\n")
    sp = load_splits(copy, seed=1)
    assert sp.test.tolist() == sorted(test_ids) and sp.val.tolist() == sorted(val_ids)
    assert len(sp.train) == 30 - 7 and len(sp.unlabelled) == 90
    assert load_splits(copy, seed=2).test.tolist() == sorted(test_ids)  # fixed, whatever the seed
    # an unknown id, an unlabelled row fixed to test, a bad split value, and a row in two splits: all named
    unl = next(i for i, r in enumerate(rows) if not r[2])
    rows[unl][4] = "test"
    rows[labelled[10]][4] = "holdout"
    rows[val_ids[0]][4] = "test"
    _write_rows(copy, header + ",split", rows)
    (copy / "val.txt").write_text("\n".join([rows[i][0] for i in val_ids] + ["view0/3/nope.png"]) + "\n")
    text = "\n".join(verify_dataset(copy).problems)
    assert f"samples.csv line {unl + 2}: fixed to the test split but has no label" in text
    assert "split 'holdout'" in text and "val.txt line 4: 'view0/3/nope.png' is not a sample" in text
    assert "listed in val.txt but its split is already 'test'" in text


def test_ill_duplicate_rows_and_conflicting_labels(copy):
    """Issue 12 review item 10: duplicates leak one sample into several splits; two labels for one pair."""
    header, rows = _csv_rows(copy)
    a, b = next(r for r in rows if r[2]), [r for r in rows if r[2]][1]
    conflict = list(b)
    conflict[2] = str((int(b[2]) + 1) % 10)
    _write_rows(copy, header, rows + [list(a), conflict])
    r = verify_dataset(copy)
    text = "\n".join(r.problems)
    ia, ib = rows.index(a) + 2, rows.index(b) + 2
    assert f"samples.csv line {ia}, samples.csv line 122: the same view pair listed 2 times" in text
    assert f"samples.csv line {ib}, samples.csv line 123: the same view pair with conflicting labels" in text
    with pytest.raises(DatasetError, match="2 problem"):
        load_samples(copy)


def test_ill_duplicate_image_content(copy):
    header, rows = _csv_rows(copy)
    a = next(r for r in rows if r[2])
    for v in (0, 1):
        shutil.copy(copy / a[v], copy / a[v].replace(".png", "_copy.png"))
    dup = [a[0].replace(".png", "_copy.png"), a[1].replace(".png", "_copy.png"), "5" if a[2] != "5" else "6", ""]
    _write_rows(copy, header, rows + [dup])
    text = "\n".join(verify_dataset(copy).problems)
    assert f"samples.csv line {rows.index(a) + 2}, samples.csv line 122: identical image content" in text
    assert "conflicting labels" in text


def test_ill_one_labelled_class(copy, caplog):
    """Issue 12 review item 12: one class only gives meaningless accuracy: refused."""
    header, rows = _csv_rows(copy)
    for r in rows:
        if r[2] and r[2] != "3":
            r[3], r[2] = r[2], ""  # every labelled row but class 3 becomes unlabelled
    _write_rows(copy, header, rows)
    assert any("every labelled sample is of class '3'" in p for p in verify_dataset(copy).problems)
    with pytest.raises(DatasetError, match="at least 2 classes"):
        load_splits(copy)
    # val / test without a class training has: a warning naming the classes
    labels = np.array([0] * 10 + [1] * 10)
    fixed = [""] * 20
    fixed[0] = fixed[1] = "test"
    with caplog.at_level("WARNING"):
        split_samples(labels, val_fraction=0.2, fixed=fixed, seed=0)
    assert "the test split (2 samples) has no sample of class(es) ['1']" in caplog.text


def _to_rgb(ds: Path, only=None) -> None:
    for p in sorted(ds.glob("view*/*/*.png")):
        if only is None or p.name in only:
            Image.open(p).convert("RGB").save(p)


def test_channels_checked_against_in_channels(copy):
    """RGB images with in_channels 1: named before any compute, with the override to use."""
    _to_rgb(copy)
    assert verify_dataset(copy).ok  # consistent data passes the command-line check
    r = verify_dataset(copy, in_channels=1)
    assert any("120 view0 images have 3 channel(s)" in p and "pass --in_channels 3" in p for p in r.problems)
    assert verify_dataset(copy, in_channels=3).ok
    # one grayscale file among RGB images is named
    odd = sorted((copy / "view1").glob("*/*.png"))[0]
    Image.open(odd).convert("L").save(odd)
    assert any(
        odd.name in p and "1 channel(s) (PIL mode L) but most view1 images have 3" in p
        for p in verify_dataset(copy, in_channels=3).problems
    )


def test_sizes_checked_and_image_size_setting(copy):
    odd = sorted((copy / "view0").glob("*/*.png"))[5]
    Image.open(odd).resize((10, 20)).save(odd)
    r = verify_dataset(copy)
    assert len(r.problems) == 1
    assert odd.name in r.problems[0] and "is 20x10 (height x width) but most images are 16x8" in r.problems[0]
    assert '--image_size "[16, 8]"' in r.problems[0]
    assert verify_dataset(copy, image_size=[16, 8]).ok
    with pytest.raises(ConfigError, match="image_size"):
        verify_dataset(copy, image_size=[16])


def test_intensity_scaling_by_bit_depth(tmp_path):
    from tlk_components.data.cotraining import ScaleIntensityByType

    pre = _bundle_preprocessing()
    a16 = (np.arange(16 * 8).reshape(16, 8) * 500).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "a16.png")
    x = pre(str(tmp_path / "a16.png"))
    assert x.dtype == torch.float32 and x.shape == (1, 16, 8)
    np.testing.assert_allclose(x[0].numpy(), a16 / 65535.0, atol=1e-6)  # not clipped at 255
    a8 = (np.arange(16 * 8).reshape(16, 8) * 2).astype(np.uint8)
    Image.fromarray(a8).save(tmp_path / "a8.png")
    np.testing.assert_allclose(pre(str(tmp_path / "a8.png"))[0].numpy(), a8 / 255.0, atol=1e-6)
    f = np.linspace(-3.0, 5.0, 128, dtype=np.float32).reshape(16, 8)
    Image.fromarray(f).save(tmp_path / "f.tif")
    y = pre(str(tmp_path / "f.tif"))[0].numpy()
    assert y.min() == 0.0 and y.max() == pytest.approx(1.0) and np.allclose(y, (f + 3) / 8, atol=1e-6)
    assert float(ScaleIntensityByType()(torch.tensor([[300, 300]], dtype=torch.int16)).max()) == pytest.approx(
        300 / 32767
    )


def _bundle_preprocessing(**override):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(
        str(Path(__file__).resolve().parents[2] / "bundles/cotraining_classification/configs/train.json")
    )
    parser["bundle_root"] = "/nonexistent"
    for k, v in override.items():
        parser[k] = v
    return parser.get_parsed_content("train#preprocessing", lazy=False)


def test_bundle_resizes_and_reads_rgb(copy):
    f = sorted((copy / "view0").glob("*/*.png"))[0]
    Image.open(f).resize((12, 30)).convert("RGB").save(f)
    assert _bundle_preprocessing(image_size=[16, 8])(str(f)).shape == (3, 16, 8)
    assert _bundle_preprocessing()(str(f)).shape == (3, 30, 12)


def test_bundle_initialize_checks_channels_before_compute(copy, tmp_path):
    """train.json's initialize names a channel mismatch (no training starts)."""
    from monai.bundle import ConfigParser

    _to_rgb(copy)
    parser = ConfigParser()
    parser.read_config(
        str(Path(__file__).resolve().parents[2] / "bundles/cotraining_classification/configs/train.json")
    )
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(copy)})
    with pytest.raises(RuntimeError) as e:  # MONAI wraps the DatasetError raised by the config expression
        parser.get_parsed_content("initialize", lazy=False)
    cause = e.value.__cause__
    assert isinstance(cause, DatasetError) and any("pass --in_channels 3" in p for p in cause.problems)
    parser["in_channels"] = 3
    parser.get_parsed_content("initialize", lazy=False)
    net = parser.get_parsed_content("network_def", lazy=False)
    assert net(torch.zeros(2, 6, 16, 8)).shape == (2, 10)
