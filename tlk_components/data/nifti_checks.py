# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Integrity checks for image/label NIfTI pairs, and atomic NIfTI writing.

Used by every CT data module before any compute. Each check adds one line per problem to a
:class:`~tlk_components.zoo.datasets.DatasetReport` and goes on, so the user sees every bad case at once:

* a missing label for an image (or a missing image),
* an unreadable or truncated ``.nii.gz``,
* an image that is not 3-D (2-D slices, 4-D series),
* image/label geometry that does not match (shape, spacing, affine),
* label values outside the expected set, or non-integer labels,
* NaN or Inf voxels,
* an empty folder.

Example:
    >>> report = DatasetReport("/data/btcv")
    >>> check_pairs([CasePair("img0001", img_path, lbl_path)], report, expected_labels=range(14))
    >>> report.raise_if_bad()
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from tlk_components.utils.io import atomic_write_bytes
from tlk_components.zoo.datasets import DatasetReport

__all__ = ["CasePair", "check_folder_not_empty", "check_pairs", "load_nifti", "save_nifti"]


@dataclass(frozen=True)
class CasePair:
    """One case: its id, image path and label path (``None`` for an unlabelled case)."""

    case: str
    image: Path
    label: Path | None = None


def save_nifti(img: nib.Nifti1Image, path: str | os.PathLike) -> Path:
    """Write ``img`` to ``path`` (``.nii`` or ``.nii.gz``) atomically; parent folders are created.

    Args:
        img: a nibabel NIfTI-1 image.
        path: destination; a ``.gz`` suffix writes gzip-compressed bytes (level 1, fast).

    Returns:
        The path written.
    """
    path = Path(path)
    data = img.to_bytes()
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=1, mtime=0)
    return atomic_write_bytes(path, data)


def load_nifti(path: str | os.PathLike) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Load a NIfTI file and its voxel array, with a readable error for broken files.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        (image, data as a numpy array).

    Raises:
        ValueError: the file is missing, truncated, not gzip or not NIfTI; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path.name} not found (expected at {path})")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ValueError(
            f"{path.name} is not a readable NIfTI file ({type(e).__name__}: {first}); it may be truncated or "
            "corrupt - download or convert it again"
        ) from None
    return img, data


def check_folder_not_empty(folder: Path, pattern: str, report: DatasetReport, what: str) -> list[Path]:
    """Return ``sorted(folder.glob(pattern))``; report a missing or empty folder.

    Args:
        folder: folder to list.
        pattern: glob such as ``"*.nii.gz"``.
        report: where problems go.
        what: human name of the expected files (``"CT images"``).
    """
    if not folder.is_dir():
        report.add(folder.name or str(folder), f"folder {folder} does not exist; expected {what} ({pattern}) there")
        return []
    files = sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))
    if not files:
        report.add(folder.name, f"folder {folder} is empty; expected {what} matching {pattern}")
    return files


def _geometry(img: nib.Nifti1Image) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    affine = np.asarray(img.affine, dtype=float)
    return tuple(int(v) for v in img.shape), np.asarray(img.header.get_zooms()[:3], dtype=float), affine


def check_pairs(
    pairs: Sequence[CasePair],
    report: DatasetReport,
    expected_labels: Iterable[int] | None = None,
    require_labels: bool = True,
    spacing_rtol: float = 1e-3,
    affine_atol: float = 1e-2,
) -> DatasetReport:
    """Check every image/label pair and record every problem in ``report``.

    Args:
        pairs: the cases to check.
        report: collects problems; its ``n_cases`` is increased by ``len(pairs)``.
        expected_labels: allowed label values (e.g. ``range(14)``); None accepts any non-negative integer.
        require_labels: when True, a pair without a label (``label=None`` or missing file) is a problem.
        spacing_rtol: relative tolerance for image vs label voxel spacing.
        affine_atol: absolute tolerance (mm) for image vs label affine entries.

    Returns:
        ``report`` (for chaining).
    """
    allowed = None if expected_labels is None else {int(v) for v in expected_labels}
    report.n_cases += len(pairs)
    if not pairs:
        report.add(report.dataset_dir, "no cases found; expected image/label NIfTI pairs in the dataset's layout")
        return report
    for pair in pairs:
        img_geom = None
        try:
            img, data = load_nifti(pair.image)
        except ValueError as e:
            report.add(pair.case, f"image {e}")
        else:
            if data.ndim != 3:
                report.add(
                    pair.case,
                    f"image {pair.image.name} is {data.ndim}-D with shape {tuple(data.shape)}; expected a 3-D volume "
                    "(convert 2-D slice stacks to one volume; split or squeeze 4-D series)",
                )
            else:
                img_geom = _geometry(img)
            if np.issubdtype(data.dtype, np.floating):
                n_bad = int(np.count_nonzero(~np.isfinite(data)))
                if n_bad:
                    report.add(
                        pair.case,
                        f"image {pair.image.name} has {n_bad} NaN/Inf voxel(s); expected finite intensities "
                        "(re-export the volume or replace them, e.g. with the air value -1000)",
                    )
        if pair.label is None or not Path(pair.label).is_file():
            if require_labels:
                where = f" (expected {pair.label})" if pair.label is not None else ""
                report.add(pair.case, f"label missing{where}; add the segmentation or remove the image")
            continue
        try:
            lbl, ldata = load_nifti(pair.label)
        except ValueError as e:
            report.add(pair.case, f"label {e}")
            continue
        if ldata.ndim != 3:
            report.add(pair.case, f"label {pair.label.name} is {ldata.ndim}-D {tuple(ldata.shape)}; expected 3-D")
            continue
        lbl_geom = _geometry(lbl)
        if img_geom is not None:
            if img_geom[0] != lbl_geom[0]:
                report.add(
                    pair.case,
                    f"image shape {img_geom[0]} != label shape {lbl_geom[0]}; the segmentation must be on the "
                    "image's voxel grid (resample it with nearest-neighbour interpolation)",
                )
            elif not np.allclose(img_geom[1], lbl_geom[1], rtol=spacing_rtol):
                report.add(
                    pair.case,
                    f"image spacing {tuple(np.round(img_geom[1], 4))} != label spacing "
                    f"{tuple(np.round(lbl_geom[1], 4))}; write the label with the image's header",
                )
            elif not np.allclose(img_geom[2], lbl_geom[2], atol=affine_atol):
                report.add(
                    pair.case,
                    "image and label affines differ (origin or orientation); write the label with the image's "
                    f"affine\n      image {np.round(img_geom[2][:3], 3).tolist()}\n      label "
                    f"{np.round(lbl_geom[2][:3], 3).tolist()}",
                )
        if np.issubdtype(ldata.dtype, np.floating):
            if not np.all(np.isfinite(ldata)):
                report.add(pair.case, f"label {pair.label.name} has NaN/Inf voxels; expected integer class ids")
                continue
            if not np.all(ldata == np.round(ldata)):
                report.add(pair.case, f"label {pair.label.name} has non-integer values; expected integer class ids")
                continue
        values = {int(v) for v in np.unique(ldata)}
        bad = sorted(v for v in values if v < 0 or (allowed is not None and v not in allowed))
        if bad:
            expect = sorted(allowed) if allowed is not None else "non-negative integers"
            report.add(
                pair.case,
                f"label {pair.label.name} has unexpected value(s) {bad[:10]}; expected {expect} "
                "(check the label convention or the dataset.json 'labels')",
            )
    return report
