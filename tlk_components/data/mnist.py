# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""MNIST in its public IDX layout: reader, integrity check, demo writer and a fast in-memory loader.

Layout (the four files of http://yann.lecun.com/exdb/mnist/, plain or gzip-compressed ``.gz``)::

    dataset_dir/
        train-images-idx3-ubyte[.gz]   60000 x 28 x 28 uint8, 0 = background, 255 = ink
        train-labels-idx1-ubyte[.gz]   60000 uint8 labels 0..9
        t10k-images-idx3-ubyte[.gz]    10000 x 28 x 28
        t10k-labels-idx1-ubyte[.gz]    10000

IDX format: a 4-byte big-endian magic number ``0x0000TTDD`` (``TT`` the element type, ``0x08`` = uint8; ``DD``
the number of dimensions), then ``DD`` big-endian uint32 sizes, then the data in C order. Images have magic
``0x00000803``, labels ``0x00000801``.

The demo dataset (:func:`write_demo`) is scikit-learn's handwritten digits (1,797 real 8x8 scans with 17 grey
levels, shipped inside the package, no download), upsampled to a 20x20 box centred in 28x28 like MNIST, and
written as IDX files in the layout above, so the same network and configs run unchanged.

Loading is in memory: :class:`MNISTDataset` decodes a split once into tensors, and :class:`TensorBatchLoader`
slices batches out of tensors that already live on the training device (no per-sample Python ``Dataset`` /
``collate`` work, which dominates the cost of an epoch of a small MLP).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from tlk_components.data.datasets import DatasetReport
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import atomic_write_bytes
from tlk_components.utils.validation import check_in_range, check_positive_int, look_up_option

__all__ = [
    "IDX_FILES",
    "IMAGE_MAGIC",
    "LABEL_MAGIC",
    "InferenceImages",
    "MNISTDataset",
    "TensorBatchLoader",
    "find_idx",
    "load_split",
    "read_idx",
    "read_png",
    "verify_dataset",
    "write_demo",
    "write_idx",
]

#: split -> (images file, labels file), without the optional ``.gz``.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
NUM_CLASSES = 10

_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}  # fmt: skip
_CODES = {np.dtype(v).newbyteorder(">") if v.itemsize > 1 else v: k for k, v in _DTYPES.items()}
_FIX_FILES = (
    "put the four MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte, plain or .gz) in the folder, downloaded again if damaged, or write the demo digits "
    "with `python -m tlk_components prepare-demo mnist_mlp_classification DIR`"
)


# ----------------------------------------------------------------------------------------------------------- IDX
def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``; atomic.

    Args:
        path: output file.
        array: 1 to 255 dimensions of uint8, int8, int16, int32, float32 or float64.

    Returns:
        The path written.

    Raises:
        ValueError: unsupported dtype or no dimensions.
    """
    arr = np.asarray(array)
    dt = arr.dtype.newbyteorder(">") if arr.dtype.itemsize > 1 else arr.dtype
    if dt not in _CODES or not 1 <= arr.ndim <= 255:
        raise ValueError(f"write_idx: cannot store dtype {arr.dtype} with {arr.ndim} dimensions as IDX")
    header = bytes([0, 0, _CODES[dt], arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(arr, dtype=dt).tobytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)  # mtime=0: same bytes on every run
    return atomic_write_bytes(path, data)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found; {_FIX_FILES}") from None
    except OSError as e:
        if path.suffix != ".gz" or isinstance(e, IsADirectoryError | PermissionError):
            raise DatasetError(
                f"{path}: cannot be read ({type(e).__name__}: {e}); check the path and permissions"
            ) from None
        raise DatasetError(
            f"{path}: damaged gzip file ({type(e).__name__}: {e}); it is truncated or not gzip data. "
            "Download it again (or decompress it and keep the plain file)."
        ) from None
    except (EOFError, zlib.error) as e:
        raise DatasetError(
            f"{path}: damaged gzip file ({type(e).__name__}: {e}); it is truncated or not gzip data. "
            "Download it again (or decompress it and keep the plain file)."
        ) from None


def read_idx(path: str | os.PathLike, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (plain, or gzip when the name ends in ``.gz``) into a numpy array.

    Args:
        path: the file.
        magic: the expected magic number (``IMAGE_MAGIC`` = 0x803 for 3-D uint8 images, ``LABEL_MAGIC`` = 0x801
            for 1-D uint8 labels); None accepts any valid IDX header.

    Returns:
        The array, in native byte order, with the shape given by the header.

    Raises:
        DatasetError: missing file, damaged gzip, wrong magic number, or fewer/more data bytes than the header
            announces; the message names the file and the fix.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(
            f"{path}: truncated: {len(raw)} bytes, shorter than the 4-byte IDX magic number; {_FIX_FILES}"
        )
    found = int.from_bytes(raw[:4], "big")
    code, ndim = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or code not in _DTYPES or ndim == 0 or (magic is not None and found != magic):
        expected = f"0x{magic:08X}" if magic is not None else "0x0000TTDD (IDX)"
        raise DatasetError(
            f"{path}: wrong magic number 0x{found:08X}, expected {expected}; this is not an MNIST "
            f"{'image' if magic == IMAGE_MAGIC else 'label' if magic == LABEL_MAGIC else 'IDX'} file "
            "(an images file swapped with a labels file, or a file that is not IDX). "
            f"Fix: {_FIX_FILES}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated inside the header ({len(raw)} of {header} bytes); {_FIX_FILES}")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _DTYPES[code]
    expected_bytes = math.prod(shape) * dtype.itemsize
    got = len(raw) - header
    if got != expected_bytes:
        what = "truncated" if got < expected_bytes else "has trailing bytes"
        raise DatasetError(
            f"{path}: {what}: the header announces shape {shape} = {expected_bytes} data bytes, the file holds "
            f"{got}. Download the file again (an interrupted download leaves a short file)."
        )
    arr = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


#: Where common copies of MNIST keep the four files, relative to ``--dataset_dir``: the folder itself, and
#: torchvision's download folder (``MNIST/raw/``, or ``raw/`` when ``--dataset_dir`` is the ``MNIST`` folder).
IDX_SUBFOLDERS: tuple[str, ...] = ("", "MNIST/raw", "raw")


def idx_name_variants(name: str) -> tuple[str, ...]:
    """The names one IDX file has in common copies: ``train-images-idx3-ubyte``, the same with ``.gz``, and the
    dotted form of some re-distributions (``train-images.idx3-ubyte``), plain or ``.gz``."""
    dotted = name.replace("-idx", ".idx", 1)
    return (name, f"{name}.gz", dotted, f"{dotted}.gz")


def find_idx(dataset_dir: str | os.PathLike, name: str) -> Path | None:
    """The file of IDX ``name`` under ``dataset_dir``: the first of :func:`idx_name_variants` found in the folder
    itself, then in ``MNIST/raw/`` and ``raw/`` (:data:`IDX_SUBFOLDERS`); None when none exists."""
    d = Path(dataset_dir)
    for sub in IDX_SUBFOLDERS:
        for n in idx_name_variants(name):
            p = d / sub / n
            if p.is_file():
                return p
    return None


def _need(dataset_dir: str | os.PathLike, name: str) -> Path:
    p = find_idx(dataset_dir, name)
    if p is None:
        raise DatasetError(
            f"{Path(dataset_dir) / name}: file not found (nor {name}.gz, {idx_name_variants(name)[2]}, or any of them "
            f"in MNIST/raw/ or raw/); {_FIX_FILES}"
        )
    return p


def load_split(dataset_dir: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Read the images and labels of one split.

    Args:
        dataset_dir: folder in the MNIST layout.
        split: ``"train"`` or ``"test"`` (the ``t10k`` files).

    Returns:
        ``(images, labels)``: uint8 ``N x H x W`` and uint8 ``N``.

    Raises:
        ConfigError: unknown split.
        DatasetError: a file is missing or damaged, or images and labels differ in count.
    """
    split = look_up_option("split", split, list(IDX_FILES))
    img_name, lbl_name = IDX_FILES[split]
    img_path, lbl_path = _need(dataset_dir, img_name), _need(dataset_dir, lbl_name)
    images = read_idx(img_path, IMAGE_MAGIC)
    labels = read_idx(lbl_path, LABEL_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{img_path} holds {images.shape[0]} images but {lbl_path} holds {labels.shape[0]} labels; "
            "use an images file and a labels file from the same release (one label per image)"
        )
    return images, labels


# ----------------------------------------------------------------------------------------------- verification
def verify_dataset(dataset_dir: str | os.PathLike) -> DatasetReport:
    """Check all four MNIST files before any compute and report every problem, not only the first.

    Checks: each file present (plain or ``.gz``), readable, with the right magic number and exactly the number of
    bytes its header announces; images and labels of a split agree in count; labels lie in 0..9; both splits have
    the same image size.

    Args:
        dataset_dir: the folder to check.

    Returns:
        A :class:`~tlk_components.data.datasets.DatasetReport` (``n_cases`` = number of images found).
    """
    report = DatasetReport(str(dataset_dir), fix=_FIX_FILES)
    d = Path(dataset_dir)
    if not d.is_dir():
        report.add(str(d), "folder not found")
        return report
    sizes: dict[str, tuple[int, ...]] = {}
    for split, (img_name, lbl_name) in IDX_FILES.items():
        arrays: dict[str, np.ndarray] = {}
        for name, magic in ((img_name, IMAGE_MAGIC), (lbl_name, LABEL_MAGIC)):
            p = find_idx(d, name)
            if p is None:
                report.add(
                    name,
                    f"missing (neither {name} nor {name}.gz nor {idx_name_variants(name)[2]} in {d}, MNIST/raw/ or "
                    "raw/)",
                )
                continue
            try:
                arrays[name] = read_idx(p, magic)
            except DatasetError as e:
                report.add(p.name, str(e).replace(f"{p}: ", "", 1).split("; put the four")[0].split(" Fix:")[0])
        if img_name in arrays:
            report.n_cases += arrays[img_name].shape[0]
            sizes[split] = arrays[img_name].shape[1:]
        if img_name in arrays and lbl_name in arrays and arrays[img_name].shape[0] != arrays[lbl_name].shape[0]:
            report.add(
                f"{img_name} / {lbl_name}",
                f"{arrays[img_name].shape[0]} images but {arrays[lbl_name].shape[0]} labels; use files of one release",
            )
        if lbl_name in arrays and arrays[lbl_name].size and int(arrays[lbl_name].max()) >= NUM_CLASSES:
            bad = int((arrays[lbl_name] >= NUM_CLASSES).sum())
            report.add(lbl_name, f"{bad} label(s) outside 0..{NUM_CLASSES - 1} (max {int(arrays[lbl_name].max())})")
    if len(sizes) == 2 and sizes["train"] != sizes["test"]:
        report.add(
            "t10k-images-idx3-ubyte", f"image size {sizes['test']} differs from the training images' {sizes['train']}"
        )
    return report


# ---------------------------------------------------------------------------------------------------- demo data
def _prepare_digits(images8: np.ndarray) -> np.ndarray:
    """scikit-learn 8x8 digits (0..16) -> MNIST-like 28x28 uint8: scale to 0..255, bilinear to 20x20, pad 4."""
    from PIL import Image

    out = np.zeros((images8.shape[0], 28, 28), dtype=np.uint8)
    scaled = np.clip(np.rint(images8 * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    for i, im in enumerate(scaled):
        out[i, 4:24, 4:24] = np.asarray(Image.fromarray(im, mode="L").resize((20, 20), Image.BILINEAR))
    return out


def write_demo(out_dir: str | os.PathLike, size: str = "demo", seed: int = 0) -> Path:
    """Write scikit-learn's real handwritten digits as MNIST IDX files (``.gz``) into ``out_dir``.

    The 1,797 digits are split per class (stratified, ``seed``) into 80% ``train-*`` and 20% ``t10k-*`` files.
    Each 8x8 image (17 grey levels) is scaled to 0..255, upsampled bilinearly to 20x20 and centred in a 28x28
    frame, like MNIST's 20x20 box in 28x28.

    Args:
        out_dir: folder to write (created).
        size: ``"demo"`` (all 1,797 digits: 1,437 train, 360 test) or ``"tiny"`` (300 train, 100 test, for tests).
        seed: split seed; the same seed writes byte-identical files.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ConfigError: unknown ``size``.
    """
    from sklearn.datasets import load_digits

    size = look_up_option("size", size, ["demo", "tiny"])
    digits = load_digits()
    images = _prepare_digits(digits.images)
    labels = digits.target.astype(np.uint8)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(0.2 * idx.size))
        if size == "tiny":
            train_idx.append(idx[n_test : n_test + 30])
            test_idx.append(idx[:10])
        else:
            train_idx.append(idx[n_test:])
            test_idx.append(idx[:n_test])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, idx in (("train", train), ("test", test)):
        img_name, lbl_name = IDX_FILES[split]
        write_idx(out / f"{img_name}.gz", images[idx])
        write_idx(out / f"{lbl_name}.gz", labels[idx])
    return out


# ---------------------------------------------------------------------------------------------------- datasets
def _as_plain(x: Any) -> torch.Tensor:
    """MONAI transforms return MetaTensors; batches are sliced from plain tensors (much cheaper to index)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


class MNISTDataset(torch.utils.data.Dataset):
    """One split of an MNIST-layout folder, decoded once into tensors.

    Images become float32 ``N x 1 x H x W`` in [0, 1] (pixel / 255, as torchvision's ``ToTensor``), then
    ``transform`` is applied once to the whole stack (e.g. MONAI ``NormalizeIntensity`` with MNIST's mean and
    std). Labels become int64 ``N``.

    Args:
        dataset_dir: folder in the MNIST layout.
        split: ``"train"`` or ``"test"``.
        part: ``"all"``, ``"train"`` (the first ``1 - val_fraction`` of the split) or ``"val"`` (the last
            ``val_fraction``: a fixed hold-out, like the usual 55k/5k split of MNIST's training set).
        val_fraction: share held out for validation, in (0, 1); used when ``part`` is not ``"all"``. Default 0.1.
        transform: callable applied to the ``N x 1 x H x W`` tensor; default None.

    Raises:
        ConfigError: bad ``split``, ``part`` or ``val_fraction``.
        DatasetError: missing or damaged files.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        split: str = "train",
        part: str = "all",
        val_fraction: float = 0.1,
        transform: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        part = look_up_option("part", part, ["all", "train", "val"])
        images, labels = load_split(dataset_dir, split)
        if part != "all":
            check_in_range("val_fraction", val_fraction, 0.0, 1.0, low_inclusive=False)
            n_val = int(round(images.shape[0] * float(val_fraction)))
            if not 0 < n_val < images.shape[0]:
                raise ConfigError(
                    f"val_fraction={val_fraction}: holds out {n_val} of {images.shape[0]} images of {dataset_dir}; "
                    "both parts need at least one image, choose a value such as 0.1"
                )
            sl = slice(0, images.shape[0] - n_val) if part == "train" else slice(images.shape[0] - n_val, None)
            images, labels = images[sl], labels[sl]
        x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float().div_(255.0)
        self.images = _as_plain(transform(x) if transform is not None else x).contiguous()
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.dataset_dir, self.split, self.part = str(dataset_dir), split, part

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "label": self.labels[index]}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The whole split as ``{"image": N x 1 x H x W, "label": N}``."""
        return {"image": self.images, "label": self.labels}


def read_png(path: str | os.PathLike, image_size: Sequence[int] = (28, 28)) -> np.ndarray:
    """Read one PNG as a grayscale uint8 ``H x W`` array (colour is converted with PIL's ``"L"`` mode).

    Args:
        path: the image file.
        image_size: required ``(H, W)``; default (28, 28).

    Raises:
        DatasetError: the file is not a readable image, or has another size; names the file and the fix.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(
            f"{path}: not a readable image ({type(e).__name__}: {str(e)[:120]}); remove it from the input folder "
            "or save it again as a PNG (28x28 grayscale, white digit on black, as MNIST)"
        ) from None
    if tuple(arr.shape) != tuple(image_size):
        raise DatasetError(
            f"{path}: image is {arr.shape[0]}x{arr.shape[1]} pixels, the network expects "
            f"{image_size[0]}x{image_size[1]}; resize it (digit centred, white on black, as MNIST)"
        )
    return arr


class InferenceImages(torch.utils.data.Dataset):
    """The images to predict: every ``*.png`` of a folder, or the images of IDX file(s).

    ``input_dir`` may be (1) a folder of PNG files (sorted by name), (2) a folder holding ``*-images-idx3-ubyte``
    files (plain or ``.gz``; every image of each file is predicted), or (3) one IDX images file.
    Each image is named ``<file>.png`` or ``<idx file>#<index>`` in :attr:`names`.

    Args:
        input_dir: see above.
        image_size: ``(H, W)`` PNGs must have; default (28, 28).
        transform: applied once to the ``N x 1 x H x W`` float tensor in [0, 1] (as :class:`MNISTDataset`).

    Raises:
        DatasetError: the path does not exist, holds no PNG nor IDX images, or a file is unreadable.
    """

    def __init__(
        self,
        input_dir: str | os.PathLike,
        image_size: Sequence[int] = (28, 28),
        transform: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        p = Path(input_dir)
        names: list[str] = []
        arrays: list[np.ndarray] = []
        if p.is_file():
            idx_files = [p]
        elif p.is_dir():
            pngs = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() == ".png")
            idx_files = [] if pngs else sorted(f for f in p.iterdir() if "-images-idx3-ubyte" in f.name)
            for f in pngs:
                arrays.append(read_png(f, image_size)[None])
                names.append(f.name)
        else:
            raise DatasetError(f"input_dir {p}: not found; pass --input_dir with a folder of PNG images or an IDX file")
        for f in idx_files:
            imgs = read_idx(f, IMAGE_MAGIC)
            arrays.append(imgs)
            names += [f"{f.name}#{i}" for i in range(imgs.shape[0])]
        if not arrays:
            raise DatasetError(
                f"input_dir {p}: no *.png images and no *-images-idx3-ubyte[.gz] file found; "
                "pass --input_dir with a folder of 28x28 PNG digits or an MNIST IDX images file"
            )
        x = torch.from_numpy(np.concatenate(arrays)).unsqueeze(1).float().div_(255.0)
        self.images = _as_plain(transform(x) if transform is not None else x).contiguous()
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "name": self.names[index]}

    def tensors(self) -> dict[str, torch.Tensor]:
        """``{"image": N x 1 x H x W}``."""
        return {"image": self.images}


# ------------------------------------------------------------------------------------------------------ loader
class TensorBatchLoader:
    """Batches sliced from in-memory tensors, shuffled per epoch, optionally sharded across processes.

    A drop-in for ``torch.utils.data.DataLoader`` over :class:`MNISTDataset` without per-sample ``__getitem__``
    and ``collate`` calls: the tensors are moved to ``device`` once and each batch is one ``index_select``.
    Batches are dicts (``{"image": B x 1 x H x W, "label": B}``, plus ``"name"`` lists when the dataset has
    names), as MONAI's ``default_prepare_batch`` expects.

    Order: with ``shuffle`` the permutation of epoch ``e`` is drawn from ``torch.Generator`` seeded with
    ``seed + e``, so every model trained with the same ``seed`` sees the same order (the seed study) and a
    resumed run sees the order the uninterrupted run would have. Attach the loader to the trainer (put it in the
    handler list) so ``e`` follows the trainer's epoch; unattached, ``e`` counts the passes over the data.

    Sharding (``num_replicas > 1``, the ``DistributedSampler`` equivalent): the epoch's order is padded by
    wrapping around to a multiple of ``num_replicas`` when ``even_divisible`` (every rank then runs the same
    number of steps, as DDP needs), and rank ``r`` takes positions ``r, r + num_replicas, ...``. For validation
    use ``even_divisible=False``: no sample is repeated, so summed metrics are exact.

    Args:
        dataset: an object with ``tensors() -> dict[str, Tensor]`` (first dimension N) and optionally ``names``.
        batch_size: samples per batch, >= 1. Default 64.
        shuffle: new order every epoch. Default False.
        seed: base seed of the shuffle. Default 0.
        drop_last: drop the last incomplete batch. Default False.
        device: where the tensors live (default: where they are).
        num_replicas: number of processes sharing the data, >= 1. Default 1.
        rank: this process, in ``[0, num_replicas)``. Default 0.
        even_divisible: pad so every rank gets the same count (see above). Default True.

    Raises:
        ConfigError: ``batch_size`` < 1, bad ``num_replicas``/``rank``, or an empty dataset.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        device: str | torch.device | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        even_divisible: bool = True,
    ) -> None:
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_replicas = check_positive_int("num_replicas", num_replicas)
        if not isinstance(rank, int) or not 0 <= rank < self.num_replicas:
            raise ConfigError(f"rank={rank!r}: expected an integer in [0, {self.num_replicas}) (num_replicas)")
        if not hasattr(dataset, "tensors"):
            raise ConfigError(
                f"dataset={type(dataset).__name__}: TensorBatchLoader needs a dataset with tensors() "
                "(MNISTDataset or InferenceImages); use torch.utils.data.DataLoader for other datasets"
            )
        self.tensors = {k: (v.to(device) if device is not None else v) for k, v in dataset.tensors().items()}
        self.names: list[str] | None = getattr(dataset, "names", None)
        self.n = len(next(iter(self.tensors.values())))
        if self.n == 0:
            raise ConfigError(f"dataset {getattr(dataset, 'dataset_dir', '')}: no samples to load")
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.rank, self.even_divisible = rank, bool(even_divisible)
        self.epoch: int | None = None
        self._passes = 0

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch whose order the next pass uses (as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def attach(self, engine: Engine) -> None:
        """Follow ``engine.state.epoch`` (set at every ``EPOCH_STARTED``)."""
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.set_epoch(e.state.epoch))

    def _num_samples(self) -> int:
        if self.num_replicas == 1:
            return self.n
        if self.even_divisible:
            return math.ceil(self.n / self.num_replicas)
        return len(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _indices(self, epoch: int) -> torch.Tensor | None:
        """This rank's sample order for ``epoch``; None means ``0..n-1`` in order (batches are views)."""
        if not self.shuffle and self.num_replicas == 1:
            return None
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.num_replicas > 1:
            if self.even_divisible:
                total = math.ceil(self.n / self.num_replicas) * self.num_replicas
                order = torch.cat([order, order[: total - self.n]]) if total > self.n else order
            order = order[self.rank :: self.num_replicas]
        return order

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch if self.epoch is not None else self._passes
        self._passes += 1
        order = self._indices(epoch)
        n_batches = len(self)
        bs = self.batch_size
        if order is not None:
            order = order.to(next(iter(self.tensors.values())).device)
        for b in range(n_batches):
            if order is None:
                sl = slice(b * bs, (b + 1) * bs)
                batch: dict[str, Any] = {k: v[sl] for k, v in self.tensors.items()}
                if self.names is not None:
                    batch["name"] = self.names[sl]
            else:
                idx = order[b * bs : (b + 1) * bs]
                batch = {k: v.index_select(0, idx) for k, v in self.tensors.items()}
                if self.names is not None:
                    batch["name"] = [self.names[i] for i in idx.tolist()]
            yield batch
