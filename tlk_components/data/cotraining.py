# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Two-view image datasets for co-training: layout, reading, checking, aligned splits and the digits demo.

Layout (``dataset_dir``), either form, or both (the demo writes both)::

    samples.csv                     header ``view0,view1,label`` (+ optional ``split`` and ``hidden_label``
                                    columns); paths relative to the CSV; an empty label marks an unlabelled sample:
                                    the unlabelled pool is exactly these rows
    classes.json                    class map ``{"<class name>": <index>, ...}``, indices 0..C-1
    val.txt, test.txt               optional: one sample per line, named by its view-0 path as in samples.csv
                                    (relative to ``dataset_dir``): fixes the validation / test split
    view0/<class name>/<file>.png   one image-folder tree per view; the same relative file name in both trees
    view1/<class name>/<file>.png   is the same sample seen two ways

When ``samples.csv`` is present it is the sample list; otherwise the two trees are paired by relative path
(``view0/3/a.png`` with ``view1/3/a.png``) and the class map defaults to the sorted class-folder names.

Split: the user's labels are used as given. Rows with an empty ``label`` form the unlabelled pool; the labelled
rows are split into train / validation / test. A ``split`` column (``train``, ``val``, ``test``; empty = draw) or
the list files ``val.txt`` / ``test.txt`` fix rows to a split; a split with fixed rows gets exactly those. The
rest is drawn as in the source notebook (document 003): the free labelled rows are shuffled once with ``seed``,
``floor(test_fraction * n)`` go to test (20 %), then ``floor(val_fraction * rest)`` to validation (0.125 of the
remaining 80 % = 10 %) and the remainder to training (70 %). ``unlabelled_fraction`` (default 0) additionally hides
that share of the free labelled rows in the pool before the split: for benchmarks that simulate unlabelled data
(``benchmarks/bench_cotraining.py`` uses 0.75, the notebook's setting), never needed for real data. Every split is
a list of sample indices into one aligned sample table, so the two views can never drift apart.

``hidden_label`` (optional, for simulations such as the demo): the true class of an unlabelled row. It is never
used for training by co-training or the labelled-only baseline; it scores the pseudo-labels and lets the fully
supervised comparison (``mode="all_labels"``) train on the pool with its true labels.

Demo data (``write_demo``): scikit-learn's 8x8 handwritten digits (1,797 real scans, shipped with the package,
BSD-3 licence) split into two complementary views of each digit, as if seen by two sensors: view 0 is the left
half of the digit and view 1 the right half, each with its own independent Gaussian pixel noise (sd 3 on the
0..16 scale), upsampled x2 and written as an 8-bit PNG of 16x8 pixels. Each half alone identifies most digits; the
views share no pixel and no noise, so given the class their errors are close to independent and a model on one
view makes mistakes the other can correct: the condition co-training relies on (Blum & Mitchell, 1998). Like a
real semi-supervised dataset, 75 % of the demo's rows (seeded, :data:`DEMO_HIDDEN_FRACTION`) have an empty
``label``; their true class is kept in ``hidden_label`` only to score the pseudo-labels and for the fully
supervised comparison.

Checks before any compute (:func:`verify_dataset`): besides the layout, duplicate rows (the same view pair twice,
or two rows whose two image files have identical content) are errors, listing the rows and flagging conflicting
labels (a duplicate would put one sample into several splits); fewer than two labelled classes is an error; every
image's channel count and size are compared with ``in_channels`` / ``image_size`` (different sizes without
``image_size`` list the odd files and the override to use).

Intensity (:class:`ScaleIntensityByType`): integer images are divided by the largest value of their bit depth
(8-bit by 255, 16-bit by 65,535, 1-bit by 1); floating-point and 32-bit integer images have no fixed range and are
min-max scaled per image. Every image therefore lands in [0, 1].
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Transform

from tlk_components.data.datasets import DatasetReport
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import atomic_write_json, atomic_write_text
from tlk_components.utils.validation import check_in_range

__all__ = [
    "CSV_HEADER",
    "CLASS_MAP_NAME",
    "SAMPLES_NAME",
    "ScaleIntensityByType",
    "TwoViewSamples",
    "TwoViewSplits",
    "digit_views",
    "load_samples",
    "load_splits",
    "prepare_inference_input",
    "prepare_training_data",
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
SPLITS = ("train", "val", "test")
LIST_FILES = {"val": "val.txt", "test": "test.txt"}
DEMO_HIDDEN_FRACTION = 0.75
logger = logging.getLogger(__name__)
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
        labels: class index per sample, ``-1`` where the class is unknown (int64, shape ``N``); for an unlabelled
            row with a ``hidden_label`` this is the hidden class (used only to score pseudo-labels and for the fully
            supervised comparison).
        class_names: class name of each index.
        labelled: True where the user gave a label (the row can train); default ``labels >= 0``.
        split: fixed split per sample (``"train"``, ``"val"``, ``"test"``, or ``""`` = drawn); default all ``""``.
        rows: where each sample comes from, for messages (``"samples.csv line 5"``); default the view-0 file name.
    """

    view0: list[str]
    view1: list[str]
    labels: np.ndarray
    class_names: list[str]
    labelled: np.ndarray | None = None
    split: list[str] | None = None
    rows: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labelled is None:
            self.labelled = self.labels >= 0
        self.labelled = np.asarray(self.labelled, dtype=bool)
        if self.split is None:
            self.split = [""] * len(self.view0)
        if self.rows is None:
            self.rows = [Path(p).name for p in self.view0]

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
    v0, v1, lab, _, _ = _read_csv(Path(csv_path), require_label)
    return v0, v1, lab


def _read_csv(
    csv_path: Path, require_label: bool
) -> tuple[list[str], list[str], list[str], dict[str, list[str]], list[int]]:
    """:func:`read_pairs_csv` plus the optional ``split`` / ``hidden_label`` columns and each row's line number."""
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
    extra_cols = {name: header.index(name) for name in ("split", "hidden_label") if name in header}
    base = csv_path.parent
    v0, v1, lab, problems, lines = [], [], [], [], []
    extra: dict[str, list[str]] = {name: [] for name in extra_cols}
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
        lines.append(i)
        for name, col in extra_cols.items():
            extra[name].append(cells[col] if len(cells) > col else "")
    if problems:
        raise DatasetError(f"{csv_path}: {len(problems)} bad row(s)", problems)
    return v0, v1, lab, extra, lines


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


def _read_list_file(path: Path, dataset_dir: Path, index: dict[str, int], report: DatasetReport) -> list[int]:
    """Sample ids named in a ``val.txt`` / ``test.txt`` (view-0 paths relative to ``dataset_dir``), problems to
    ``report``."""
    ids = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        key = os.path.normpath(str(dataset_dir / name))
        if key not in index:
            report.add(
                f"{path.name} line {n}",
                f"{name!r} is not a sample of the dataset; name each sample by its view-0 path as in {SAMPLES_NAME} "
                "(relative to the dataset folder, e.g. view0/3/a.png)",
            )
            continue
        ids.append(index[key])
    return ids


def _check_duplicates(v0: list[str], v1: list[str], raw: list[str], rows: list[str], report: DatasetReport) -> None:
    """The same view pair listed twice: an error (a duplicate puts one sample into several splits)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (a, b) in enumerate(zip(v0, v1, strict=True)):
        groups.setdefault((os.path.realpath(a), os.path.realpath(b)), []).append(i)
    for ids in groups.values():
        if len(ids) > 1:
            _report_duplicate(ids, raw, rows, report, "the same view pair")


def _report_duplicate(ids: list[int], raw: list[str], rows: list[str], report: DatasetReport, what: str) -> None:
    where = ", ".join(rows[i] for i in ids)
    labels = sorted({raw[i] for i in ids} - {""})
    if len(labels) > 1:
        report.add(
            where,
            f"{what} with conflicting labels {labels}; one sample cannot have two classes: keep one row with the "
            "right label",
        )
    else:
        report.add(
            where,
            f"{what} listed {len(ids)} times (label {labels[0] if labels else 'empty'!r}); a duplicate can land in "
            "training and test (or the unlabelled pool) at once: keep one row",
        )


def _collect(dataset_dir: Path, report: DatasetReport, check_files: bool) -> TwoViewSamples | None:
    if not dataset_dir.is_dir():
        report.add(str(dataset_dir), "dataset folder not found")
        return None
    csv_path, cmap_path = dataset_dir / SAMPLES_NAME, dataset_dir / CLASS_MAP_NAME
    extra: dict[str, list[str]] = {}
    if csv_path.is_file():
        try:
            v0, v1, raw, extra, lines = _read_csv(csv_path, require_label=True)
        except DatasetError as e:
            report.add(SAMPLES_NAME, str(e).splitlines()[0])
            for p in e.problems:
                report.add(SAMPLES_NAME, p)
            return None
        rows = [f"{SAMPLES_NAME} line {n}" for n in lines]
    elif all((dataset_dir / v).is_dir() for v in VIEW_DIRS):
        v0, v1, raw = _tree_pairs(dataset_dir, report)
        rows = [os.path.relpath(p, dataset_dir) for p in v0]
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
    labelled = np.zeros(len(v0), dtype=bool)
    hidden = extra.get("hidden_label", [""] * len(v0))
    for i, name in enumerate(raw):
        given = name != ""
        if not given:
            name = hidden[i]
        if name == "":
            continue
        if name not in cmap:
            column = "label" if given else "hidden_label"
            report.add(rows[i], f"{column} {name!r} is not in the class map {CLASS_MAP_NAME} (classes: {sorted(cmap)})")
        else:
            labels[i], labelled[i] = cmap[name], given
    split = [""] * len(v0)
    for i, value in enumerate(extra.get("split", [])):
        value = value.lower()
        if value not in ("", *SPLITS):
            report.add(rows[i], f"split {value!r}: expected one of {list(SPLITS)} or empty (drawn at random)")
            continue
        split[i] = value
    index = {os.path.normpath(p): i for i, p in enumerate(v0)}
    for name, fname in LIST_FILES.items():
        path = dataset_dir / fname
        if not path.is_file():
            continue
        for i in _read_list_file(path, dataset_dir, index, report):
            if split[i] and split[i] != name:
                report.add(rows[i], f"listed in {fname} but its split is already {split[i]!r}; keep one")
            split[i] = name
    for i, sp in enumerate(split):
        if sp in ("val", "test") and not labelled[i]:
            report.add(rows[i], f"fixed to the {sp} split but has no label; val and test samples need a label")
    _check_duplicates(v0, v1, raw, rows, report)
    if check_files:
        for paths, view in ((v0, "view0"), (v1, "view1")):
            for p in paths:
                if not os.path.isfile(p):
                    report.add(os.path.relpath(p, dataset_dir), f"{view} image file missing")
    if not v0:
        report.add(str(dataset_dir), "no samples found")
    names = [n for n, _ in sorted(cmap.items(), key=lambda kv: kv[1])]
    return TwoViewSamples(
        view0=v0, view1=v1, labels=labels, class_names=names, labelled=labelled, split=split, rows=rows
    )


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


def _check_image_size_setting(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if (
        isinstance(image_size, str)
        or not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        raise ConfigError(
            f"image_size={image_size!r}: expected null (keep the images' size) or [height, width] in pixels, e.g. "
            '--image_size "[64, 64]"'
        )
    return int(image_size[0]), int(image_size[1])


def _inspect_images(
    paths: Sequence[Sequence[str]],
    root: Path,
    report: DatasetReport,
    in_channels: int | None,
    image_size: Any,
    content_hashes: bool = False,
) -> list[tuple[str, str]] | None:
    """Open every image of both views: readable, channels, size; problems to ``report``.

    Args:
        paths: image paths of view 0 and of view 1 (aligned).
        root: folder the messages name files relative to.
        report: where problems go.
        in_channels: the config's channels per view (None: only check that the data is consistent).
        image_size: the config's ``image_size`` (None: every image must have the same size).
        content_hashes: also return the SHA-1 of both files of every sample (duplicate content check).

    Returns:
        The ``(hash0, hash1)`` per sample when ``content_hashes`` (None where a file is missing).
    """
    from PIL import Image, UnidentifiedImageError

    size_setting = _check_image_size_setting(image_size)
    info: list[list[tuple[str, int, tuple[int, int]] | None]] = [[], []]
    hashes: list[list[str | None]] = [[], []]
    for view in (0, 1):
        for p in paths[view]:
            rel = os.path.relpath(p, root)
            entry, digest = None, None
            if os.path.isfile(p):  # a missing file is reported by the layout check
                try:
                    with Image.open(p) as im:
                        mode, size, bands = im.mode, im.size, len(im.getbands())
                        im.verify()
                    entry = (mode, bands, (int(size[1]), int(size[0])))
                    if content_hashes:
                        digest = hashlib.sha1(Path(p).read_bytes()).hexdigest()
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                    report.add(rel, f"view{view} image unreadable ({type(e).__name__})")
                else:
                    if mode == "P":
                        report.add(
                            rel,
                            f"view{view} image is a palette image (PIL mode P): it would be read as palette indices; "
                            "save it as grayscale (L) or RGB",
                        )
            info[view].append(entry)
            hashes[view].append(digest)
    channels = [[e[1] for e in info[v] if e is not None] for v in (0, 1)]
    common_ch = []
    for view in (0, 1):
        counts: dict[int, int] = {}
        for c in channels[view]:
            counts[c] = counts.get(c, 0) + 1
        if not counts:
            common_ch.append(None)
            continue
        common = max(counts, key=lambda c: (counts[c], -c))
        common_ch.append(common)
        odd = [(p, e) for p, e in zip(paths[view], info[view], strict=True) if e is not None and e[1] != common]
        if in_channels is not None and common != in_channels:
            first = next(p for p, e in zip(paths[view], info[view], strict=True) if e is not None and e[1] == common)
            report.add(
                f"view{view}/",
                f"{counts[common]} view{view} images have {common} channel(s) (e.g. {os.path.relpath(first, root)}) "
                f"but in_channels is {in_channels}: pass --in_channels {common} (the network's input channels per "
                "view)",
            )
        for p, e in odd:
            report.add(
                os.path.relpath(p, root),
                f"view{view} image has {e[1]} channel(s) (PIL mode {e[0]}) but most view{view} images have {common}; "
                "convert it so that every image of a view has the same channels",
            )
    if in_channels is None and None not in common_ch and common_ch[0] != common_ch[1]:
        report.add(
            "view0/ vs view1/",
            f"view0 images have {common_ch[0]} channel(s), view1 images {common_ch[1]}; the bundle's in_channels is "
            "one number for both views: convert one view (e.g. RGB to grayscale) so both have the same channels",
        )
    if size_setting is None:
        sizes: dict[tuple[int, int], int] = {}
        for view in (0, 1):
            for e in info[view]:
                if e is not None:
                    sizes[e[2]] = sizes.get(e[2], 0) + 1
        if len(sizes) > 1:
            common = max(sizes, key=lambda k: sizes[k])
            for view in (0, 1):
                for p, e in zip(paths[view], info[view], strict=True):
                    if e is not None and e[2] != common:
                        report.add(
                            os.path.relpath(p, root),
                            f"view{view} image is {e[2][0]}x{e[2][1]} (height x width) but most images are "
                            f"{common[0]}x{common[1]}; both views are stacked as channels, so every image needs the "
                            f'same size: pass --image_size "[{common[0]}, {common[1]}]" to resize every image',
                        )
    if not content_hashes:
        return None
    return [(a, b) if a and b else None for a, b in zip(hashes[0], hashes[1], strict=True)]


def verify_dataset(
    dataset_dir: str | os.PathLike, in_channels: int | None = None, image_size: Sequence[int] | None = None
) -> DatasetReport:
    """Check a two-view dataset before any compute and list every bad case by name.

    Checks: the sample list (CSV rows with both views, or view trees whose files pair up by class and name; views of
    different lengths and labels that disagree between the views are named), the class map (indices 0..C-1), every
    label is in the class map, the ``split`` column and ``val.txt`` / ``test.txt``, duplicate rows (the same view
    pair, or both image files with identical content: an error, conflicting labels named), at least two labelled
    classes, every image file exists, opens as an image and has the channels and size the config expects.

    Args:
        dataset_dir: the dataset folder (layout in the module docstring).
        in_channels: channels per view the network expects (the config's ``in_channels``); None: only check that
            every image of a view has the same channels (the command-line check).
        image_size: the config's ``image_size`` ([height, width]: every image is resized, sizes may differ); None:
            every image must have the same size (files of another size are listed with the override to use).

    Returns:
        The report (``.ok``, ``.problems``, ``.raise_if_bad()``).
    """
    dataset_dir = Path(dataset_dir)
    report = DatasetReport(str(dataset_dir), fix=_FIX)
    samples = _collect(dataset_dir, report, check_files=True)
    if samples is None:
        return report
    hashes = _inspect_images(
        (samples.view0, samples.view1), dataset_dir, report, in_channels, image_size, content_hashes=True
    )
    groups: dict[tuple[str, str], list[int]] = {}
    for i, h in enumerate(hashes or []):
        if h is not None:
            groups.setdefault(h, []).append(i)
    raw = [samples.class_names[c] if c >= 0 and samples.labelled[i] else "" for i, c in enumerate(samples.labels)]
    for ids in groups.values():
        paths = {(os.path.realpath(samples.view0[i]), os.path.realpath(samples.view1[i])) for i in ids}
        if len(ids) > 1 and len(paths) > 1:  # one file pair listed twice is reported by the layout check
            _report_duplicate(ids, raw, samples.rows, report, "identical image content (both views)")
    classes = np.unique(samples.labels[samples.labelled])
    if len(samples) and classes.size == 0:
        report.add(SAMPLES_NAME, "no sample has a label; co-training needs a labelled part")
    elif classes.size == 1:
        report.add(
            SAMPLES_NAME,
            f"every labelled sample is of class {samples.class_names[int(classes[0])]!r}; a classifier needs labelled "
            "samples of at least 2 classes (accuracy on one class is meaningless): label samples of other classes",
        )
    return report


def prepare_training_data(
    dataset_dir: str | os.PathLike,
    demo_dir: str | os.PathLike | None = None,
    in_channels: int | None = None,
    image_size: Sequence[int] | None = None,
) -> str:
    """The training ``initialize`` step: write the demo when ``dataset_dir`` is the empty demo folder, then check.

    Like :func:`tlk_components.data.registry.prepare_dataset`, plus the config's ``in_channels`` and ``image_size`` checked
    against every image, before any compute.

    Returns:
        ``dataset_dir`` as a string.

    Raises:
        DatasetError: the folder is missing or the dataset fails :func:`verify_dataset` (every problem listed).
        ConfigError: a malformed ``image_size``.
    """
    from tlk_components.data.datasets import ensure_demo

    d = Path(dataset_dir)
    ensure_demo("cotraining_classification", write_demo, d, demo_dir)
    if not d.is_dir():
        raise DatasetError(
            f"dataset_dir {d} does not exist; point --dataset_dir at your two-view dataset, or run `python -m "
            f"tlk_components prepare-demo cotraining_classification {d}` to write the demo dataset there"
        )
    verify_dataset(d, in_channels=in_channels, image_size=image_size).raise_if_bad()
    return str(d)


def prepare_inference_input(
    input_dir: str | os.PathLike,
    demo_dir: str | os.PathLike | None = None,
    in_channels: int | None = None,
    image_size: Sequence[int] | None = None,
) -> str:
    """Check an inference input folder: ``<input_dir>/samples.csv`` (``view0,view1[,label]``) and its images.

    When ``input_dir`` is the demo folder and holds nothing yet, the demo dataset is written there first. Unlike
    :func:`verify_dataset`, labels and the class map are optional. Every image is opened: channels against
    ``in_channels``, sizes against ``image_size`` (as in :func:`verify_dataset`).

    Returns:
        ``input_dir`` as a string.

    Raises:
        DatasetError: the CSV is missing or malformed, image files are missing or unreadable, or their channels or
            sizes do not fit the config (every one listed).
    """
    from tlk_components.data.datasets import ensure_demo

    d = Path(input_dir)
    ensure_demo("cotraining_classification", write_demo, d, demo_dir)
    v0, v1, _ = read_pairs_csv(d / SAMPLES_NAME)
    missing = [f"{os.path.relpath(p, d)}: image file missing" for p in v0 + v1 if not os.path.isfile(p)]
    if missing:
        raise DatasetError(f"{d / SAMPLES_NAME}: {len(missing)} image file(s) missing", missing)
    report = DatasetReport(str(d), fix="convert the images or pass the overrides named above")
    report.n_cases = len(v0)
    _inspect_images((v0, v1), d, report, in_channels, image_size)
    report.raise_if_bad()
    return str(d)


class ScaleIntensityByType(Transform):
    """Scale an image loaded by MONAI's ``LoadImage`` (``dtype=None``) into [0, 1] by its bit depth.

    Integer images are divided by the largest value of their type: the PIL mode recorded by ``PILReader`` in the
    image's metadata (``"1"``: 1, ``"L"``, ``"RGB"``, ``"RGBA"``, ...: 255, ``"I;16"``: 65,535) or else the array's
    dtype (uint8, uint16, int8, int16). Floating-point images (PIL mode ``"F"``) and 32-bit integer images (mode
    ``"I"``) have no fixed range: they are min-max scaled per image (a constant image gives 0). Output: float32.

    Example:
        >>> ScaleIntensityByType()(torch.tensor([[0, 32768, 65535]], dtype=torch.int32)).max()  # no metadata: int32
        tensor(1.)
    """

    BIT_DEPTH = {"1": 1.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}
    FREE_RANGE = ("I", "F", "I;32", "F;32")
    DTYPE_MAX = {torch.uint8: 255.0, torch.int8: 127.0, torch.int16: 32767.0, torch.uint16: 65535.0}

    def __call__(self, img: Any) -> torch.Tensor:
        mode = None
        meta = getattr(img, "meta", None)
        if isinstance(meta, dict):
            mode = meta.get("mode")
        x = torch.as_tensor(img)
        if isinstance(mode, str) and mode not in self.FREE_RANGE:
            top = self.BIT_DEPTH.get(mode, 255.0)
        elif mode is None and x.dtype in self.DTYPE_MAX:
            top = self.DTYPE_MAX[x.dtype]
        else:
            xf = x.float()
            lo, hi = xf.min(), xf.max()
            out = (xf - lo) / (hi - lo) if hi > lo else torch.zeros_like(xf)
            return self._keep_meta(img, out)
        return self._keep_meta(img, torch.clamp(x.float() / top, 0.0, 1.0))

    @staticmethod
    def _keep_meta(img: Any, out: torch.Tensor) -> torch.Tensor:
        if hasattr(img, "meta"):
            from monai.data import MetaTensor

            return MetaTensor(out, meta=dict(img.meta))
        return out


# ----------------------------------------------------------------------------------------------------- splits


def split_samples(
    labels: np.ndarray | Sequence[int],
    unlabelled_fraction: float = 0.0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.125,
    seed: int = 13,
    labelled: np.ndarray | Sequence[bool] | None = None,
    fixed: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded split into ``train`` / ``val`` / ``test`` / ``unlabelled`` index arrays (module docstring).

    Rows without a given label (``labelled`` False; default: label ``-1``) always form the unlabelled pool. Rows
    fixed to a split (``fixed``) stay there, and a split with fixed rows gets exactly those; the free labelled rows
    are shuffled with ``seed`` and drawn into test, then validation, the rest trains.

    Args:
        labels: class index per sample (``-1`` = unknown).
        unlabelled_fraction: share of the free labelled rows hidden in the unlabelled pool before the split, in
            [0, 1); default 0 (the user's labels are used as given). For benchmarks that simulate unlabelled data.
        test_fraction: share of the free labelled rows held out for test when no row is fixed to test, in [0, 1);
            default 0.2.
        val_fraction: share of what is left after test used for validation when no row is fixed to val, in [0, 1);
            default 0.125.
        seed: shuffling seed (the notebook used 13).
        labelled: True where the row's label may be used for training; default ``labels >= 0``.
        fixed: fixed split per row (``"train"``, ``"val"``, ``"test"`` or ``""``); default none fixed.
        class_names: class names, for messages.

    Returns:
        ``{"train", "val", "test", "unlabelled"}`` -> sorted int64 index arrays, disjoint, covering every sample.

    Raises:
        ConfigError: a fraction out of range, or no labelled sample left for training.
        DatasetError: fewer than two classes among the labelled samples, or in the training split.
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
    lab_mask = labels >= 0 if labelled is None else np.asarray(labelled, dtype=bool) & (labels >= 0)
    fixed = [""] * len(labels) if fixed is None else list(fixed)
    fixed_ids = {k: np.asarray([i for i, f in enumerate(fixed) if f == k and lab_mask[i]], np.int64) for k in SPLITS}
    free = np.asarray([i for i in np.flatnonzero(lab_mask) if not fixed[i]], dtype=np.int64)
    unknown = np.flatnonzero(~lab_mask)

    def name(c: int) -> str:
        return str(class_names[c]) if class_names is not None else str(c)

    classes = np.unique(labels[lab_mask])
    if classes.size == 1:
        raise DatasetError(
            f"every labelled sample is of class {name(int(classes[0]))!r}; a classifier needs labelled samples of at "
            "least 2 classes (accuracy on one class is meaningless): label samples of other classes"
        )
    order = free[np.random.default_rng(seed).permutation(len(free))]
    n_unl = int(np.floor(unlabelled_fraction * len(order)))
    unl, lab = order[:n_unl], order[n_unl:]
    if len(fixed_ids["test"]):
        test, rest = fixed_ids["test"], lab
    else:
        n_test = int(np.floor(test_fraction * len(lab)))
        test, rest = lab[:n_test], lab[n_test:]
    if len(fixed_ids["val"]):
        val, train = fixed_ids["val"], rest
    else:
        n_val = int(np.floor(val_fraction * len(rest)))
        val, train = rest[:n_val], rest[n_val:]
    train = np.concatenate([train, fixed_ids["train"]])
    if len(train) == 0:
        raise ConfigError(
            f"split of {int(lab_mask.sum())} labelled samples leaves none for training (unlabelled_fraction="
            f"{unlabelled_fraction}, test_fraction={test_fraction}, val_fraction={val_fraction}); lower the fractions"
        )
    train_classes = np.unique(labels[train])
    if train_classes.size < 2 and classes.size >= 2:
        raise DatasetError(
            f"the training split holds only class {name(int(train_classes[0]))!r} ({len(train)} samples); label more "
            "samples of the other classes or lower test_fraction / val_fraction"
        )
    for split_name, ids in (("val", val), ("test", test)):
        if len(ids):
            absent = sorted(set(train_classes.tolist()) - set(labels[ids].tolist()))
            if absent:
                logger.warning(
                    f"the {split_name} split ({len(ids)} samples) has no sample of class(es) "
                    f"{[name(c) for c in absent]} that training has; its accuracy says nothing about them (label more "
                    f"samples of those classes, or fix the {split_name} split with a split column or "
                    f"{LIST_FILES[split_name]})"
                )
    return {
        "train": np.sort(train),
        "val": np.sort(val),
        "test": np.sort(test),
        "unlabelled": np.sort(np.concatenate([unl, unknown])),
    }


def load_splits(
    dataset_dir: str | os.PathLike,
    unlabelled_fraction: float = 0.0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.125,
    seed: int = 13,
) -> TwoViewSplits:
    """Read ``dataset_dir`` and split it with :func:`split_samples` (arguments as there; fixed splits from the
    ``split`` column and ``val.txt`` / ``test.txt``)."""
    samples = load_samples(dataset_dir)
    idx = split_samples(
        samples.labels,
        unlabelled_fraction,
        test_fraction,
        val_fraction,
        seed,
        labelled=samples.labelled,
        fixed=samples.split,
        class_names=samples.class_names,
    )
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
    hidden_fraction: float = DEMO_HIDDEN_FRACTION,
) -> Path:
    """Write the two-view digits dataset (module docstring) into ``out_dir``: PNG trees, ``samples.csv``, class map.

    Args:
        out_dir: output folder (created).
        size: ``"demo"`` (all 1,797 digits) or ``"tiny"`` (12 per class, 120 digits, for tests).
        seed: seeds the view noise and which digits form the tiny set (the demo set is every digit); same seed,
            same files.
        views: ``(8x8 image, rng) -> (view0, view1)`` uint8 arrays; default :func:`digit_views`.
        hidden_fraction: share of the rows written without a label (the unlabelled pool; their class goes to the
            ``hidden_label`` column), chosen with the notebook's seed 13; in [0, 1), default 0.75. 0 writes every
            label (the benchmark hides labels itself).

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
    check_in_range("hidden_fraction", hidden_fraction, 0.0, 1.0)
    order = np.random.default_rng(13).permutation(len(idx))
    hidden = set(order[: int(np.floor(hidden_fraction * len(idx)))].tolist())
    out = Path(out_dir)
    rows = ["view0,view1,label,hidden_label"]
    for pos, i in enumerate(idx):
        cls = str(targets[i])
        name = f"digit_{i:05d}.png"
        for v, arr in zip(VIEW_DIRS, views(images[i], rng), strict=True):
            path = out / v / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
        label, hidden_label = ("", cls) if pos in hidden else (cls, "")
        rows.append(f"view0/{cls}/{name},view1/{cls}/{name},{label},{hidden_label}")
    atomic_write_json(out / CLASS_MAP_NAME, {str(c): c for c in range(10)})
    atomic_write_text(out / SAMPLES_NAME, "\n".join(rows) + "\n")
    return out
