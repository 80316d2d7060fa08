# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Dataset fingerprint and training plan for the CT bundles, written to ``plans.json``.

Fingerprint (per domain), after reorientation to RAS: voxel spacing and shape statistics, and intensity
statistics (mean, std, median, min, max, 0.5/99.5 percentiles) from every 10th voxel of the **foreground**
(label > 0) when labels may be read, else of the body (voxels above -500 HU). The target domain of a
domain-adaptation dataset is always fingerprinted label-free.

Plan (rules, nnU-Net v2.1 style, scaled to CPU):

* target spacing: ``target_spacing`` if given (TLK used a custom one, 1.62 x 1.62 x 3.22 mm), else the
  source median spacing; for an anisotropic axis (> 3x the finest) the 10th percentile is used instead.
* patch size: the median source shape resampled to the target spacing, each axis rounded down to a multiple of
  ``divisor`` (2^pooling steps), then the largest axis is shrunk by ``divisor`` until the patch holds at most
  ``max_patch_voxels`` voxels.
* batch size: ``max(min_batch, min(memory budget // patch voxels, 5 % of the dataset's voxels // patch voxels))``.
* normalisation: clip to the source foreground [p0.5, p99.5], z-score with its mean/std, for both domains.

MONAI's auto3dseg ``DataAnalyzer`` computes similar statistics but needs a datalist file, runs each case through
a transform chain and writes YAML with many unused fields; the few numbers needed here are computed directly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tlk_components.data.nifti_checks import load_nifti
from tlk_components.data.transforms import BODY_HU
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import atomic_write_json
from tlk_components.utils.validation import check_positive_int

__all__ = [
    "ensure_datalist_plans",
    "ensure_plans",
    "fingerprint_domain",
    "intensity_stats",
    "load_plans",
    "make_plan",
    "plan",
    "plan_datalist",
]


def intensity_stats(values: np.ndarray) -> dict[str, float]:
    """Mean, std, median, min, max, 0.5th and 99.5th percentiles of a 1-D sample.

    Raises:
        DatasetError: empty sample (no foreground).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise DatasetError("no foreground voxels to compute intensity statistics from; check the labels")
    p005, p50, p995 = np.percentile(v, [0.5, 50.0, 99.5])
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(p50),
        "min": float(v.min()),
        "max": float(v.max()),
        "percentile_00_5": float(p005),
        "percentile_99_5": float(p995),
    }


def fingerprint_domain(datalist: Sequence[dict[str, str]], use_labels: bool = True, stride: int = 10) -> dict:
    """Spacing, shape and intensity fingerprint of one domain.

    Args:
        datalist: ``[{"image": path, "label": path}, ...]``; ``label`` is read only when ``use_labels``.
        use_labels: foreground = label > 0 (True) or body = image > -500 HU (False, label-free).
        stride: keep every ``stride``-th selected voxel (nnU-Net uses 10), >= 1.

    Returns:
        ``{"n_cases", "spacing": {"median", "p10", "min", "max"}, "shape": {"median"}, "intensity": {...},
        "intensity_region": "foreground" | "body"}``; spacings and shapes are in RAS axis order (x, y, z). With
        labels also ``"body_label_shares"``: label value (as text) -> its share of the body voxels (image > -500
        HU) over all cases, the class-size prior of random patches drawn from body-cropped volumes.

    Raises:
        DatasetError: empty datalist, unreadable files, or a label missing when ``use_labels``.
    """
    stride = check_positive_int("stride", stride)
    if not datalist:
        raise DatasetError("fingerprint: the datalist is empty; expected at least one case")
    spacings, shapes, samples = [], [], []
    label_voxels: dict[int, int] = {}
    body_voxels = 0
    for item in datalist:
        try:
            img, data = load_nifti(item["image"])
        except ValueError as e:
            raise DatasetError(f"fingerprint: {e}") from None
        ras = nib.as_closest_canonical(img)
        spacings.append(np.asarray(ras.header.get_zooms()[:3], dtype=float))
        shapes.append(np.asarray(ras.shape[:3], dtype=float))
        if use_labels:
            if not item.get("label"):
                raise DatasetError(f"fingerprint: {item['image']} has no label; foreground statistics need labels")
            try:
                _, lbl = load_nifti(item["label"])
            except ValueError as e:
                raise DatasetError(f"fingerprint: {e}") from None
            mask = lbl > 0
            body = data > BODY_HU
            counts = np.bincount(np.asarray(lbl[body], dtype=np.int64).ravel())
            for value, n in enumerate(counts):
                if n:
                    label_voxels[value] = label_voxels.get(value, 0) + int(n)
            body_voxels += int(body.sum())
        else:
            mask = data > BODY_HU
        samples.append(np.asarray(data, dtype=np.float32)[mask][::stride])
    sp = np.stack(spacings)
    return {
        "n_cases": len(datalist),
        "spacing": {
            "median": np.round(np.median(sp, axis=0), 4).tolist(),
            "p10": np.round(np.percentile(sp, 10, axis=0), 4).tolist(),
            "min": np.round(sp.min(axis=0), 4).tolist(),
            "max": np.round(sp.max(axis=0), 4).tolist(),
        },
        "shape": {"median": np.median(np.stack(shapes), axis=0).tolist()},
        "intensity": intensity_stats(np.concatenate(samples)),
        "intensity_region": "foreground" if use_labels else "body",
        **(
            {"body_label_shares": {str(v): n / max(body_voxels, 1) for v, n in sorted(label_voxels.items())}}
            if use_labels
            else {}
        ),
    }


def make_plan(
    source: dict,
    target: dict | None = None,
    target_spacing: Sequence[float] | None = None,
    divisor: int = 16,
    max_patch_voxels: int = 96 * 96 * 64,
    memory_voxels: int = 2 * 96 * 96 * 64,
    min_batch: int = 2,
) -> dict[str, Any]:
    """Plan from fingerprints (see the module docstring for the rules).

    Args:
        source: fingerprint of the labelled (source) domain.
        target: fingerprint of the target domain, recorded for reference (its statistics are not used).
        target_spacing: (x, y, z) mm in RAS order; None = the rule above.
        divisor: every patch axis is a multiple of it (2^number of poolings), >= 1. Default 16.
        max_patch_voxels: upper bound of a patch's voxel count, >= divisor^3. Default 96*96*64.
        memory_voxels: voxels of one batch that fit in memory, >= max_patch_voxels. Default 2*96*96*64.
        min_batch: smallest batch size, >= 1. Default 2.

    Returns:
        the plan dict (keys ``target_spacing``, ``patch_size``, ``batch_size``, ``normalization``,
        ``fingerprint``, ``rules``).
    """
    divisor = check_positive_int("divisor", divisor)
    max_patch_voxels = check_positive_int("max_patch_voxels", max_patch_voxels, minimum=divisor**3)
    memory_voxels = check_positive_int("memory_voxels", memory_voxels, minimum=max_patch_voxels)
    min_batch = check_positive_int("min_batch", min_batch)
    med = np.asarray(source["spacing"]["median"], dtype=float)
    if target_spacing is not None:
        spacing = np.asarray([float(s) for s in target_spacing])
        if spacing.shape != (3,) or (spacing <= 0).any():
            raise ConfigError(f"target_spacing={list(target_spacing)}: expected three spacings > 0 mm (x, y, z)")
        spacing_rule = "given"
    else:
        spacing = med.copy()
        aniso = spacing > 3 * spacing.min()
        spacing[aniso] = np.asarray(source["spacing"]["p10"], dtype=float)[aniso]
        spacing_rule = "source median (10th percentile on axes > 3x the finest)"
    shape = np.asarray(source["shape"]["median"], dtype=float) * med / spacing
    patch = np.maximum(divisor, np.floor(shape / divisor) * divisor).astype(int)
    while int(np.prod(patch)) > max_patch_voxels and patch.max() > divisor:
        patch[int(np.argmax(patch))] -= divisor
    n_voxels = int(np.prod(patch))
    dataset_voxels = float(np.prod(shape)) * int(source["n_cases"])
    batch = max(min_batch, min(memory_voxels // n_voxels, int(0.05 * dataset_voxels // n_voxels)))
    inten = source["intensity"]
    return {
        "target_spacing": [round(float(s), 4) for s in spacing],
        "patch_size": [int(p) for p in patch],
        "batch_size": int(batch),
        "normalization": {
            "scheme": "CT: clip to source foreground [p0.5, p99.5], then z-score with its mean/std (both domains)",
            "clip_low": inten["percentile_00_5"],
            "clip_high": inten["percentile_99_5"],
            "mean": inten["mean"],
            "std": inten["std"],
        },
        "median_resampled_shape": [round(float(s), 1) for s in shape],
        "fingerprint": {"source": source, **({"target": target} if target is not None else {})},
        "rules": {
            "spacing": spacing_rule,
            "divisor": divisor,
            "max_patch_voxels": max_patch_voxels,
            "memory_voxels": memory_voxels,
            "min_batch": min_batch,
        },
    }


def load_plans(plans_file: str | os.PathLike) -> dict[str, Any]:
    """Read a plans.json written by :func:`plan`.

    Raises:
        ConfigError: missing or unreadable file, or missing keys.
    """
    import json

    path = Path(plans_file)
    if not path.is_file():
        raise ConfigError(
            f"plans file {path} not found: training writes it next to the weights (ckpt_dir); train first, copy the "
            "plans.json that came with the weights into that folder, or pass --patch_size/--batch_size explicitly"
        )
    try:
        plans = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}); delete it and rerun `plan`") from None
    missing = [k for k in ("target_spacing", "patch_size", "batch_size", "normalization") if k not in plans]
    if missing:
        raise ConfigError(f"{path}: missing keys {missing}; delete it and rerun `python -m tlk_components plan`")
    return plans


def _domain_lists(dataset_dir: Path, source_dir: str | None, target_dir: str | None) -> tuple[list, list | None]:
    """The cases :func:`plan` fingerprints: the source's (KiTS19: its ``train`` split, else all) and, when the
    target is a folder of its own (the demo's ``kits19/`` or ``target_dir``), the target's images."""
    from tlk_components.data.kidney import resolve_layout

    layout = resolve_layout(dataset_dir, source_dir, target_dir)
    source_list = layout.source_datalist("train" if layout.source_kind == "kits19" else "all")
    if not layout.target_given:
        return source_list, None
    split = "train" if layout.target_kind == "kits19" else "all"
    return source_list, layout.target_datalist(split, labels=False)


def plan(
    dataset_dir: str,
    out: str | None = None,
    source_dir: str | None = None,
    target_dir: str | None = None,
    target_spacing: Sequence[float] | None = None,
    divisor: int = 16,
    max_patch_voxels: int = 96 * 96 * 64,
    memory_voxels: int = 2 * 96 * 96 * 64,
) -> str:
    """Fingerprint the dataset and write ``plans.json`` (atomically).

    The domains are found by :func:`tlk_components.data.kidney.resolve_layout` (the demo's ``amos22/`` and
    ``kits19/``, else ``dataset_dir`` as the source; ``source_dir`` / ``target_dir`` replace them); the target, when
    there is one, is fingerprinted without reading labels.

    Args:
        dataset_dir: dataset folder.
        out: plans.json path; default ``dataset_dir/plans.json``.
        source_dir: labelled source folder (overrides the demo layout).
        target_dir: unlabelled target folder.
        target_spacing: (x, y, z) mm, e.g. ``[1.62, 1.62, 3.22]``; default: the rule of :func:`make_plan`.
        divisor: patch axes are multiples of it. Default 16.
        max_patch_voxels: patch voxel budget. Default 96*96*64.
        memory_voxels: voxels of one training batch (batch size x patch voxels) that fit in memory and time.
            Default 2*96*96*64.

    Returns:
        the path written.
    """
    base = Path(dataset_dir)
    if not base.is_dir():
        raise DatasetError(f"dataset_dir {base} does not exist; pass the folder that holds the data")
    source_list, target_list = _domain_lists(base, source_dir, target_dir)
    path = Path(out) if out else base / "plans.json"
    return plan_datalist(
        source_list,
        path,
        target_datalist=target_list,
        target_spacing=target_spacing,
        divisor=divisor,
        max_patch_voxels=max_patch_voxels,
        memory_voxels=memory_voxels,
    )


def plan_datalist(
    datalist: Sequence[dict[str, str]],
    out: str | os.PathLike,
    target_datalist: Sequence[dict[str, str]] | None = None,
    target_spacing: Sequence[float] | None = None,
    divisor: int = 16,
    max_patch_voxels: int = 96 * 96 * 64,
    memory_voxels: int = 2 * 96 * 96 * 64,
) -> str:
    """Fingerprint labelled cases (and, label-free, a target domain's) and write the plan to ``out`` (atomically).

    The one writer of ``plans.json`` (:func:`plan` calls it with the kidney domains; the abdomen bundle with its
    training cases).

    Args:
        datalist: labelled cases, ``{"image": path, "label": path}`` each (at least one).
        out: plans.json path.
        target_datalist: images of a target domain (labels never read), or None.
        target_spacing, divisor, max_patch_voxels, memory_voxels: the rules of :func:`make_plan`.

    Returns:
        ``out`` as a string.

    Raises:
        DatasetError: an empty datalist or an unreadable case (from :func:`fingerprint_domain`).
        ConfigError: an invalid rule argument.
    """
    if not datalist:
        raise DatasetError(f"no labelled cases to plan {out} from; check dataset_dir and its layout")
    source_fp = fingerprint_domain(datalist, use_labels=True)
    target_fp = fingerprint_domain(target_datalist, use_labels=False) if target_datalist else None
    plans = make_plan(
        source_fp,
        target_fp,
        target_spacing,
        divisor=divisor,
        max_patch_voxels=max_patch_voxels,
        memory_voxels=memory_voxels,
    )
    atomic_write_json(Path(out), plans)
    return str(out)


def ensure_datalist_plans(plans_file: str | os.PathLike, datalist: Sequence[dict[str, str]], **kwargs: Any) -> str:
    """Return ``plans_file``, writing it with :func:`plan_datalist` (``**kwargs``) first when it does not exist.

    For a config's ``initialize``: a plan already written (trained with, or shipped in a bundle's ``models/``) is
    kept; delete it to re-plan.
    """
    path = Path(plans_file)
    if not path.is_file():
        plan_datalist(datalist, path, **kwargs)
    return str(path)


def ensure_plans(dataset_dir: str | os.PathLike, plans_file: str | os.PathLike, **kwargs: Any) -> str:
    """Return ``plans_file``, writing it with :func:`plan` first when it does not exist (for config one-liners)."""
    path = Path(plans_file)
    if not path.is_file():
        plan(str(dataset_dir), out=str(path), **kwargs)
    return str(path)
