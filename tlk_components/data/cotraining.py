# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Two-view image datasets for co-training: layout, reading, checking, aligned splits and the digits demo.

Layout (``dataset_dir``), either form, or both (the demo writes both)::

    samples.csv                     header ``view0,view1,label``; paths relative to the CSV; an empty label
                                    marks a sample whose class is unknown (it always goes to the unlabelled pool)
    classes.json                    class map ``{"<class name>": <index>, ...}``, indices 0..C-1
    view0/<class name>/<file>.png   one image-folder tree per view; the same relative file name in both trees
    view1/<class name>/<file>.png   is the same sample seen two ways

When ``samples.csv`` is present it is the sample list; otherwise the two trees are paired by relative path
(``view0/3/a.png`` with ``view1/3/a.png``) and the class map defaults to the sorted class-folder names.

Split (after the source notebook, document 003): sample order is shuffled once with ``seed``;
``floor(unlabelled_fraction * n)`` samples become the unlabelled pool (default 75 %), the rest is labelled; of the
labelled part ``floor(test_fraction * n_lab)`` go to test (20 %), then ``floor(val_fraction * rest)`` of the rest
to validation (0.125 of the remaining 80 % = 10 % of the labelled part) and the remainder to training (70 %).
With the notebook's 4,303 samples: 3,227 unlabelled, 754 train, 107 validation, 215 test. Every split is a list
of sample indices into one aligned sample table, so the two views can never drift apart.

Demo data (``write_demo``): scikit-learn's 8x8 handwritten digits (1,797 real scans, shipped with the package,
BSD-3 licence) split into two complementary views of each digit, as if seen by two sensors: view 0 is the left
half of the digit and view 1 the right half, each with its own independent Gaussian pixel noise (sd 3 on the
0..16 scale), upsampled x2 and written as an 8-bit PNG of 16x8 pixels. Each half alone identifies most digits; the
views share no pixel and no noise, so given the class their errors are close to independent and a model on one
view makes mistakes the other can correct: the condition co-training relies on (Blum & Mitchell, 1998).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import atomic_write_json, atomic_write_text
from tlk_components.utils.validation import check_in_range
from tlk_components.zoo.datasets import DatasetReport

__all__ = [
    "CSV_HEADER",
    "CLASS_MAP_NAME",
    "SAMPLES_NAME",
    "TwoViewSamples",
    "TwoViewSplits",
    "digit_views",
    "load_samples",
    "load_splits",
    "prepare_inference_input",
    "read_pairs_csv",
    "split_samples",
    "verify_dataset",
    "write_demo",
]

CSV_HEADER = ("view0", "view1", "label")
SAMPLES_NAME = "samples.csv"
CLASS_MAP_NAME = "classes.json"
VIEW_DIRS = ("view0", "view1")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
UNKNOWN = -1
_FIX = (
    f"write {SAMPLES_NAME} with the header 'view0,view1,label' (paths relative to it) and {CLASS_MAP_NAME} "
    '({"class": index}), or two folder trees view0/<class>/<file> and view1/<class>/<file> with matching names'
)


@dataclass
class TwoViewSamples:
    """An aligned table of samples: row ``i`` of ``view0``, ``view1`` and ``labels`` is the same sample.

    Attributes:
        view0: absolute image paths of view 0.
        view1: absolute image paths of view 1 (same length).
        labels: class index per sample, ``-1`` where the class is unknown (int64, shape ``N``).
        class_names: class name of each index.
    """

    view0: list[str]
    view1: list[str]
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.view0)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def paths(self, view: int) -> list[str]:
        """Image paths of ``view`` (0 or 1)."""
        return self.view0 if view == 0 else self.view1


@dataclass
class TwoViewSplits:
    """Samples plus index arrays ``train``, ``val``, ``test``, ``unlabelled`` into them (disjoint, sorted)."""

    samples: TwoViewSamples
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    unlabelled: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {k: int(len(getattr(self, k))) for k in ("train", "val", "test", "unlabelled")}


# ----------------------------------------------------------------------------------------------------- reading


def _read_class_map(path: Path, report: DatasetReport | None = None) -> dict[str, int] | None:
    try:
        cmap = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        msg = f'unreadable class map ({type(e).__name__}: {e}); expected JSON {{"class": index}}'
        if report is None:
            raise DatasetError(f"{path}: {msg}") from None
        report.add(path.name, msg)
        return None
    problems = []
    if not isinstance(cmap, dict) or not cmap:
        problems.append('expected a non-empty JSON object {"class": index}')
    else:
        values = list(cmap.values())
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            problems.append(f"class indices must be integers, got {values}")
        elif sorted(values) != list(range(len(values))):
            problems.append(f"class indices must be 0..{len(values) - 1} without gaps or repeats, got {sorted(values)}")
    if problems:
        if report is None:
            raise DatasetError(f"{path}: " + "; ".join(problems))
        for p in problems:
            report.add(path.name, p)
        return None
    return {str(k): int(v) for k, v in cmap.items()}


def read_pairs_csv(csv_path: str | os.PathLike, require_label: bool = False) -> tuple[list[str], list[str], list[str]]:
    """Read a ``view0,view1[,label]`` CSV into absolute view paths and raw label strings.

    Args:
        csv_path: the CSV; relative paths in it are resolved against its folder.
        require_label: when True the header must have the ``label`` column.

    Returns:
        ``(view0_paths, view1_paths, labels)``; ``labels`` holds ``""`` where the column is empty or absent.

    Raises:
        DatasetError: missing file, wrong header, or rows without two view paths (every bad row listed).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(
            f"{csv_path}: CSV of view pairs not found; expected a file with the header view0,view1,label"
        )
    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DatasetError(f"{csv_path}: empty file; expected the header view0,view1,label")
    header = [h.strip() for h in rows[0]]
    needed = list(CSV_HEADER) if require_label else list(CSV_HEADER[:2])
    if header[: len(needed)] != needed:
        raise DatasetError(f"{csv_path}: header {header}; expected {list(CSV_HEADER)} (label optional for inference)")
    has_label = len(header) >= 3 and header[2] == "label"
    base = csv_path.parent
    v0, v1, lab, problems = [], [], [], []
    for i, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        cells = [c.strip() for c in row]
        if len(cells) < 2 or not cells[0] or not cells[1]:
            problems.append(f"line {i}: {row}: both view0 and view1 paths are required (views of different lengths)")
            continue
        v0.append(str(base / cells[0]))
        v1.append(str(base / cells[1]))
        lab.append(cells[2] if has_label and len(cells) > 2 else "")
    if problems:
        raise DatasetError(f"{csv_path}: {len(problems)} bad row(s)", problems)
    return v0, v1, lab


def _tree_files(root: Path) -> dict[str, str]:
    """``class/file`` -> class for every image one level below the class folders of ``root``."""
    out = {}
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(cls.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                out[f"{cls.name}/{f.name}"] = cls.name
    return out


def _tree_pairs(dataset_dir: Path, report: DatasetReport) -> tuple[list[str], list[str], list[str]]:
    """Pair ``view0/<class>/<file>`` with ``view1/<class>/<file>``; mismatches go to ``report``."""
    t0, t1 = (_tree_files(dataset_dir / v) for v in VIEW_DIRS)
    by_name0 = {k.split("/", 1)[1]: k for k in t0}
    by_name1 = {k.split("/", 1)[1]: k for k in t1}
    if len(t0) != len(t1):
        report.add("view0/ vs view1/", f"{len(t0)} images in view0 but {len(t1)} in view1 (views of different lengths)")
    v0, v1, lab = [], [], []
    for key, cls in t0.items():
        if key in t1:
            v0.append(str(dataset_dir / "view0" / key))
            v1.append(str(dataset_dir / "view1" / key))
            lab.append(cls)
            continue
        name = key.split("/", 1)[1]
        if name in by_name1:
            report.add(f"view0/{key}", f"its view1 twin is view1/{by_name1[name]}: labels misaligned between views")
        else:
            report.add(f"view0/{key}", "no matching file in view1/ (same class folder and file name expected)")
    for key in t1:
        if key not in t0 and key.split("/", 1)[1] not in by_name0:
            report.add(f"view1/{key}", "no matching file in view0/ (same class folder and file name expected)")
    return v0, v1, lab


def _collect(dataset_dir: Path, report: DatasetReport, check_files: bool) -> TwoViewSamples | None:
    if not dataset_dir.is_dir():
        report.add(str(dataset_dir), "dataset folder not found")
        return None
    csv_path, cmap_path = dataset_dir / SAMPLES_NAME, dataset_dir / CLASS_MAP_NAME
    if csv_path.is_file():
        try:
            v0, v1, raw = read_pairs_csv(csv_path, require_label=True)
        except DatasetError as e:
            report.add(SAMPLES_NAME, str(e).splitlines()[0])
            for p in e.problems:
                report.add(SAMPLES_NAME, p)
            return None
    elif all((dataset_dir / v).is_dir() for v in VIEW_DIRS):
        v0, v1, raw = _tree_pairs(dataset_dir, report)
    else:
        report.add(str(dataset_dir), f"neither {SAMPLES_NAME} nor the folders view0/ and view1/ found")
        return None
    if cmap_path.is_file():
        cmap = _read_class_map(cmap_path, report)
        if cmap is None:
            return None
    elif csv_path.is_file():
        report.add(CLASS_MAP_NAME, f'class map missing; expected {{"class": index}} next to {SAMPLES_NAME}')
        return None
    else:
        cmap = {c: i for i, c in enumerate(sorted({c for c in raw}))}
    report.n_cases = len(v0)
    labels = np.full(len(v0), UNKNOWN, dtype=np.int64)
    for i, name in enumerate(raw):
        case = Path(v0[i]).name
        if name == "":
            continue
        if name not in cmap:
            report.add(case, f"label {name!r} is not in the class map {CLASS_MAP_NAME} (classes: {sorted(cmap)})")
        else:
            labels[i] = cmap[name]
    if check_files:
        for paths, view in ((v0, "view0"), (v1, "view1")):
            for p in paths:
                if not os.path.isfile(p):
                    report.add(os.path.relpath(p, dataset_dir), f"{view} image file missing")
    if not v0:
        report.add(str(dataset_dir), "no samples found")
    names = [n for n, _ in sorted(cmap.items(), key=lambda kv: kv[1])]
    return TwoViewSamples(view0=v0, view1=v1, labels=labels, class_names=names)


def load_samples(dataset_dir: str | os.PathLike) -> TwoViewSamples:
    """Read the aligned two-view sample table of ``dataset_dir`` (layout in the module docstring).

    Raises:
        DatasetError: listing every problem (missing files, unknown labels, unpaired or misaligned views).
    """
    dataset_dir = Path(dataset_dir)
    report = DatasetReport(str(dataset_dir), fix=_FIX)
    samples = _collect(dataset_dir, report, check_files=True)
    report.raise_if_bad()
    if samples is None:  # _collect returns None only together with a problem in the report
        raise RuntimeError(f"{dataset_dir}: no samples collected although the dataset check passed")
    return samples


def verify_dataset(dataset_dir: str | os.PathLike) -> DatasetReport:
    """Check a two-view dataset before any compute and list every bad case by name.

    Checks: the sample list (CSV rows with both views, or view trees whose files pair up by class and name; views of
    different lengths and labels that disagree between the views are named), the class map (indices 0..C-1), every
    label is in the class map, every image file exists and opens as an image.

    Returns:
        The report (``.ok``, ``.problems``, ``.raise_if_bad()``).
    """
    dataset_dir = Path(dataset_dir)
    report = DatasetReport(str(dataset_dir), fix=_FIX)
    samples = _collect(dataset_dir, report, check_files=True)
    if samples is None:
        return report
    from PIL import Image, UnidentifiedImageError

    for view in (0, 1):
        for p in samples.paths(view):
            if not os.path.isfile(p):
                continue  # reported as missing already
            try:
                with Image.open(p) as im:
                    im.verify()
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                report.add(os.path.relpath(p, dataset_dir), f"view{view} image unreadable ({type(e).__name__})")
    known = samples.labels[samples.labels >= 0]
    if len(samples) and known.size == 0:
        report.add(SAMPLES_NAME, "no sample has a label; co-training needs a labelled part")
    return report


def prepare_inference_input(input_dir: str | os.PathLike, demo_dir: str | os.PathLike | None = None) -> str:
    """Check an inference input folder: ``<input_dir>/samples.csv`` (``view0,view1[,label]``) and its images.

    When ``input_dir`` is the demo folder and holds nothing yet, the demo dataset is written there first. Unlike
    :func:`verify_dataset`, labels and the class map are optional.

    Returns:
        ``input_dir`` as a string.

    Raises:
        DatasetError: the CSV is missing or malformed, or image files are missing (every one listed).
    """
    d = Path(input_dir)
    if demo_dir is not None and d.resolve() == Path(demo_dir).resolve() and not (d.is_dir() and any(d.iterdir())):
        write_demo(d)
    v0, v1, _ = read_pairs_csv(d / SAMPLES_NAME)
    missing = [f"{os.path.relpath(p, d)}: image file missing" for p in v0 + v1 if not os.path.isfile(p)]
    if missing:
        raise DatasetError(f"{d / SAMPLES_NAME}: {len(missing)} image file(s) missing", missing)
    return str(d)


# ----------------------------------------------------------------------------------------------------- splits


def split_samples(
    labels: np.ndarray | Sequence[int],
    unlabelled_fraction: float = 0.75,
    test_fraction: float = 0.2,
    val_fraction: float = 0.125,
    seed: int = 13,
) -> dict[str, np.ndarray]:
    """Seeded split into ``train`` / ``val`` / ``test`` / ``unlabelled`` index arrays (module docstring: sizes).

    Samples whose label is unknown (``-1``) always join the unlabelled pool; the fractions apply to the others.

    Args:
        labels: class index per sample (``-1`` = unknown).
        unlabelled_fraction: share of the labelled samples moved to the unlabelled pool, in [0, 1); default 0.75.
        test_fraction: share of the remaining labelled samples held out for test, in [0, 1); default 0.2.
        val_fraction: share of what is left after test used for validation, in [0, 1); default 0.125.
        seed: shuffling seed (the notebook used 13).

    Returns:
        ``{"train", "val", "test", "unlabelled"}`` -> sorted int64 index arrays, disjoint, covering every sample.

    Raises:
        ConfigError: a fraction out of range, or no labelled sample left for training.
    """
    for name, v in (
        ("unlabelled_fraction", unlabelled_fraction),
        ("test_fraction", test_fraction),
        ("val_fraction", val_fraction),
    ):
        check_in_range(name, v, 0.0, 1.0)
        if v >= 1.0:
            raise ConfigError(f"{name}={v}: expected a number in [0, 1) so some samples remain for training")
    labels = np.asarray(labels, dtype=np.int64)
    known = np.flatnonzero(labels >= 0)
    unknown = np.flatnonzero(labels < 0)
    order = known[np.random.default_rng(seed).permutation(len(known))]
    n_unl = int(np.floor(unlabelled_fraction * len(order)))
    unl, lab = order[:n_unl], order[n_unl:]
    n_test = int(np.floor(test_fraction * len(lab)))
    test, rest = lab[:n_test], lab[n_test:]
    n_val = int(np.floor(val_fraction * len(rest)))
    val, train = rest[:n_val], rest[n_val:]
    if len(train) == 0:
        raise ConfigError(
            f"split of {len(known)} labelled samples leaves none for training (unlabelled_fraction="
            f"{unlabelled_fraction}, test_fraction={test_fraction}, val_fraction={val_fraction}); lower the fractions"
        )
    return {
        "train": np.sort(train),
        "val": np.sort(val),
        "test": np.sort(test),
        "unlabelled": np.sort(np.concatenate([unl, unknown])),
    }


def load_splits(
    dataset_dir: str | os.PathLike,
    unlabelled_fraction: float = 0.75,
    test_fraction: float = 0.2,
    val_fraction: float = 0.125,
    seed: int = 13,
) -> TwoViewSplits:
    """Read ``dataset_dir`` and split it with :func:`split_samples` (arguments as there)."""
    samples = load_samples(dataset_dir)
    idx = split_samples(samples.labels, unlabelled_fraction, test_fraction, val_fraction, seed)
    return TwoViewSplits(samples=samples, **idx)


# ----------------------------------------------------------------------------------------------------- demo


DEMO_NOISE = 3.0


def digit_views(
    image: np.ndarray, rng: np.random.Generator | None = None, noise: float = DEMO_NOISE
) -> tuple[np.ndarray, np.ndarray]:
    """Two complementary views of one 8x8 digit (values 0..16): left half and right half, each 16x8 uint8.

    Each half gets its own Gaussian pixel noise (standard deviation ``noise`` on the 0..16 scale, drawn from
    ``rng``), is clipped to [0, 16], scaled to [0, 255] and upsampled x2 by pixel repetition.

    Args:
        image: shape ``8, 8``, scikit-learn's digit intensities in [0, 16].
        rng: noise generator; None or ``noise=0`` gives noise-free halves.
        noise: noise standard deviation, >= 0 (default 3.0).

    Returns:
        ``(view0, view1)``, each of shape ``16, 8`` (rows, columns), in [0, 255].
    """
    img = np.asarray(image, dtype=np.float64)
    halves = [img[:, :4], img[:, 4:]]
    if rng is not None and noise > 0:
        halves = [h + rng.normal(0.0, noise, h.shape) for h in halves]
    out = []
    for h in halves:
        h8 = np.clip(h * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
        out.append(h8.repeat(2, axis=0).repeat(2, axis=1))
    return out[0], out[1]


def write_demo(
    out_dir: str | os.PathLike,
    size: str = "demo",
    seed: int = 0,
    views: Callable[..., tuple[np.ndarray, np.ndarray]] = digit_views,
) -> Path:
    """Write the two-view digits dataset (module docstring) into ``out_dir``: PNG trees, ``samples.csv``, class map.

    Args:
        out_dir: output folder (created).
        size: ``"demo"`` (all 1,797 digits) or ``"tiny"`` (12 per class, 120 digits, for tests).
        seed: seeds the view noise and which digits form the tiny set (the demo set is every digit); same seed,
            same files.
        views: ``(8x8 image, rng) -> (view0, view1)`` uint8 arrays; default :func:`digit_views`.

    Returns:
        ``out_dir``.
    """
    if size not in ("demo", "tiny"):
        raise ConfigError(f"size={size!r}: expected 'demo' or 'tiny'")
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, targets = digits.images, digits.target.astype(int)
    idx = np.arange(len(targets))
    rng = np.random.default_rng(seed)
    if size == "tiny":
        idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(targets == c), 12, replace=False) for c in range(10)]))
    out = Path(out_dir)
    rows = ["view0,view1,label"]
    for i in idx:
        cls = str(targets[i])
        name = f"digit_{i:05d}.png"
        for v, arr in zip(VIEW_DIRS, views(images[i], rng), strict=True):
            path = out / v / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
        rows.append(f"view0/{cls}/{name},view1/{cls}/{name},{cls}")
    atomic_write_json(out / CLASS_MAP_NAME, {str(c): c for c in range(10)})
    atomic_write_text(out / SAMPLES_NAME, "\n".join(rows) + "\n")
    return out
