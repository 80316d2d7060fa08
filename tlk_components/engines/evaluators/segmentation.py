# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Per-organ, per-case evaluation of multi-organ segmentations: Dice and 95% Hausdorff distance.

Metrics (MONAI's :func:`monai.metrics.compute_dice` and :func:`monai.metrics.compute_hausdorff_distance`, organs
only, background excluded), per case and organ ``c``:

* ``Dice_c = 2 |P_c ∩ G_c| / (|P_c| + |G_c|)``;
* ``HD95_c``: the 95th percentile of the symmetric surface distances between ``P_c`` and ``G_c``, in mm (the
  voxel spacing of the label).

Conventions for organs missing from a case: an organ absent from the label (``G_c`` empty) gets NaN for both metrics
and is left out of every mean; an organ in the label but not predicted gets Dice 0 and HD95 equal to the
volume's diagonal in mm (the largest distance possible in the image, instead of MONAI's ``inf``, so means stay
finite). ``mean_dice`` of a case is the mean over its organs; the dataset means are the means over cases of the
per-organ values (NaNs skipped).

**Geometry.** Metrics are computed in the original geometry of each case, not on the resampled training grid:
:func:`original_grid_postprocessing` inverts the preprocessing on the predicted probabilities (MONAI ``Invertd``:
back to the input's orientation, spacing and shape, bilinear, then argmax — the same steps as the NIfTI that
inference writes) and compares them with the label file as stored (:class:`LoadOriginalLabeld`), so Dice counts the
original voxels and HD95 is in mm of the original spacing.

Outputs (all written atomically, on rank 0): ``<output_dir>/per_case_metrics.csv`` (one row per case: ``case``,
``dice_<organ>``…, ``mean_dice``, ``hd95_<organ>``…, ``mean_hd95``), the per-organ bar chart
``dice_per_organ.png`` (and ``hd95_per_organ.png``), and — through :class:`SegmentationReport.details` passed to
:class:`~tlk_components.engines.handlers.reporting.MetricsJsonWriter` — the per-organ and per-case values in
``metrics.json``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd, LoadImage, MapTransform

from tlk_components.engines.handlers.reporting import save_bar_chart, to_jsonable
from tlk_components.utils.distributed import is_rank0
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import atomic_write_json, atomic_write_text
from tlk_components.utils.validation import check_positive_int

__all__ = [
    "LoadOriginalLabeld",
    "SegmentationReport",
    "case_metrics",
    "check_label_files",
    "evaluate_folders",
    "original_grid_postprocessing",
    "summarise",
    "write_csv",
]


def _to_onehot(x: torch.Tensor, num_classes: int, what: str) -> torch.Tensor:
    """``(1, *spatial)`` label map or ``(C, *spatial)`` one-hot -> ``(C, *spatial)`` one-hot (float)."""
    x = torch.as_tensor(x).detach().cpu()
    if x.shape[0] == 1:
        labels = x[0].round().long()
        if labels.numel() and (int(labels.max()) >= num_classes or int(labels.min()) < 0):
            raise DatasetError(
                f"{what}: label values {sorted(torch.unique(labels).tolist())} outside 0..{num_classes - 1}; "
                f"the bundle is configured for {num_classes} classes (set --num_classes to match the data)"
            )
        return torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 0).float()
    if x.shape[0] != num_classes:
        raise ValueError(f"{what}: {x.shape[0]} channels, expected 1 (label map) or {num_classes} (one-hot)")
    return (x > 0.5).float()


def case_metrics(
    pred: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    hd95: bool = True,
) -> dict[str, np.ndarray]:
    """Dice and HD95 per organ (classes ``1 .. num_classes-1``) of one case.

    Args:
        pred: prediction, ``(1, *spatial)`` label map or ``(C, *spatial)`` one-hot.
        label: ground truth in the same form and grid.
        num_classes: ``C`` including background, >= 2.
        spacing: voxel size in mm per spatial axis; default 1.
        hd95: also compute the 95% Hausdorff distance (slower); default True.

    Returns:
        ``{"dice": (C-1,), "hd95": (C-1,)}`` float arrays (``hd95`` all NaN when not computed); see the module
        docstring for organs missing from the label or the prediction.

    Raises:
        ValueError: shapes differ.
    """
    num_classes = check_positive_int("num_classes", num_classes, minimum=2)
    p = _to_onehot(pred, num_classes, "prediction")[None]
    g = _to_onehot(label, num_classes, "label")[None]
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {tuple(p.shape[2:])} differs from label shape {tuple(g.shape[2:])}")
    present = g[0, 1:].flatten(1).any(1).numpy()
    predicted = p[0, 1:].flatten(1).any(1).numpy()
    dice = compute_dice(p, g, include_background=False, ignore_empty=True)[0].numpy().astype(float)
    dice[~present] = np.nan
    hd = np.full(num_classes - 1, np.nan)
    if hd95:
        sp = [1.0] * (p.ndim - 2) if spacing is None else [float(s) for s in spacing]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI warns on every empty mask; handled below
            hd = compute_hausdorff_distance(p, g, include_background=False, percentile=95, spacing=sp)[0].numpy()
        hd = hd.astype(float)
        diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape[2:], sp, strict=True))))
        hd[present & ~predicted] = diagonal
        hd[~present] = np.nan
    return {"dice": dice, "hd95": hd}


def _nanmean(values: Sequence[float] | np.ndarray) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def summarise(rows: Sequence[Mapping[str, Any]], organ_names: Sequence[str]) -> dict[str, Any]:
    """Dataset summary from per-case rows (as made by :class:`SegmentationReport`).

    Returns:
        ``{"mean_dice", "mean_hd95", "dice_per_organ": {organ: value}, "hd95_per_organ": {...}, "n_cases"}``;
        NaN where nothing was measured.
    """
    dice = {o: _nanmean([r[f"dice_{o}"] for r in rows]) for o in organ_names}
    hd = {o: _nanmean([r[f"hd95_{o}"] for r in rows]) for o in organ_names}
    return {
        "mean_dice": _nanmean([r["mean_dice"] for r in rows]),
        "mean_hd95": _nanmean([r["mean_hd95"] for r in rows]),
        "dice_per_organ": dice,
        "hd95_per_organ": hd,
        "n_cases": len(rows),
    }


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write per-case rows as CSV atomically (floats with 6 decimals; NaN written as ``nan``)."""
    if not rows:
        raise ValueError(f"{path}: no evaluated cases to write")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) and not math.isnan(v) else v) for k, v in r.items()})
    return atomic_write_text(path, buf.getvalue())


def _row(case: str, metrics: Mapping[str, np.ndarray], organ_names: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"case": case}
    row.update({f"dice_{o}": float(v) for o, v in zip(organ_names, metrics["dice"], strict=True)})
    row["mean_dice"] = _nanmean(metrics["dice"])
    row.update({f"hd95_{o}": float(v) for o, v in zip(organ_names, metrics["hd95"], strict=True)})
    row["mean_hd95"] = _nanmean(metrics["hd95"])
    return row


def _write_reports(
    rows: Sequence[Mapping[str, Any]], organ_names: Sequence[str], output_dir: Path, prefix: str
) -> None:
    write_csv(rows, output_dir / f"{prefix}per_case_metrics.csv")
    s = summarise(rows, organ_names)
    dice = [0.0 if math.isnan(v) else v for v in s["dice_per_organ"].values()]
    save_bar_chart(
        dice,
        list(organ_names),
        output_dir / f"{prefix}dice_per_organ.png",
        title=f"Dice per organ (mean over {len(rows)} cases; mean Dice {s['mean_dice']:.3f})",
        ylabel="Dice",
    )
    hd = [0.0 if math.isnan(v) else v for v in s["hd95_per_organ"].values()]
    if any(hd):
        save_bar_chart(
            hd,
            list(organ_names),
            output_dir / f"{prefix}hd95_per_organ.png",
            title=f"95% Hausdorff distance per organ (mm; mean over {len(rows)} cases)",
            ylabel="HD95 (mm)",
            ylim=None,
        )


def _case_name(item: Mapping[str, Any], key: str, index: int) -> str:
    meta = getattr(item.get(key), "meta", None) or {}
    name = meta.get("filename_or_obj")
    if isinstance(name, list | tuple):
        name = name[0] if name else None
    if not name:
        return f"case_{index:04d}"
    base = os.path.basename(str(name))
    for ext in (".nii.gz", ".nii", ".mha", ".nrrd"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


class SegmentationReport:
    """Ignite handler: per-case, per-organ Dice (and HD95) of an evaluator; CSV, bar chart and metrics.

    Attach it to a MONAI ``SupervisedEvaluator`` whose postprocessing leaves ``pred`` and ``label`` as label maps
    or one-hot tensors. At each epoch end it puts ``<prefix>mean_dice``, ``<prefix>mean_hd95_mm`` and
    ``<prefix>dice_<organ>`` into ``engine.state.metrics`` (so ``StatsHandler`` and ``TensorBoardStatsHandler`` log
    Dice per organ), and writes ``per_case_metrics.csv`` and ``dice_per_organ.png`` into ``output_dir``.

    Args:
        output_dir: folder for the CSV and PNGs (created).
        organ_names: the ``C-1`` organ names (classes ``1 .. C-1``), e.g. ``["spleen", "right_kidney", ...]``.
        pred_key: key of the prediction in the evaluator output; default ``"pred"``.
        label_key: key of the label; default ``"label"``.
        hd95: compute the 95% Hausdorff distance too (slower; off for validation during training); default True.
        prefix: prefix of the metric names and files (``"val_"`` during training); default ``""``.
        write_files: write CSV/PNG at the end of each run; default True.
        set_means: put ``<prefix>mean_dice`` (and ``<prefix>mean_hd95_mm``) into the metrics; False when the evaluator
            already has MONAI's ``MeanDice`` under that name as its key metric. Default True.

    Raises:
        ConfigError: fewer than one organ name.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        organ_names: Sequence[str],
        pred_key: str = "pred",
        label_key: str = "label",
        hd95: bool = True,
        prefix: str = "",
        write_files: bool = True,
        set_means: bool = True,
    ) -> None:
        if isinstance(organ_names, str) or len(organ_names) < 1:
            raise ConfigError(f"organ_names={organ_names!r}: expected a list of at least one organ name")
        self.output_dir = Path(output_dir)
        self.organ_names = [str(o) for o in organ_names]
        self.num_classes = len(self.organ_names) + 1
        self.pred_key = pred_key
        self.label_key = label_key
        self.hd95 = bool(hd95)
        self.prefix = prefix
        self.write_files = bool(write_files)
        self.set_means = bool(set_means)
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._summarise)

    def _reset(self, _engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            pred, label = item[self.pred_key], item[self.label_key]
            spacing = getattr(label, "pixdim", None)
            spacing = None if spacing is None else [float(s) for s in torch.as_tensor(spacing).flatten()]
            case = _case_name(item, self.label_key, len(self.rows))
            m = case_metrics(pred, label, self.num_classes, spacing=spacing, hd95=self.hd95)
            self.rows.append(_row(case, m, self.organ_names))

    def _summarise(self, engine: Engine) -> None:
        if not self.rows:
            return
        s = summarise(self.rows, self.organ_names)
        if self.set_means:
            engine.state.metrics[f"{self.prefix}mean_dice"] = s["mean_dice"]
        if self.hd95 and self.set_means:
            engine.state.metrics[f"{self.prefix}mean_hd95_mm"] = s["mean_hd95"]
        for organ, value in s["dice_per_organ"].items():
            engine.state.metrics[f"{self.prefix}dice_{organ}"] = value
        if self.write_files and is_rank0():
            _write_reports(self.rows, self.organ_names, self.output_dir, self.prefix)

    def details(self, _engine: Engine | None = None) -> dict[str, Any]:
        """Per-organ means and per-case rows, for ``MetricsJsonWriter(extra=...)``."""
        s = summarise(self.rows, self.organ_names)
        return {
            "dice_per_organ": s["dice_per_organ"],
            "hd95_per_organ_mm": s["hd95_per_organ"],
            "n_cases": s["n_cases"],
            "per_case": self.rows,
        }


def check_label_files(
    datalist: Sequence[Mapping[str, Any]], label_key: str = "label", image_key: str = "image"
) -> list:
    """Check that every evaluation case names an existing label file; return the datalist unchanged.

    Raises:
        DatasetError: listing every case whose label is missing (by image and expected label path).
    """
    problems = []
    for i, item in enumerate(datalist):
        case = os.path.basename(str(item.get(image_key, f"case {i}")))
        label = item.get(label_key)
        if not label:
            problems.append(f"{case}: no '{label_key}' entry; evaluation needs a label for every case")
        elif not Path(label).is_file():
            problems.append(f"{case}: label file {label} not found")
    if problems:
        raise DatasetError(
            f"{len(problems)} evaluation case(s) without a label file (put the labels in place, or evaluate only "
            "cases that have one)",
            problems,
        )
    return list(datalist)


def _strip_nii(name: str) -> str:
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def evaluate_folders(
    pred_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    organ_names: Sequence[str],
    pred_suffix: str = "_seg",
    hd95: bool = True,
) -> dict[str, Any]:
    """Evaluate saved predictions against labels (BTCV names: ``img0001_seg.nii.gz`` vs ``label0001.nii.gz``).

    A prediction ``<stem><pred_suffix>.nii.gz`` is matched to ``labels_dir/<stem>.nii.gz``, where a leading ``img``
    of the stem becomes ``label`` (BTCV) — otherwise the same stem is used. Every prediction must have its label.

    Args:
        pred_dir: folder of predicted label maps (NIfTI).
        labels_dir: folder of ground-truth label maps.
        output_dir: where ``per_case_metrics.csv``, ``metrics.json`` and the PNG charts go.
        organ_names: the ``C-1`` organ names.
        pred_suffix: suffix of the prediction stems; default ``"_seg"`` (the inference output names).
        hd95: also compute the 95% Hausdorff distance; default True.

    Returns:
        The summary written to ``metrics.json``.

    Raises:
        DatasetError: no predictions, a prediction without a label file (each named), or shapes that differ.
    """
    pred_dir, labels_dir, output_dir = Path(pred_dir), Path(labels_dir), Path(output_dir)
    preds = sorted(p for p in pred_dir.glob("*.nii*") if _strip_nii(p.name).endswith(pred_suffix))
    if not preds:
        raise DatasetError(f"{pred_dir}: no predictions named '*{pred_suffix}.nii.gz'; run inference.json first")
    pairs, missing = [], []
    for p in preds:
        stem = _strip_nii(p.name)[: len(_strip_nii(p.name)) - len(pred_suffix)]
        label_stem = "label" + stem[3:] if stem.startswith("img") else stem
        candidates = [labels_dir / f"{label_stem}.nii.gz", labels_dir / f"{label_stem}.nii"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            missing.append(f"{stem}: label file {candidates[0]} not found")
        else:
            pairs.append((stem, p, found))
    if missing:
        raise DatasetError(f"{len(missing)} evaluated case(s) have no label file in {labels_dir}", missing)
    rows = []
    for stem, p, lab in pairs:
        pimg, limg = nib.load(str(p)), nib.load(str(lab))
        if pimg.shape != limg.shape:
            raise DatasetError(f"{stem}: prediction shape {pimg.shape} differs from label shape {limg.shape} ({lab})")
        pred = torch.as_tensor(np.asarray(pimg.dataobj))[None]
        label = torch.as_tensor(np.asarray(limg.dataobj))[None]
        m = case_metrics(pred, label, len(organ_names) + 1, spacing=limg.header.get_zooms()[:3], hd95=hd95)
        rows.append(_row(stem, m, organ_names))
    _write_reports(rows, organ_names, output_dir, "")
    s = summarise(rows, organ_names)
    out = {
        "mean_dice": s["mean_dice"],
        "mean_hd95_mm": s["mean_hd95"],
        "dice_per_organ": s["dice_per_organ"],
        "hd95_per_organ_mm": s["hd95_per_organ"],
        "n_cases": len(rows),
        "per_case": rows,
    }
    atomic_write_json(output_dir / "metrics.json", to_jsonable(out))
    return out


class LoadOriginalLabeld(MapTransform):
    """Replace a (resampled) label by the label file as stored: its own voxel grid, orientation and spacing.

    The file is the one named in ``d[key].meta["filename_or_obj"]`` (set by ``LoadImaged``). The label is loaded
    channel-first and not reoriented, so it lies on the grid of its image file; after ``Invertd`` the prediction
    lies there too.

    Args:
        keys: label key(s).
        ref_key: key whose spatial shape the label must have (the inverted prediction); None = no check.
            Default ``"pred"``.
        allow_missing_keys: as in MONAI.

    Raises:
        DatasetError: the label has no file name in its metadata, or its shape differs from ``ref_key``'s (the
            label file does not lie on its image's grid).
    """

    def __init__(self, keys: KeysCollection, ref_key: str | None = "pred", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.loader = LoadImage(image_only=True, ensure_channel_first=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", None) or {}
            src = meta.get("filename_or_obj")
            if isinstance(src, list | tuple):
                src = src[0] if src else None
            if not src:
                raise DatasetError(f"'{key}' has no file name in its metadata; load it with LoadImaged first")
            label = self.loader(str(src))
            ref = d.get(self.ref_key) if self.ref_key else None
            if ref is not None and tuple(ref.shape[1:]) != tuple(label.shape[1:]):
                raise DatasetError(
                    f"{src}: label shape {tuple(label.shape[1:])} differs from the prediction inverted to its image's "
                    f"grid {tuple(ref.shape[1:])}; the label must lie on its image's voxel grid (same shape and affine)"
                )
            d[key] = label
        return d


def original_grid_postprocessing(
    preprocessing: Compose,
    num_classes: int,
    pred_key: str = "pred",
    label_key: str = "label",
    image_key: str = "image",
) -> Compose:
    """Evaluator post-processing that puts prediction and label into the original geometry of the case.

    softmax -> ``Invertd`` of the preprocessing on the probabilities (bilinear; back to the image file's
    orientation, spacing and shape) -> argmax, one-hot -> :class:`LoadOriginalLabeld` (the label as stored) -> one-hot.
    :class:`SegmentationReport` then measures Dice on the original voxels and HD95 with the original spacing.

    Args:
        preprocessing: the invertible preprocessing that produced ``image_key`` (e.g. ``@validate#preprocessing``).
        num_classes: classes including background, >= 2.
        pred_key: prediction (logits) key. Default ``"pred"``.
        label_key: label key (its metadata names the label file). Default ``"label"``.
        image_key: image key whose applied operations are inverted. Default ``"image"``.

    Returns:
        A MONAI ``Compose`` for ``SupervisedEvaluator(postprocessing=...)``.
    """
    n = check_positive_int("num_classes", num_classes, minimum=2)
    return Compose(
        [
            Activationsd(pred_key, softmax=True),
            Invertd(pred_key, transform=preprocessing, orig_keys=image_key, nearest_interp=False, to_tensor=True),
            AsDiscreted(pred_key, argmax=True, to_onehot=n),
            LoadOriginalLabeld(label_key, ref_key=pred_key),
            AsDiscreted(label_key, to_onehot=n),
        ]
    )
