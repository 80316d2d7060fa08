# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""MNIST IDX reader, integrity check, demo writer, in-memory loader and PNG reading, with every bad-input case."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tlk_components.data import mnist
from tlk_components.engines.trainers.classification import check_hyperparameters, check_network_input
from tlk_components.networks.mlp import MLP
from tlk_components.utils.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mnist.write_demo(tmp_path_factory.mktemp("mnist") / "tiny", size="tiny", seed=0)


def _copy(src: Path, dst: Path, gunzip: bool = True) -> Path:
    """A writable copy of the tiny dataset, with plain (uncompressed) IDX files by default."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if gunzip:
            (dst / f.name.removesuffix(".gz")).write_bytes(gzip.decompress(f.read_bytes()))
        else:
            shutil.copy(f, dst / f.name)
    return dst


# ------------------------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, 0, 9], dtype=np.uint8),
        np.array([[-5, 70000], [3, 4]], dtype=np.int32),
        np.array([0.5, -1.25], dtype=np.float32),
    ],
)
def test_idx_round_trip(tmp_path, array, suffix):
    path = mnist.write_idx(tmp_path / f"x-idx{suffix}", array)
    back = mnist.read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=") and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    back[...] = 0  # a writable array


def test_idx_header_is_the_mnist_layout(tmp_path):
    raw = mnist.write_idx(tmp_path / "i", np.zeros((3, 28, 28), np.uint8)).read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and int.from_bytes(raw[4:8], "big") == 3
    assert len(raw) == 16 + 3 * 28 * 28
    raw = mnist.write_idx(tmp_path / "l", np.zeros(3, np.uint8)).read_bytes()
    assert int.from_bytes(raw[:4], "big") == mnist.LABEL_MAGIC


def test_demo_is_deterministic_and_in_the_mnist_layout(tmp_path, tiny):
    again = mnist.write_demo(tmp_path / "again", size="tiny", seed=0)
    for f in tiny.iterdir():
        assert f.read_bytes() == (again / f.name).read_bytes(), f.name
    assert sorted(f.name for f in tiny.iterdir()) == sorted(
        f"{n}.gz" for pair in mnist.IDX_FILES.values() for n in pair
    )
    images, labels = mnist.load_split(tiny, "train")
    assert images.shape == (300, 28, 28) and images.dtype == np.uint8 and labels.shape == (300,)
    assert np.bincount(labels, minlength=10).tolist() == [30] * 10
    assert images.max() == 255 and (images[:, :4].max(), images[:, :, 24:].max()) == (0, 0)  # 20x20 box, 4-px frame
    test_images, _ = mnist.load_split(tiny, "test")
    assert test_images.shape == (100, 28, 28)
    # train and test are disjoint digits
    tr = {im.tobytes() for im in images}
    assert not any(im.tobytes() in tr for im in test_images)
    report = mnist.verify_dataset(tiny)
    assert report.ok and report.n_cases == 400


def test_plain_files_are_read_like_gz(tmp_path, tiny):
    plain = _copy(tiny, tmp_path / "plain")
    a, b = mnist.load_split(plain, "test"), mnist.load_split(tiny, "test")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_common_copies_of_mnist_are_read_as_they_are(tmp_path, tiny):
    """Issue 12: torchvision's download folder (``MNIST/raw/``) and the dotted names of some re-distributions
    (``train-images.idx3-ubyte``) are found without renaming anything."""
    expected = mnist.load_split(tiny, "train")
    tv = tmp_path / "torchvision_data"
    shutil.copytree(tiny, tv / "MNIST" / "raw")
    for root in (tv, tv / "MNIST"):  # --dataset_dir data/ or data/MNIST/
        assert mnist.verify_dataset(root).ok
        np.testing.assert_array_equal(mnist.load_split(root, "train")[0], expected[0])
    dotted = tmp_path / "dotted"
    dotted.mkdir()
    for f in tiny.iterdir():
        if "-idx" in f.name:
            shutil.copy(f, dotted / f.name.replace("-idx", ".idx", 1))
    assert mnist.find_idx(dotted, "train-images-idx3-ubyte").name.startswith("train-images.idx3-ubyte")
    assert mnist.verify_dataset(dotted).ok
    np.testing.assert_array_equal(mnist.load_split(dotted, "train")[1], expected[1])


# ---------------------------------------------------------------------------------------------- bad IDX input
def test_ill_missing_files_are_all_listed(tmp_path, tiny):
    d = _copy(tiny, tmp_path / "d")
    (d / "train-labels-idx1-ubyte").unlink()
    (d / "t10k-images-idx3-ubyte").unlink()
    report = mnist.verify_dataset(d)
    assert len(report.problems) == 2
    assert report.problems[0].startswith("train-labels-idx1-ubyte: missing")
    assert report.problems[1].startswith("t10k-images-idx3-ubyte: missing")
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.*prepare-demo"):
        report.raise_if_bad()
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte: file not found"):
        mnist.load_split(d, "train")


def test_ill_truncated_idx(tmp_path, tiny):
    d = _copy(tiny, tmp_path / "d")
    f = d / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(
        DatasetError, match=r"train-images-idx3-ubyte: truncated: .* \(300, 28, 28\) = 235200 .* 235100"
    ):
        mnist.read_idx(f, mnist.IMAGE_MAGIC)
    f.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte: truncated: 2 bytes"):
        mnist.read_idx(f)
    report = mnist.verify_dataset(d)
    assert [p.split(":")[0] for p in report.problems] == ["train-images-idx3-ubyte"]


def test_ill_truncated_gzip(tmp_path, tiny):
    d = _copy(tiny, tmp_path / "d", gunzip=False)
    f = d / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-20])
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.gz: damaged gzip file.*Download it again"):
        mnist.read_idx(f)
    assert mnist.verify_dataset(d).problems[0].startswith("t10k-labels-idx1-ubyte.gz: damaged gzip")


def test_ill_count_mismatch(tmp_path, tiny):
    d = _copy(tiny, tmp_path / "d")
    labels = mnist.read_idx(d / "train-labels-idx1-ubyte")
    mnist.write_idx(d / "train-labels-idx1-ubyte", labels[:-1])
    with pytest.raises(
        DatasetError,
        match=r"train-images-idx3-ubyte holds 300 images but .*train-labels-idx1-ubyte "
        r"holds 299 labels; use an images file and a labels file",
    ):
        mnist.load_split(d, "train")
    problems = mnist.verify_dataset(d).problems
    assert problems == [
        "train-images-idx3-ubyte / train-labels-idx1-ubyte: 300 images but 299 labels; use files of one release"
    ]


def test_ill_wrong_magic(tmp_path, tiny):
    d = _copy(tiny, tmp_path / "d")
    # images and labels swapped: each has the other's magic number
    img, lbl = d / "t10k-images-idx3-ubyte", d / "t10k-labels-idx1-ubyte"
    a, b = img.read_bytes(), lbl.read_bytes()
    img.write_bytes(b)
    lbl.write_bytes(a)
    with pytest.raises(
        DatasetError,
        match=r"t10k-images-idx3-ubyte: wrong magic number 0x00000801, expected "
        r"0x00000803; this is not an MNIST image file",
    ):
        mnist.load_split(d, "test")
    assert len(mnist.verify_dataset(d).problems) == 2
    img.write_bytes(b"PNG not idx at all")
    with pytest.raises(DatasetError, match="wrong magic number 0x504E4720"):
        mnist.read_idx(img)


def test_ill_label_out_of_range(tmp_path, tiny):
    d = _copy(tiny, tmp_path / "d")
    labels = mnist.read_idx(d / "t10k-labels-idx1-ubyte")
    labels[:3] = 12
    mnist.write_idx(d / "t10k-labels-idx1-ubyte", labels)
    assert mnist.verify_dataset(d).problems == ["t10k-labels-idx1-ubyte: 3 label(s) outside 0..9 (max 12)"]


# ------------------------------------------------------------------------------------------ dataset + loader
def test_dataset_parts_are_a_disjoint_cover(tiny):
    full = mnist.MNISTDataset(tiny, "train")
    tr = mnist.MNISTDataset(tiny, "train", part="train", val_fraction=0.1)
    va = mnist.MNISTDataset(tiny, "train", part="val", val_fraction=0.1)
    assert (len(tr), len(va)) == (270, 30)
    assert torch.equal(torch.cat([tr.images, va.images]), full.images)
    assert full.images.shape == (300, 1, 28, 28) and full.images.dtype == torch.float32
    assert 0.0 <= full.images.min() and full.images.max() == 1.0
    assert full.labels.dtype == torch.int64
    item = full[5]
    assert torch.equal(item["image"], full.images[5]) and int(item["label"]) == int(full.labels[5])


def test_dataset_transform_applied_once(tiny):
    ds = mnist.MNISTDataset(tiny, "test", transform=lambda x: x * 2 - 1)
    raw = mnist.MNISTDataset(tiny, "test")
    assert torch.allclose(ds.images, raw.images * 2 - 1) and type(ds.images) is torch.Tensor


def test_ill_dataset_options(tiny):
    with pytest.raises(ConfigError, match="split='valid'"):
        mnist.MNISTDataset(tiny, "valid")
    with pytest.raises(ConfigError, match="val_fraction=1.5"):
        mnist.MNISTDataset(tiny, "train", part="val", val_fraction=1.5)
    with pytest.raises(ConfigError, match="val_fraction=0.001: holds out 0 of 300"):
        mnist.MNISTDataset(tiny, "train", part="val", val_fraction=0.001)


def test_loader_epoch_covers_every_sample_once(tiny):
    ds = mnist.MNISTDataset(tiny, "test")
    for shuffle in (False, True):
        loader = mnist.TensorBatchLoader(ds, batch_size=32, shuffle=shuffle, seed=3)
        batches = list(loader)
        assert len(batches) == len(loader) == 4 and [len(b["label"]) for b in batches] == [32, 32, 32, 4]
        images = torch.cat([b["image"] for b in batches])
        order = [int(torch.nonzero((ds.images == im).all(dim=(1, 2, 3)))[0]) for im in images]
        assert sorted(order) == list(range(100))
        assert (order == list(range(100))) != shuffle
    assert len(mnist.TensorBatchLoader(ds, batch_size=32, drop_last=True)) == 3


def test_loader_order_depends_on_seed_and_epoch_only(tiny):
    ds = mnist.MNISTDataset(tiny, "test")

    def labels(seed, epoch):
        loader = mnist.TensorBatchLoader(ds, batch_size=100, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return next(iter(loader))["label"]

    assert torch.equal(labels(0, 1), labels(0, 1))
    assert not torch.equal(labels(0, 1), labels(0, 2)) and not torch.equal(labels(0, 1), labels(1, 1))
    # unattached, the epoch counts the passes
    loader = mnist.TensorBatchLoader(ds, batch_size=100, shuffle=True, seed=0)
    first, second = next(iter(loader))["label"], next(iter(loader))["label"]
    assert torch.equal(first, labels(0, 0)) and torch.equal(second, labels(0, 1))


@pytest.mark.parametrize("even", [True, False])
def test_loader_shards_like_distributed_sampler(tiny, even):
    ds = mnist.MNISTDataset(tiny, "test")
    ds.images, ds.labels = ds.images[:99], torch.arange(99)  # 99 samples: not divisible by 2
    shards = [
        torch.cat(
            [b["label"] for b in mnist.TensorBatchLoader(ds, 16, True, 0, num_replicas=2, rank=r, even_divisible=even)]
        )
        for r in range(2)
    ]
    if even:
        assert len(shards[0]) == len(shards[1]) == 50
        assert set(torch.cat(shards).tolist()) == set(range(99))
    else:
        assert (len(shards[0]), len(shards[1])) == (50, 49)
        assert sorted(torch.cat(shards).tolist()) == list(range(99))


def test_ill_loader_options(tiny):
    ds = mnist.MNISTDataset(tiny, "test")
    with pytest.raises(ConfigError, match=r"batch_size=0: expected an integer >= 1; set e.g. --batch_size 1"):
        mnist.TensorBatchLoader(ds, batch_size=0)
    with pytest.raises(ConfigError, match=r"rank=2: expected an integer in \[0, 2\)"):
        mnist.TensorBatchLoader(ds, num_replicas=2, rank=2)
    with pytest.raises(ConfigError, match="needs a dataset with tensors"):
        mnist.TensorBatchLoader([1, 2, 3])


# ------------------------------------------------------------------------------------- hyperparameters, network
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": -1}, r"epochs=-1: expected an integer >= 1; set e.g. --epochs 1"),
        ({"epochs": 0}, r"epochs=0"),
        ({"epochs": 2.5}, r"epochs=2.5"),
        ({"batch_size": 0}, r"batch_size=0: expected an integer >= 1; set e.g. --batch_size 1"),
        ({"val_interval": 0}, r"val_interval=0"),
        ({"learning_rate": 0.0}, r"learning_rate=0.0: expected a number in \(0.0, inf\]"),
        ({"learning_rate": float("inf")}, r"learning_rate=inf: expected a finite number"),
        ({"val_fraction": 1.0}, r"val_fraction=1.0"),
    ],
)
def test_ill_hyperparameters(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        check_hyperparameters(**kwargs)


def test_valid_hyperparameters_pass():
    assert check_hyperparameters(epochs=1, batch_size=32, learning_rate=3e-3, val_fraction=0.1, seed=-7)


def test_ill_network_input_size_does_not_match_the_data(tiny):
    ds = mnist.MNISTDataset(tiny, "test")
    check_network_input(MLP(), ds)  # 784 inputs for 28x28: fine
    with pytest.raises(
        ConfigError,
        match=r"network_def: the network does not accept the data: one image is "
        r"\(1, 28, 28\) = 784 values.*--network_def#dims \"\[784, 32, 32, 32, 10\]\"",
    ):
        check_network_input(MLP(dims=[100, 32, 10]), ds)
    with pytest.raises(ConfigError, match="the network has 5 outputs but the labels need 10 classes"):
        check_network_input(MLP(dims=[784, 32, 5]), ds)


# -------------------------------------------------------------------------------------------------------- PNG
def _png(path: Path, array: np.ndarray, mode: str = "L") -> Path:
    from PIL import Image

    Image.fromarray(array, mode=mode).save(path)
    return path


def test_png_folder_and_idx_file_inference_inputs(tmp_path, tiny):
    images, _ = mnist.load_split(tiny, "test")
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in (3, 1, 2):
        _png(folder / f"digit_{i}.png", images[i])
    _png(folder / "digit_9.png", np.stack([images[9]] * 3, axis=-1), mode="RGB")  # colour is converted to gray
    (folder / "notes.txt").write_text("ignored")
    inp = mnist.InferenceImages(folder)
    assert inp.names == ["digit_1.png", "digit_2.png", "digit_3.png", "digit_9.png"]
    np.testing.assert_array_equal((inp.images[:, 0] * 255).round().byte().numpy(), images[[1, 2, 3, 9]])
    idx = mnist.InferenceImages(tiny / "t10k-images-idx3-ubyte.gz")
    assert len(idx) == 100 and idx.names[7] == "t10k-images-idx3-ubyte.gz#7"
    both = mnist.InferenceImages(tiny)  # a folder of IDX files: every images file
    assert len(both) == 400


def test_ill_png_that_is_not_an_image(tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    _png(folder / "a.png", np.zeros((28, 28), np.uint8))
    (folder / "b.png").write_bytes(b"this is not an image")
    with pytest.raises(DatasetError, match=r"b.png: not a readable image .*remove it from the input folder"):
        mnist.InferenceImages(folder)
    with pytest.raises(DatasetError, match=r"b.png: not a readable image"):
        mnist.read_png(folder / "b.png")


def test_ill_png_of_another_size(tmp_path):
    p = _png(tmp_path / "big.png", np.zeros((32, 30), np.uint8))
    with pytest.raises(DatasetError, match=r"big.png: image is 32x30 pixels, the network expects 28x28; resize"):
        mnist.read_png(p)


def test_ill_inference_input_missing_or_empty(tmp_path):
    with pytest.raises(DatasetError, match="input_dir .*nowhere: not found; pass --input_dir"):
        mnist.InferenceImages(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"no \*.png images and no \*-images-idx3-ubyte"):
        mnist.InferenceImages(tmp_path)
