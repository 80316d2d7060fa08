# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""BraTS 2020 data for slice-wise tumour box localization: layout checks, demo writer, in-memory datasets.

Layout (the public BraTS 2020 training set)::

    <dataset_dir>/BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz
                                      /BraTS20_Training_001_t1.nii.gz
                                      /BraTS20_Training_001_t1ce.nii.gz
                                      /BraTS20_Training_001_t2.nii.gz
                                      /BraTS20_Training_001_seg.nii.gz    (labels 0, 1, 2, 4)

Every file may be ``.nii.gz`` or ``.nii`` (common copies ship ``.nii``); a case holding both for one sequence is
ambiguous and reported. Any case folder ``BraTS20_*`` is accepted (``BraTS20_Validation_XXX`` without ``seg`` for
inference). A missing or misnamed file (e.g. case 355 of a popular copy, whose segmentation is
``W39_1998.09.19_Segm.nii``) is reported with the case, the expected names and the files found instead.

Bad cases stop a run by default; :func:`check_cases` (the bundle's ``skip_bad_cases`` option) instead excludes
them, prints them and records them in ``<output_dir>/skipped_cases.json``. Cases are cached in memory (or as
memory-mapped ``.npy`` files with ``cache="disk"``); the cache size is estimated from the headers before loading
(:func:`estimate_cache_bytes`) and a cache that does not fit in the available memory is refused up front.
Channels are ``(flair, t1, t1ce, t2)``; each is z-scored over the brain (non-zero voxels) with MONAI's
``NormalizeIntensity(nonzero=True, channel_wise=True)``. Tumour labels are binarised (``seg > 0``), as the source
document does (``clip max 1``). Slices are the last array axis; slices are resized in-plane to ``image_size``
(bilinear for images, nearest for labels) and, when a volume has more than ``max_slices`` slices, reduced by the
document's mean-intensity projection: the slices are split into ``max_slices`` contiguous groups of nearly equal
size (``numpy.array_split``), images averaged and labels OR-ed per group (155 -> e.g. 48 slices).

Splits are deterministic: cases sorted by name; the last ``test_fraction`` are the test split, the
``val_fraction`` before them the validation split, the rest training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import NormalizeIntensity
from scipy import ndimage

from tlk_components.data.datasets import DatasetReport
from tlk_components.data.nifti_checks import count_nonfinite, load_nifti, save_nifti
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.validation import check_in_range, check_positive_int

__all__ = [
    "BRATS_LABELS",
    "CACHE_MODES",
    "SEQUENCES",
    "BratsSliceDataset",
    "BratsVolumeDataset",
    "available_memory_bytes",
    "brats_datalist",
    "case_cache_bytes",
    "check_cache_fits",
    "check_cases",
    "estimate_cache_bytes",
    "find_case_file",
    "find_cases",
    "load_case",
    "mean_projection",
    "prepare_inputs",
    "verify_dataset",
    "write_demo",
]

#: MRI sequences in channel order (FLAIR first: it is the one drawn under the boxes).
SEQUENCES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
#: BraTS 2020 label values: 0 background, 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour.
BRATS_LABELS: frozenset[int] = frozenset({0, 1, 2, 4})

logger = logging.getLogger(__name__)

_DEMO_SIZES = {"demo": (24, (96, 96, 40)), "tiny": (5, (96, 96, 12))}


# ----------------------------------------------------------------------------------------------- layout
def find_cases(dataset_dir: str | os.PathLike) -> list[Path]:
    """Case folders ``BraTS20_*`` of a dataset, sorted by name."""
    d = Path(dataset_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and p.name.startswith("BraTS20_"))


#: Accepted NIfTI suffixes, in order of preference.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


def _expected_names(case_dir: Path, name: str) -> list[str]:
    return [f"{case_dir.name}_{name}{sfx}" for sfx in NIFTI_SUFFIXES]


def find_case_file(case_dir: str | os.PathLike, name: str) -> Path | None:
    """The file of sequence ``name`` (``flair``, ``t1``, ``t1ce``, ``t2`` or ``seg``) of a case, ``.nii.gz`` or ``.nii``.

    Args:
        case_dir: ``.../BraTS20_Training_XXX``.
        name: the sequence (or ``seg``).

    Returns:
        The existing file, or None when neither ``<case>_<name>.nii.gz`` nor ``<case>_<name>.nii`` exists.
    """
    case_dir = Path(case_dir)
    for fname in _expected_names(case_dir, name):
        if (case_dir / fname).is_file():
            return case_dir / fname
    return None


def _case_file_problem(case_dir: Path, name: str) -> str | None:
    """Why the file of ``name`` cannot be used (missing, misnamed or present twice), or None when it is fine."""
    expected = _expected_names(case_dir, name)
    if not case_dir.is_dir():
        return f"case folder {case_dir} does not exist (expected {expected[0]} in it); check --dataset_dir"
    present = [f for f in expected if (case_dir / f).is_file()]
    kind = "segmentation" if name == "seg" else "sequence"
    if len(present) > 1:
        return f"{' and '.join(present)} both exist ({kind} '{name}'); keep one of them"
    if present:
        return None
    known = {f for n in (*SEQUENCES, "seg") for f in _expected_names(case_dir, n)}
    others = sorted(p.name for p in case_dir.iterdir() if not p.name.startswith(".") and p.name not in known)
    found = f"found instead: {', '.join(others[:10])}" if others else "no other file in the case folder"
    return (
        f"{expected[0]} missing ({kind} '{name}'; expected {expected[0]} or {expected[1]}); {found}. Rename the "
        f"file to {expected[0] if not others or others[0].endswith('.gz') else expected[1]} if it is this "
        f"{kind}, or pass --skip_bad_cases true to leave the case out"
    )


def _case_file(case_dir: Path, name: str) -> Path:
    """The file of ``name`` of a case; DatasetError (naming the case, the names expected, the files found) if none."""
    problem = _case_file_problem(case_dir, name)
    if problem is not None:
        raise DatasetError(f"{case_dir.name}: {problem}")
    return find_case_file(case_dir, name)


def _nested_case_hint(d: Path) -> str:
    """A hint when the case folders sit one level below ``d`` (e.g. ``MICCAI_BraTS2020_TrainingData/``)."""
    try:
        nested = sorted(p for p in d.iterdir() if p.is_dir() and find_cases(p))
    except OSError:
        return ""
    return f"; the case folders are in {nested[0]}: pass that folder as --dataset_dir" if nested else ""


def _check_case(case: Path, require_label: bool) -> list[str]:
    """Every problem of one case folder (empty when the case is fine)."""
    problems: list[str] = []
    names = list(SEQUENCES) + (["seg"] if require_label else [])
    shapes: dict[str, tuple[int, ...]] = {}
    files: dict[str, Path] = {}
    for name in names:
        problem = _case_file_problem(case, name)
        if problem is not None:
            problems.append(problem)
            continue
        f = files[name] = find_case_file(case, name)
        try:
            img = nib.load(str(f))
            shapes[name] = tuple(int(s) for s in img.shape)
        except Exception as e:  # noqa: BLE001 - any reader failure is a bad file, reported by name
            problems.append(f"{f.name} is not a readable NIfTI file ({type(e).__name__})")
            continue
        if len(shapes[name]) != 3:
            problems.append(f"{f.name} has shape {shapes[name]}; expected a 3-D volume")
        elif name != "seg" and np.issubdtype(img.get_data_dtype(), np.floating):
            # an integer file cannot hold NaN/Inf, so only float files are read (once, here)
            n_bad = count_nonfinite(np.asanyarray(img.dataobj))
            if n_bad:
                problems.append(
                    f"{f.name} has {n_bad} NaN/Inf voxel(s) of {int(np.prod(shapes[name]))}; expected finite "
                    "intensities: re-export the volume or replace them (e.g. with 0, the background)"
                )
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{k} {v}" for k, v in shapes.items())
        problems.append(f"sequences have different shapes ({detail}); expected one shape for all")
    if require_label and "seg" in shapes:
        seg = files["seg"]
        try:
            _, data = load_nifti(seg)
        except ValueError as e:
            return [*problems, str(e)]
        values = set(np.unique(data).tolist())
        bad = sorted(v for v in values if v not in BRATS_LABELS)
        if bad:
            problems.append(
                f"{seg.name} holds unexpected label values {bad[:10]}; expected only {sorted(BRATS_LABELS)}"
            )
    return problems


def _check_all(dataset_dir: str | os.PathLike, require_label: bool) -> tuple[DatasetReport, dict[str, list[str]]]:
    """The dataset report and the problems of every bad case, by case name."""
    report = DatasetReport(str(dataset_dir))
    report.fix = (
        "every case folder BraTS20_Training_XXX needs BraTS20_Training_XXX_{flair,t1,t1ce,t2"
        + (",seg" if require_label else "")
        + "}.nii.gz (or .nii) of one shape"
        + (", with seg values in {0,1,2,4}" if require_label else "")
        + "; repair the cases listed, or pass --skip_bad_cases true to leave them out (they are then listed in "
        "<output_dir>/skipped_cases.json)"
    )
    bad: dict[str, list[str]] = {}
    d = Path(dataset_dir)
    if not d.is_dir():
        report.add(str(d), "dataset folder does not exist; pass --dataset_dir pointing at the BraTS 2020 folder")
        return report, bad
    cases = find_cases(d)
    report.n_cases = len(cases)
    if not cases:
        report.add(
            d.name, "no case folders named BraTS20_* found (expected BraTS20_Training_001/ ...)" + _nested_case_hint(d)
        )
        return report, bad
    for case in cases:
        problems = _check_case(case, require_label)
        for problem in problems:
            report.add(case.name, problem)
        if problems:
            bad[case.name] = problems
    return report, bad


def verify_dataset(dataset_dir: str | os.PathLike, require_label: bool = True) -> DatasetReport:
    """Check every case of a BraTS-layout dataset before any compute; list every bad case by name.

    Checks: at least one ``BraTS20_*`` case folder; all four sequences (and ``seg`` when ``require_label``)
    present as ``.nii.gz`` or ``.nii`` (not both) and readable; all files of a case of the same 3-D shape; no
    NaN/Inf voxel in a sequence stored as floats; ``seg`` values in {0, 1, 2, 4}. A missing file is reported with the names expected and the files found instead.

    Args:
        dataset_dir: the dataset folder.
        require_label: whether ``seg`` is required (False for inference inputs). Default True.

    Returns:
        A :class:`DatasetReport` (``report.ok`` / ``report.raise_if_bad()``).
    """
    return _check_all(dataset_dir, require_label)[0]


def brats_datalist(
    dataset_dir: str | os.PathLike,
    split: str = "train",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    exclude: Sequence[str] | None = None,
) -> list[dict[str, str]]:
    """Deterministic split of the cases: ``[{"case": name, "dir": path}, ...]``.

    The split is made on all case folders, then the ``exclude``d cases are dropped from it, so leaving out a bad
    case moves no other case into another split.

    Args:
        dataset_dir: the dataset folder.
        split: ``"train"``, ``"validation"``, ``"test"`` or ``"all"``.
        val_fraction: fraction of cases for validation, in [0, 1). Default 0.2 (at least 1 case when >= 3 cases).
        test_fraction: fraction of cases for the test split, in [0, 1). Default 0.2 (same rule).
        exclude: case names to leave out (the skipped bad cases from :func:`check_cases`). Default None.

    Raises:
        ConfigError: unknown split or fractions out of range. DatasetError: no case found.
    """
    if split not in ("train", "validation", "test", "all"):
        raise ConfigError(f"split={split!r}: expected 'train', 'validation', 'test' or 'all'")
    vf = check_in_range("val_fraction", val_fraction, 0.0, 1.0)
    tf = check_in_range("test_fraction", test_fraction, 0.0, 1.0)
    cases = find_cases(dataset_dir)
    if not cases:
        raise DatasetError(f"{dataset_dir}: no BraTS20_* case folders; point --dataset_dir at the BraTS 2020 folder")
    items = [{"case": c.name, "dir": str(c)} for c in cases]
    drop = set(exclude or ())
    if split == "all":
        return [i for i in items if i["case"] not in drop]
    n = len(items)
    n_test = max(1, round(n * tf)) if (tf > 0 and n >= 3) else 0
    n_val = max(1, round(n * vf)) if (vf > 0 and n >= 3) else 0
    if n_test + n_val >= n:
        n_test, n_val = min(n_test, 1), min(n_val, 1)
    n_train = n - n_val - n_test
    if split == "train":
        chosen = items[:n_train]
    elif split == "validation":
        chosen = items[n_train : n_train + n_val]
    else:
        chosen = items[n_train + n_val :]
    return [i for i in chosen if i["case"] not in drop]


SKIPPED_CASES_FILE = "skipped_cases.json"


def check_cases(
    dataset_dir: str | os.PathLike,
    demo_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    skip_bad_cases: bool | str = False,
    require_label: bool = True,
    record: bool = True,
) -> list[str]:
    """Check every case before any compute: refuse bad cases (default) or leave them out, listed and recorded.

    The bundle's ``initialize`` step. When ``dataset_dir`` is the bundle's (empty) demo folder the demo dataset is
    written there first. With ``skip_bad_cases`` the bad cases are printed and written to
    ``<output_dir>/skipped_cases.json`` (``{"dataset_dir", "n_cases", "skipped": [{"case", "reasons"}]}``); a
    stale record of an earlier run is removed when nothing is skipped.

    Args:
        dataset_dir: the dataset folder.
        demo_dir: the bundle's demo folder (None: never write the demo).
        output_dir: where ``skipped_cases.json`` is written (None: not written).
        skip_bad_cases: leave bad cases out instead of stopping (``true``/``false`` from the command line).
        require_label: whether ``seg`` is required (False for inference inputs). Default True.
        record: print and record the skipped cases (False on DDP ranks other than 0). Default True.

    Returns:
        The names of the skipped cases (pass them as ``exclude`` to :func:`brats_datalist`); empty when none.

    Raises:
        DatasetError: a bad case without ``skip_bad_cases`` (every bad case listed, with the fix), no case folder,
            or no good case left.
    """
    from tlk_components.data.datasets import ensure_demo
    from tlk_components.utils.io import atomic_write_json
    from tlk_components.utils.validation import parse_flag

    skip = parse_flag("skip_bad_cases", skip_bad_cases)
    d = Path(dataset_dir)
    ensure_demo("brats_mri_box_localization", write_demo, d, demo_dir)
    report, bad = _check_all(d, require_label)
    if not skip or not bad or len(bad) == report.n_cases:
        if bad and len(bad) == report.n_cases and skip:
            report.fix = "no good case is left to use; repair the cases listed"
        report.raise_if_bad()
    record_path = Path(output_dir) / SKIPPED_CASES_FILE if output_dir is not None else None
    if not bad:
        if record and record_path is not None and record_path.is_file():
            record_path.unlink()
        return []
    if record:
        lines = [f"  - {case}: {'; '.join(reasons)}" for case, reasons in bad.items()]
        where = f"; recorded in {record_path}" if record_path is not None else ""
        print(
            f"skip_bad_cases: leaving out {len(bad)} of {report.n_cases} case(s) of {d}{where}:\n" + "\n".join(lines),
            flush=True,
        )
        if record_path is not None:
            atomic_write_json(
                record_path,
                {
                    "dataset_dir": str(d),
                    "n_cases": report.n_cases,
                    "skipped": [{"case": case, "reasons": reasons} for case, reasons in bad.items()],
                },
            )
    return sorted(bad)


# ----------------------------------------------------------------------------------------------- loading
def mean_projection(
    image: np.ndarray, label: np.ndarray | None, max_slices: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Reduce the slice axis (last) to ``max_slices`` groups: mean of images, max (OR) of labels.

    Args:
        image: ``[C, H, W, Z]``.
        label: ``[H, W, Z]`` or None.
        max_slices: number of output slices when ``Z > max_slices``; 0 disables the projection.

    Returns:
        ``(image [C, H, W, Z'], label [H, W, Z'] | None, ranges [Z', 2])`` with the source slice range
        ``[start, stop)`` of every output slice.
    """
    z = image.shape[-1]
    if max_slices <= 0 or z <= max_slices:
        return image, label, np.stack([np.arange(z), np.arange(z) + 1], axis=1)
    groups = np.array_split(np.arange(z), max_slices)
    img = np.stack([image[..., g].mean(axis=-1) for g in groups], axis=-1)
    lbl = None if label is None else np.stack([label[..., g].max(axis=-1) for g in groups], axis=-1)
    ranges = np.array([[g[0], g[-1] + 1] for g in groups])
    return img, lbl, ranges


def load_case(
    case_dir: str | os.PathLike,
    image_size: Sequence[int] = (96, 96),
    max_slices: int = 48,
    with_label: bool = True,
) -> dict[str, Any]:
    """Load one case into memory as slices.

    Args:
        case_dir: ``.../BraTS20_Training_XXX``.
        image_size: in-plane size ``(H, W)`` after resizing. Default (96, 96).
        max_slices: mean-intensity projection target (0 = off). Default 48.
        with_label: load ``seg`` (binarised). Default True.

    Returns:
        ``{"case", "image": float32 [Z', 4, H, W], "label": uint8 [Z', 1, H, W] (if with_label),
        "affine": [4, 4], "orig_shape": (X, Y, Z), "ranges": [Z', 2]}``.

    Raises:
        DatasetError: a file is missing or unreadable, or shapes differ (names the case).
    """
    case_dir = Path(case_dir)
    chans, ref = [], None
    for name in SEQUENCES:
        path = _case_file(case_dir, name)
        try:
            img, data = load_nifti(path)
        except ValueError as e:
            raise DatasetError(f"{case_dir.name}: {e}") from None
        if ref is None:
            ref = img
        elif data.shape != ref.shape:
            raise DatasetError(f"{case_dir.name}: {name} has shape {data.shape}, flair has {ref.shape}")
        chans.append(np.asarray(data, dtype=np.float32))
    image = np.stack(chans)  # [4, X, Y, Z]
    image = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(image), dtype=np.float32)
    label = None
    if with_label:
        path = _case_file(case_dir, "seg")
        try:
            _, seg = load_nifti(path)
        except ValueError as e:
            raise DatasetError(f"{case_dir.name}: {e}") from None
        if seg.shape != ref.shape:
            raise DatasetError(f"{case_dir.name}: seg has shape {seg.shape}, flair has {ref.shape}")
        label = (np.asarray(seg) > 0).astype(np.uint8)
    image, label, ranges = mean_projection(image, label, int(max_slices))
    img_t = torch.from_numpy(np.ascontiguousarray(image)).permute(3, 0, 1, 2)  # [Z, 4, X, Y]
    size = tuple(int(s) for s in image_size)
    if tuple(img_t.shape[-2:]) != size:
        img_t = torch.nn.functional.interpolate(img_t, size=size, mode="bilinear", align_corners=False)
    out: dict[str, Any] = {
        "case": case_dir.name,
        "image": img_t.contiguous().float(),
        "affine": np.asarray(ref.affine, dtype=np.float64),
        "orig_shape": tuple(int(s) for s in ref.shape),
        "ranges": ranges,
    }
    if label is not None:
        lbl_t = torch.from_numpy(np.ascontiguousarray(label)).permute(2, 0, 1)[:, None].float()  # [Z, 1, X, Y]
        if tuple(lbl_t.shape[-2:]) != size:
            lbl_t = torch.nn.functional.interpolate(lbl_t, size=size, mode="nearest")
        out["label"] = lbl_t.to(torch.uint8).contiguous()
    return out


# ----------------------------------------------------------------------------------------------- cache
CACHE_MODES: tuple[str, ...] = ("memory", "disk")
_CACHE_VERSION = 1
_MB = 1024**2


def case_cache_bytes(
    case_dir: str | os.PathLike, image_size: Sequence[int] = (96, 96), max_slices: int = 48, with_label: bool = True
) -> int:
    """Bytes one case takes in the cache, from the FLAIR header only (no voxel is read).

    ``Z' x H x W x (4 channels x 4 bytes float32 + 1 byte uint8 label)`` with ``Z' = min(Z, max_slices)``
    (``Z`` when ``max_slices`` is 0) and ``(H, W) = image_size``: 7.2 MiB at the default 96x96, 48 slices;
    45 MiB at 240x240, 48 slices; 145 MiB at 240x240 with all 155 slices.

    Raises:
        DatasetError: the FLAIR file is missing or unreadable (names the case).
    """
    case_dir = Path(case_dir)
    f = _case_file(case_dir, "flair")
    try:
        z = int(nib.load(str(f)).shape[-1])
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file, reported by name
        raise DatasetError(f"{case_dir.name}: {f.name} is not a readable NIfTI file ({type(e).__name__})") from None
    zp = min(z, int(max_slices)) if int(max_slices) > 0 else z
    h, w = (int(v) for v in image_size)
    return zp * h * w * (len(SEQUENCES) * 4 + (1 if with_label else 0))


def estimate_cache_bytes(
    data: Sequence[dict[str, str]], image_size: Sequence[int] = (96, 96), max_slices: int = 48, with_label: bool = True
) -> int:
    """Total cache size of a datalist (sum of :func:`case_cache_bytes`), from the headers only."""
    return sum(case_cache_bytes(d["dir"], image_size, max_slices, with_label) for d in data)


def available_memory_bytes() -> int | None:
    """Memory available to this process: ``MemAvailable`` of ``/proc/meminfo`` (else ``SC_AVPHYS_PAGES``), capped
    by a cgroup v2 memory limit (containers); None when it cannot be read."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            avail = None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            room = max(int(limit) - used, 0)
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


def _cache_fix() -> str:
    return (
        "use a disk cache (--cache disk --cache_dir <folder on a fast disk>: each case is stored once as "
        "memory-mapped .npy files and read slice by slice), or lower the cache with a smaller --image_size or "
        "--max_slices, or use fewer cases"
    )


def check_cache_fits(
    data: Sequence[dict[str, str]],
    image_size: Sequence[int],
    max_slices: int,
    with_label: bool,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    what: str = "dataset",
) -> int:
    """Estimate the cache of ``data`` before loading, log it, and refuse one that cannot fit.

    Args:
        data: the datalist.
        image_size: in-plane size.
        max_slices: mean-intensity projection target (0 = off).
        with_label: whether labels are cached.
        cache: ``"memory"`` (checked against the available memory) or ``"disk"`` (against the free space of
            ``cache_dir``, counting cases cached earlier as present).
        cache_dir: the disk cache folder.
        what: the dataset's name in messages.

    Returns:
        The estimated cache size in bytes.

    Raises:
        DatasetError: the cache exceeds the available memory (or free disk space); the message says how to use a
            disk cache or lower the cache.
    """
    n = len(data)
    total = estimate_cache_bytes(data, image_size, max_slices, with_label)
    per_case = total / max(n, 1)
    size = f"{n} case(s) x {per_case / _MB:.1f} MB = {total / _MB:.0f} MB"
    settings = f"image_size={list(image_size)}, max_slices={max_slices}"
    if cache == "memory":
        avail = available_memory_bytes()
        room = "unknown" if avail is None else f"{avail / _MB:.0f} MB"
        logger.info("%s: in-memory cache of %s (%s); available memory %s", what, size, settings, room)
        if avail is not None and total > avail:
            raise DatasetError(
                f"{what}: the in-memory cache needs about {size} ({settings}) but only {room} of memory is "
                f"available; {_cache_fix()}"
            )
        return total
    folder = Path(cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cache_dir {folder} cannot be created ({type(e).__name__}: {e.strerror or e}); pass --cache_dir with a "
            "folder you can write to"
        ) from None
    missing = sum(
        case_cache_bytes(d["dir"], image_size, max_slices, with_label)
        for d in data
        if not (folder / f"{_cache_key(Path(d['dir']), image_size, max_slices, with_label)}.json").is_file()
    )
    free = shutil.disk_usage(folder).free
    logger.info(
        "%s: disk cache of %s (%s) in %s; %.0f MB to write, %.0f MB free",
        what,
        size,
        settings,
        folder,
        missing / _MB,
        free / _MB,
    )
    if missing > free:
        raise DatasetError(
            f"{what}: the disk cache in {folder} needs {missing / _MB:.0f} MB more but only {free / _MB:.0f} MB "
            f"is free; pass --cache_dir on a disk with more room, or lower --image_size or --max_slices"
        )
    return total


def _cache_key(case_dir: Path, image_size: Sequence[int], max_slices: int, with_label: bool) -> str:
    """File stem of a case in the disk cache: the case name and a hash of its files and the cache settings."""
    names = [*SEQUENCES, "seg"] if with_label else list(SEQUENCES)
    stats = []
    for name in names:
        f = _case_file(case_dir, name)
        st = f.stat()
        stats.append([f.name, st.st_size, st.st_mtime_ns])
    key = [str(case_dir.resolve()), stats, [int(v) for v in image_size], int(max_slices), bool(with_label)]
    digest = hashlib.sha1(json.dumps([_CACHE_VERSION, key]).encode()).hexdigest()[:16]
    return f"{case_dir.name}_{digest}"


def _load_cached(
    d: dict[str, str],
    image_size: Sequence[int],
    max_slices: int,
    with_label: bool,
    cache: str,
    cache_dir: str | os.PathLike | None,
) -> dict[str, Any]:
    """One case, held in memory (``cache="memory"``) or memory-mapped from ``cache_dir`` (``"disk"``)."""
    if cache == "memory":
        return load_case(d["dir"], image_size, max_slices, with_label)
    from tlk_components.utils.io import atomic_write_json

    case_dir = Path(d["dir"])
    folder = Path(cache_dir)
    stem = _cache_key(case_dir, image_size, max_slices, with_label)
    meta_path = folder / f"{stem}.json"
    arrays = ["image", "label"] if with_label else ["image"]
    if not meta_path.is_file():
        vol = load_case(case_dir, image_size, max_slices, with_label)
        for key in arrays:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.{key}.", suffix=".npy")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, vol[key].numpy())
            os.replace(tmp, folder / f"{stem}.{key}.npy")
        atomic_write_json(
            meta_path,
            {
                "case": vol["case"],
                "affine": np.asarray(vol["affine"]).tolist(),
                "orig_shape": list(vol["orig_shape"]),
                "ranges": np.asarray(vol["ranges"]).tolist(),
            },
        )
    meta = json.loads(meta_path.read_text())
    out: dict[str, Any] = {
        "case": meta["case"],
        "affine": np.asarray(meta["affine"], dtype=np.float64),
        "orig_shape": tuple(meta["orig_shape"]),
        "ranges": np.asarray(meta["ranges"], dtype=np.int64).reshape(-1, 2),
    }
    for key in arrays:
        out[key] = np.load(folder / f"{stem}.{key}.npy", mmap_mode="r")
    return out


def _tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A tensor of a cached array (a copy when it is memory-mapped from the disk cache)."""
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))


def _load_all(
    data: Sequence[dict[str, str]],
    image_size: Sequence[int],
    max_slices: int,
    with_label: bool,
    cache: str,
    cache_dir: str | os.PathLike | None,
    what: str,
) -> list[dict[str, Any]]:
    from tlk_components.utils.validation import look_up_option

    if len(data) == 0:
        raise DatasetError(f"{what}: the datalist is empty; check --dataset_dir and the split")
    cache = look_up_option("cache", cache, CACHE_MODES)
    if cache == "disk" and not cache_dir:
        raise ConfigError("cache='disk' needs a cache folder: pass --cache_dir <folder on a fast disk>")
    size = check_image_size(image_size)
    check_cache_fits(data, size, max_slices, with_label, cache, cache_dir, what)
    return [_load_cached(d, size, max_slices, with_label, cache, cache_dir) for d in data]


class BratsVolumeDataset(torch.utils.data.Dataset):
    """Whole volumes (as stacks of slices), cached: one item per case (evaluation and inference).

    Args:
        data: datalist from :func:`brats_datalist` (``[{"case", "dir"}, ...]``).
        image_size: in-plane size. Default (96, 96).
        max_slices: mean-intensity projection target (0 = off). Default 48.
        with_label: load labels. Default True.
        cache: ``"memory"`` (default) or ``"disk"`` (memory-mapped ``.npy`` files in ``cache_dir``, written once
            per case and settings). The cache size is estimated and checked before loading
            (:func:`check_cache_fits`).
        cache_dir: the disk cache folder (``cache="disk"``). Default None.

    Items: ``{"case": str, "image": [Z, 4, H, W], "label": [Z, 1, H, W] (with labels), "affine": [4, 4],
    "orig_shape": [3], "ranges": [Z, 2]}`` — use ``batch_size=1``.

    Raises:
        DatasetError: empty datalist, a bad case, or a cache that does not fit. ConfigError: bad ``cache``.
    """

    def __init__(
        self,
        data: Sequence[dict[str, str]],
        image_size: Sequence[int] = (96, 96),
        max_slices: int = 48,
        with_label: bool = True,
        cache: str = "memory",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.volumes = _load_all(data, image_size, max_slices, with_label, cache, cache_dir, "BratsVolumeDataset")

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v = self.volumes[i]
        item = {
            "case": v["case"],
            "image": _tensor(v["image"]),
            "affine": torch.as_tensor(v["affine"]),
            "orig_shape": torch.tensor(v["orig_shape"]),
            "ranges": torch.as_tensor(v["ranges"]),
        }
        if "label" in v:
            item["label"] = _tensor(v["label"])
        return item


class BratsSliceDataset(torch.utils.data.Dataset):
    """2-D slices of cached volumes (slice-wise training, as the box-localization tutorial).

    Args:
        data: datalist from :func:`brats_datalist`.
        image_size: in-plane size. Default (96, 96).
        max_slices: mean-intensity projection target (0 = off). Default 48.
        transform: callable applied to every item dict (e.g. random flips then ``BoxTargetsd``). Default None.
        cache: ``"memory"`` (default) or ``"disk"`` (see :class:`BratsVolumeDataset`).
        cache_dir: the disk cache folder (``cache="disk"``). Default None.

    Items: ``{"image": [4, H, W] float32, "label": [1, H, W] uint8, "case": str, "slice": int}``.
    """

    def __init__(
        self,
        data: Sequence[dict[str, str]],
        image_size: Sequence[int] = (96, 96),
        max_slices: int = 48,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        cache: str = "memory",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.volumes = _load_all(data, image_size, max_slices, True, cache, cache_dir, "BratsSliceDataset")
        self.index = [(v, z) for v, vol in enumerate(self.volumes) for z in range(vol["image"].shape[0])]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, z = self.index[i]
        vol = self.volumes[v]
        item = {"image": _tensor(vol["image"][z]), "label": _tensor(vol["label"][z]), "case": vol["case"], "slice": z}
        return self.transform(item) if self.transform is not None else item


# ----------------------------------------------------------------------------------------------- demo data
def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return f / (np.abs(f).max() + 1e-8)


def _demo_case(rng: np.random.Generator, shape: tuple[int, int, int], n_tumours: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic brain: four sequences ``[4, X, Y, Z]`` (int16) and a BraTS-valued seg ``[X, Y, Z]``."""
    x, y, z = (np.arange(n, dtype=np.float32) for n in shape)
    xx, yy, zz = np.meshgrid(x, y, z, indexing="ij")
    c = np.array(shape, dtype=np.float32) / 2 + rng.uniform(-2, 2, 3)
    radii = np.array(shape, dtype=np.float32) * np.array([0.40, 0.34, 0.55]) * rng.uniform(0.9, 1.05, 3)
    r = np.sqrt(((xx - c[0]) / radii[0]) ** 2 + ((yy - c[1]) / radii[1]) ** 2 + ((zz - c[2]) / radii[2]) ** 2)
    brain = r < 1.0
    texture = _smooth(rng, shape, 3.0)
    gm = brain & ((r > 0.8) | (texture > 0.25))
    vent = (
        ((xx - c[0]) / (radii[0] * 0.18)) ** 2
        + ((np.abs(yy - c[1]) - radii[1] * 0.15) / (radii[1] * 0.1)) ** 2
        + ((zz - c[2]) / (radii[2] * 0.35)) ** 2
    ) < 1.0
    #          flair  t1    t1ce  t2
    wm_i = np.array([0.55, 0.80, 0.80, 0.45])
    gm_i = np.array([0.65, 0.60, 0.62, 0.60])
    csf_i = np.array([0.20, 0.25, 0.25, 1.00])
    img = np.zeros((4, *shape), dtype=np.float32)
    for s in range(4):
        vol = np.where(gm, gm_i[s], wm_i[s]) * brain
        vol = np.where(vent & brain, csf_i[s], vol)
        img[s] = vol
    seg = np.zeros(shape, dtype=np.uint8)
    for _ in range(n_tumours):
        rad = rng.uniform(3.0, 13.0) * rng.uniform(0.7, 1.3, 2)  # in-plane semi-axes (px)
        rz = rng.uniform(2.0, max(2.5, shape[2] * 0.3))
        for _try in range(20):
            tc = c + rng.uniform(-0.55, 0.55, 3) * radii
            if np.sqrt((((tc - c) / radii) ** 2).sum()) < 0.6:
                break
        d = np.sqrt(((xx - tc[0]) / rad[0]) ** 2 + ((yy - tc[1]) / rad[1]) ** 2 + ((zz - tc[2]) / rz) ** 2)
        d = d + 0.25 * _smooth(rng, shape, 2.0)  # irregular outline
        tumour = (d < 1.0) & brain
        core, ring = tumour & (d < 0.45), tumour & (d >= 0.45) & (d < 0.7)
        edema = tumour & (d >= 0.7)
        seg[edema & (seg == 0)] = 2
        seg[ring] = 4
        seg[core] = 1
        k = rng.uniform(0.6, 1.4)  # contrast of this tumour
        img[0][edema | ring] += 0.45 * k
        img[0][core] += 0.25 * k
        img[1][tumour] -= 0.2 * k
        img[2][ring] += 0.6 * k
        img[2][core] -= 0.25 * k
        img[3][edema] += 0.4 * k
        img[3][core | ring] += 0.5 * k
    img += rng.normal(0.0, 0.03, img.shape).astype(np.float32) * brain
    img = np.clip(img, 0, None) * brain
    return (img * 1000).astype(np.int16), seg


def write_demo(out_dir: str | os.PathLike, size: str = "demo", seed: int = 0) -> Path:
    """Write deterministic synthetic brain MRI cases in the BraTS 2020 layout.

    Brain-like ellipsoids with grey/white matter texture and ventricles, four sequences with different tissue
    contrasts, 0-2 tumours per case of varying size, shape, position and contrast (oedema bright on FLAIR/T2,
    enhancing rim on T1ce, darker on T1), labelled with BraTS values {1, 2, 4}; every case with index ``i % 6 == 1``
    has no tumour, and slices above/below the tumours have none either.

    Args:
        out_dir: destination folder (created).
        size: ``"demo"`` (24 cases of 96x96x40) or ``"tiny"`` (5 cases of 96x96x12, for tests).
        seed: generator seed; the same seed writes the same files.

    Returns:
        ``out_dir``.
    """
    if size not in _DEMO_SIZES:
        raise ConfigError(f"size={size!r}: expected one of {sorted(_DEMO_SIZES)}")
    n_cases, shape = _DEMO_SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for i in range(n_cases):
        rng = np.random.default_rng([seed, i])
        n_tumours = 0 if i % 6 == 1 else (2 if rng.uniform() < 0.25 else 1)
        img, seg = _demo_case(rng, shape, n_tumours)
        name = f"BraTS20_Training_{i + 1:03d}"
        for s, seq in enumerate(SEQUENCES):
            save_nifti(nib.Nifti1Image(img[s], affine), out / name / f"{name}_{seq}.nii.gz")
        save_nifti(nib.Nifti1Image(seg, affine), out / name / f"{name}_seg.nii.gz")
    return out


def check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    """Validate an in-plane size ``(H, W)``."""
    if isinstance(image_size, int) or len(image_size) != 2:
        raise ConfigError(f"image_size={image_size!r}: expected [H, W]")
    return check_positive_int("image_size", image_size[0]), check_positive_int("image_size", image_size[1])


def prepare_inputs(input_dir: str | os.PathLike, demo_dir: str | os.PathLike | None = None) -> str:
    """Inference inputs: write the demo cases when ``input_dir`` is the (empty) demo folder, then check them.

    Labels are optional here (``verify_dataset(require_label=False)``).

    Raises:
        DatasetError: listing every bad case.
    """
    from tlk_components.data.datasets import ensure_demo

    d = Path(input_dir)
    ensure_demo("brats_mri_box_localization", write_demo, d, demo_dir)
    verify_dataset(d, require_label=False).raise_if_bad()
    return str(d)
