# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Two-view data: demo writer, folder-tree pairing, aligned seeded splits and every bad-input case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
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
    sp = split_samples(np.zeros(4303, dtype=int), seed=13)
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
    _rewrite_csv(copy, lambda ls: ls[:2] + [ls[2].rsplit(",", 1)[0] + ",seven"] + ls[3:])
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
