# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Integrity checks for image/label NIfTI pairs, and atomic NIfTI writing.

Used by every CT data module before any compute. Each check adds one line per problem to a
:class:`~tlk_components.data.datasets.DatasetReport` and goes on, so the user sees every bad case at once:

* a missing label for an image (or a missing image),
* an unreadable or truncated ``.nii.gz``,
* an image that is not 3-D (2-D slices, a single slice, 4-D series),
* an implausible voxel spacing (zero, negative, or over :data:`MAX_SPACING_MM` mm on an axis),
* image/label geometry that does not match (shape, spacing, affine),
* label values outside the expected set, or non-integer labels,
* NaN or Inf voxels (:func:`check_finite`, shared by every NIfTI data module),
* an empty folder.

:func:`check_volume_header` checks dimensionality and spacing from the header alone (no voxel read), for
inference inputs.

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

from tlk_components.data.datasets import DatasetReport
from tlk_components.utils.io import atomic_write_bytes

__all__ = [
    "MAX_SPACING_MM",
    "CasePair",
    "check_finite",
    "check_folder_not_empty",
    "check_pairs",
    "check_volume_header",
    "count_nonfinite",
    "load_nifti",
    "save_nifti",
    "spacing_problem",
    "volume_shape_problem",
]

#: Largest plausible voxel spacing (mm) of a CT or MR volume on any axis; thick-slice CT is at most ~10 mm.
MAX_SPACING_MM = 20.0


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


def count_nonfinite(data: np.ndarray) -> int:
    """Number of NaN or Inf values of ``data`` (0 for integer arrays, which cannot hold them)."""
    data = np.asarray(data)
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating)):
        return 0
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def check_finite(
    data: np.ndarray, report: DatasetReport, case: str, path: str | os.PathLike, what: str = "image"
) -> int:
    """Record a problem when an already-loaded voxel array holds NaN or Inf values.

    Shared by every NIfTI data module (kidney, BTCV, BraTS): call it on the array the checker has loaded
    anyway, so no volume is read twice.

    Args:
        data: the voxel array (e.g. from :func:`load_nifti`).
        report: where the problem goes.
        case: case id the problem is filed under.
        path: the file the array came from (its name appears in the message).
        what: ``"image"``, ``"label"`` or a sequence name (``"t1ce"``), used in the message.

    Returns:
        The number of non-finite voxels (0 when the array is clean).
    """
    n_bad = count_nonfinite(data)
    if n_bad:
        fix = (
            "expected integer class ids; re-export the segmentation"
            if what == "label"
            else "expected finite intensities; re-export the volume or replace them (e.g. with the background value)"
        )
        report.add(case, f"{what} {Path(path).name} has {n_bad} NaN/Inf voxel(s) of {data.size}; {fix}")
    return n_bad


def volume_shape_problem(
    shape: Sequence[int], expected_ndim: int = 3, allow_singleton_channel: bool = False
) -> str | None:
    """Why an array of ``shape`` is not a ``expected_ndim``-D volume, or None when it is one.

    Args:
        shape: the NIfTI array shape.
        expected_ndim: spatial dimensions the model needs (3 for the 3-D networks).
        allow_singleton_channel: accept extra trailing dimensions of size 1 (``X x Y x Z x 1``, which MONAI's
            ``EnsureChannelFirst`` turns into one channel); training checkers keep this False because the label
            must have the image's exact shape.

    Returns:
        A message (shape found, dimensionality expected, fix) or None.
    """
    shape = tuple(int(v) for v in shape)
    extra = shape[expected_ndim:]
    if len(shape) < expected_ndim:
        return (
            f"is {len(shape)}-D with shape {shape}; expected a {expected_ndim}-D volume (a 2-D slice cannot be fed "
            "to a 3-D model: stack the slices of the case into one volume)"
        )
    if extra and not (allow_singleton_channel and all(v == 1 for v in extra)):
        return (
            f"is {len(shape)}-D with shape {shape}; expected a {expected_ndim}-D volume with one channel "
            "(split a 4-D series into one 3-D file per sequence/time point, or squeeze a trailing dimension of 1)"
        )
    if any(v < 2 for v in shape[:expected_ndim]):
        return (
            f"has shape {shape}, a single slice; expected a {expected_ndim}-D volume with at least 2 voxels on each "
            "axis (stack the slices of the case into one volume)"
        )
    return None


def spacing_problem(spacing: Sequence[float], max_spacing_mm: float = MAX_SPACING_MM) -> str | None:
    """Why a voxel spacing (mm, one value per spatial axis) is implausible for CT/MR, or None.

    Every axis must lie in ``(0, max_spacing_mm]``; a larger value usually means the header stores cm or a wrong
    slice thickness, which would resample the volume to nonsense.
    """
    values = [float(v) for v in spacing]
    bad = [v for v in values if not np.isfinite(v) or v <= 0 or v > max_spacing_mm]
    if not bad:
        return None
    shown = tuple(round(v, 4) for v in values)
    return (
        f"has voxel spacing {shown} mm; expected every axis in (0, {max_spacing_mm:g}] mm for a CT/MR volume "
        "(fix the header's pixdim/affine: it may store cm or a wrong slice thickness)"
    )


def check_volume_header(
    path: str | os.PathLike,
    expected_ndim: int = 3,
    allow_singleton_channel: bool = True,
    max_spacing_mm: float = MAX_SPACING_MM,
) -> str | None:
    """Check one NIfTI file's dimensionality and voxel spacing from its header only (no voxel data is read).

    Args:
        path: the file.
        expected_ndim: spatial dimensions the model needs.
        allow_singleton_channel: accept ``X x Y x Z x 1`` (see :func:`volume_shape_problem`).
        max_spacing_mm: upper bound of a plausible spacing.

    Returns:
        ``"<file name> <problem>"`` or None when the file is a plausible volume.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        return f"{path.name} is not a readable NIfTI file ({type(e).__name__}: {first})"
    problem = volume_shape_problem(img.shape, expected_ndim, allow_singleton_channel)
    if problem is None:
        problem = spacing_problem(img.header.get_zooms()[:expected_ndim], max_spacing_mm)
    return f"{path.name} {problem}" if problem else None


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
    max_spacing_mm: float = MAX_SPACING_MM,
) -> DatasetReport:
    """Check every image/label pair and record every problem in ``report``.

    Args:
        pairs: the cases to check.
        report: collects problems; its ``n_cases`` is increased by ``len(pairs)``.
        expected_labels: allowed label values (e.g. ``range(14)``); None accepts any non-negative integer.
        require_labels: when True, a pair without a label (``label=None`` or missing file) is a problem.
        spacing_rtol: relative tolerance for image vs label voxel spacing.
        affine_atol: absolute tolerance (mm) for image vs label affine entries.
        max_spacing_mm: largest plausible voxel spacing (mm) on any axis; a larger (or non-positive) spacing
            is a problem. Default :data:`MAX_SPACING_MM` (20 mm).

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
            shape_problem = volume_shape_problem(data.shape)
            if shape_problem is not None:
                report.add(pair.case, f"image {pair.image.name} {shape_problem}")
            else:
                img_geom = _geometry(img)
                spacing_bad = spacing_problem(img_geom[1], max_spacing_mm)
                if spacing_bad is not None:
                    report.add(pair.case, f"image {pair.image.name} {spacing_bad}")
            check_finite(data, report, pair.case, pair.image, "image")
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
        label_shape_problem = volume_shape_problem(ldata.shape)
        if label_shape_problem is not None:
            report.add(pair.case, f"label {pair.label.name} {label_shape_problem}")
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
            if check_finite(ldata, report, pair.case, pair.label, "label"):
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
