# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Box-detection metrics as ignite metrics: sensitivity, PPV, per-volume IoU statistics and COCO-style AP.

Every metric reads the output of :class:`~tlk_components.engines.evaluators.box.BoxEvaluator` (one volume per
iteration)::

    {"case": str,
     "pred": [{"boxes": [D, 4], "scores": [D], "labels": [D]} per slice],
     "gt":   [{"boxes": [G, 4], "labels": [G]} per slice]}

Boxes are MONAI ``StandardMode`` (see :mod:`tlk_components.boxes.params`).

* :class:`BoxSensitivity` / :class:`BoxPPV` — box level, per slice: a ground-truth box is found when a prediction
  (score > ``score_threshold``) overlaps it with IoU >= ``iou_threshold``; a prediction is a true positive when
  it overlaps some ground-truth box that much. No one-to-one assignment (two predictions on one tumour both count
  as true positives for PPV). jarvis-md's ``sigmoid_ce_sens/ppv`` measure anchor-level classification instead (and
  ignore their ``weights`` argument); the box-level definition is what a reader of a detection report expects.
* :class:`VolumeIoU` — the evaluation of the box-localization tutorial the bundle reproduces: for every predicted box, the highest IoU with the
  ground-truth boxes of its slice (0 if none); per volume the median, 25th and 75th percentile; reported as the
  median over volumes. Deliberate fix (``penalise_missed=True``, default): every ground-truth box that no
  prediction overlaps adds an IoU of 0 (the document's metric never penalises missed tumours unless a volume has
  no prediction at all). A volume without tumour and without prediction is correct and has no IoU: it is listed
  in the table and left out of the medians (the document would count it as 0).
* :class:`BoxAveragePrecision` — COCO-style AP at one IoU threshold over all slices, computed by MONAI's
  ``matching_batch`` + ``COCOMetric`` (101-point interpolation), with every prediction's score.

Counts are kept per process (validation runs the whole set on every rank; no cross-rank reduction).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou

from tlk_components.utils.io import atomic_write_text
from tlk_components.utils.validation import check_in_range, check_positive_int

__all__ = ["BoxAveragePrecision", "BoxPPV", "BoxSensitivity", "VolumeIoU", "iou_matrix", "volume_iou_values"]


def _identity(x: Any) -> Any:
    return x


def _np(x: Any, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if shape_tail:
        arr = arr.reshape(-1, *shape_tail)
    return arr


def iou_matrix(pred: Any, gt: Any) -> np.ndarray:
    """IoU ``[D, G]`` of predicted vs ground-truth boxes (MONAI ``box_iou``); empty-safe."""
    p, g = _np(pred, (4,)), _np(gt, (4,))
    if p.shape[0] == 0 or g.shape[0] == 0:
        return np.zeros((p.shape[0], g.shape[0]))
    return np.asarray(box_iou(p, g), dtype=np.float64)


def _kept(pred: Mapping[str, Any], score_threshold: float) -> np.ndarray:
    boxes = _np(pred["boxes"], (4,))
    scores = _np(pred["scores"]).reshape(-1)
    return boxes[scores > score_threshold]


def volume_iou_values(
    preds: Sequence[Mapping[str, Any]],
    gts: Sequence[Mapping[str, Any]],
    score_threshold: float = 0.5,
    penalise_missed: bool = True,
) -> list[float]:
    """IoU values of one volume (see :class:`VolumeIoU`); empty when there is nothing to score."""
    values: list[float] = []
    for pred, gt in zip(preds, gts, strict=True):
        m = iou_matrix(_kept(pred, score_threshold), gt["boxes"])
        if m.shape[0]:
            values += (m.max(axis=1) if m.shape[1] else np.zeros(m.shape[0])).tolist()
        if penalise_missed and m.shape[1]:
            missed = int((m.max(axis=0) <= 0).sum()) if m.shape[0] else m.shape[1]
            values += [0.0] * missed
    return values


class _BoxMetric(Metric):
    # ignite turns a mapping output into the tuple of these keys before ``update``
    required_output_keys = ("case", "pred", "gt")

    def __init__(self, output_transform: Callable[[Any], Any] = _identity, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform=output_transform, device=device)
        self._skip_unrolling = True

    @staticmethod
    def _unpack(output: Mapping[str, Any] | Sequence[Any]) -> tuple[str, list[Any], list[Any]]:
        if isinstance(output, Mapping):
            case, pred, gt = output.get("case"), output["pred"], output.get("gt")
        else:
            case, pred, gt = output
        if gt is None:
            raise ValueError(f"case {case}: no ground truth in the evaluator output; box metrics need labels (seg)")
        return str(case), list(pred), list(gt)

    @classmethod
    def _pairs(cls, output: Mapping[str, Any] | Sequence[Any]) -> tuple[list[Any], list[Any]]:
        _, pred, gt = cls._unpack(output)
        return pred, gt


class BoxSensitivity(_BoxMetric):
    """Fraction of ground-truth boxes found by a prediction with IoU >= ``iou_threshold`` (box level, per slice).

    Args:
        iou_threshold: IoU for a hit, in (0, 1]. Default 0.5.
        score_threshold: predictions with score > this count, in [0, 1]. Default 0.5.
        output_transform: maps the engine output to the dict above. Default identity.

    Returns:
        float in [0, 1]; NaN when there is no ground-truth box at all.
    """

    def __init__(
        self,
        iou_threshold: float = 0.5,
        score_threshold: float = 0.5,
        output_transform: Callable[[Any], Any] = _identity,
        device: str | torch.device = "cpu",
    ) -> None:
        self.iou_threshold = check_in_range("iou_threshold", iou_threshold, 0.0, 1.0, low_inclusive=False)
        self.score_threshold = check_in_range("score_threshold", score_threshold, 0.0, 1.0)
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._hit = 0
        self._total = 0

    def update(self, output: Mapping[str, Any]) -> None:
        for pred, gt in zip(*self._pairs(output), strict=True):
            m = iou_matrix(_kept(pred, self.score_threshold), gt["boxes"])
            self._total += m.shape[1]
            if m.shape[0] and m.shape[1]:
                self._hit += int((m.max(axis=0) >= self.iou_threshold).sum())

    def compute(self) -> float:
        return self._hit / self._total if self._total else float("nan")


class BoxPPV(BoxSensitivity):
    """Fraction of predictions (score > ``score_threshold``) that overlap a ground-truth box with IoU >= threshold.

    Same arguments as :class:`BoxSensitivity`. Returns NaN when nothing was predicted.
    """

    def update(self, output: Mapping[str, Any]) -> None:
        for pred, gt in zip(*self._pairs(output), strict=True):
            m = iou_matrix(_kept(pred, self.score_threshold), gt["boxes"])
            self._total += m.shape[0]
            if m.shape[0] and m.shape[1]:
                self._hit += int((m.max(axis=1) >= self.iou_threshold).sum())


class VolumeIoU(_BoxMetric):
    """Per-volume IoU statistics (median, 25th, 75th percentile) and their medians over volumes.

    Args:
        score_threshold: predictions with score > this count, in [0, 1]. Default 0.5.
        penalise_missed: add IoU 0 for every ground-truth box no prediction overlaps. Default True (module doc).
        csv_path: when given, the per-volume table is written there (atomically) at every ``compute``.
        prefix: key prefix of the returned dict. Default ``"volume_iou"``.
        output_transform: maps the engine output to the dict above. Default identity.

    Returns:
        ``{"<prefix>_median", "<prefix>_p25", "<prefix>_p75"}``: medians over volumes (NaN-free volumes only) of
        the per-volume median / 25th / 75th percentile. The table is kept in ``self.table``.
    """

    COLUMNS = ("case", "slices", "gt_boxes", "pred_boxes", "iou_median", "iou_p25", "iou_p75")

    def __init__(
        self,
        score_threshold: float = 0.5,
        penalise_missed: bool = True,
        csv_path: str | os.PathLike | None = None,
        prefix: str = "volume_iou",
        output_transform: Callable[[Any], Any] = _identity,
        device: str | torch.device = "cpu",
    ) -> None:
        self.score_threshold = check_in_range("score_threshold", score_threshold, 0.0, 1.0)
        self.penalise_missed = bool(penalise_missed)
        self.csv_path = Path(csv_path) if csv_path else None
        self.prefix = str(prefix)
        self.table: list[dict[str, Any]] = []
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self.table = []

    def update(self, output: Mapping[str, Any]) -> None:
        case, preds, gts = self._unpack(output)
        values = volume_iou_values(preds, gts, self.score_threshold, self.penalise_missed)
        n_gt = sum(int(_np(g["boxes"], (4,)).shape[0]) for g in gts)
        n_pred = sum(int(_kept(p, self.score_threshold).shape[0]) for p in preds)
        row: dict[str, Any] = {"case": case, "slices": len(preds), "gt_boxes": n_gt, "pred_boxes": n_pred}
        if values:
            row.update(
                iou_median=float(np.median(values)),
                iou_p25=float(np.percentile(values, 25)),
                iou_p75=float(np.percentile(values, 75)),
            )
        else:
            row.update(iou_median=float("nan"), iou_p25=float("nan"), iou_p75=float("nan"))
        self.table.append(row)

    def compute(self) -> dict[str, float]:
        out = {}
        for col, key in (("iou_median", "median"), ("iou_p25", "p25"), ("iou_p75", "p75")):
            vals = [r[col] for r in self.table if not math.isnan(r[col])]
            out[f"{self.prefix}_{key}"] = float(np.median(vals)) if vals else float("nan")
        if self.csv_path is not None:
            self.write_csv(self.csv_path)
        return out

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write the per-volume table (one row per case, empty cells for volumes without IoU)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.COLUMNS))
        writer.writeheader()
        for r in self.table:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
        return atomic_write_text(path, buf.getvalue())


class BoxAveragePrecision(_BoxMetric):
    """COCO-style average precision at one IoU threshold over all slices (MONAI ``COCOMetric``).

    Args:
        iou_threshold: IoU for a true positive, in (0, 1]. Default 0.5.
        max_detections: predictions per slice considered (highest scores), >= 1. Default 100.
        num_classes: foreground classes (labels 1..K in the output). Default 1.
        output_transform: maps the engine output to the dict above. Default identity.

    Returns:
        AP in [0, 1] (mean over classes); NaN when there is no ground-truth box.
    """

    def __init__(
        self,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        num_classes: int = 1,
        output_transform: Callable[[Any], Any] = _identity,
        device: str | torch.device = "cpu",
    ) -> None:
        self.iou_threshold = check_in_range("iou_threshold", iou_threshold, 0.0, 1.0, low_inclusive=False)
        self.max_detections = check_positive_int("max_detections", max_detections)
        self.num_classes = check_positive_int("num_classes", num_classes)
        t = round(self.iou_threshold, 2)
        self._coco = COCOMetric(
            classes=[f"class_{k + 1}" for k in range(self.num_classes)],
            iou_list=(t,),
            iou_range=(t, t, 0.01),
            max_detection=(self.max_detections,),
            verbose=False,
        )
        self.key = f"AP_IoU_{t:.2f}_MaxDet_{self.max_detections}"
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._pred: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._gt: list[tuple[np.ndarray, np.ndarray]] = []

    def update(self, output: Mapping[str, Any]) -> None:
        for pred, gt in zip(*self._pairs(output), strict=True):
            self._pred.append(
                (
                    _np(pred["boxes"], (4,)),
                    _np(pred["scores"]).reshape(-1),
                    _np(pred["labels"]).reshape(-1).astype(np.int64) - 1,
                )
            )
            self._gt.append((_np(gt["boxes"], (4,)), _np(gt["labels"]).reshape(-1).astype(np.int64) - 1))

    def compute(self) -> float:
        if not self._gt or sum(g[0].shape[0] for g in self._gt) == 0:
            return float("nan")
        results = matching_batch(
            iou_fn=box_iou,
            iou_thresholds=self._coco.iou_thresholds,
            pred_boxes=[p[0] for p in self._pred],
            pred_classes=[p[2] for p in self._pred],
            pred_scores=[p[1] for p in self._pred],
            gt_boxes=[g[0] for g in self._gt],
            gt_classes=[g[1] for g in self._gt],
            max_detections=self.max_detections,
        )
        value = float(self._coco(results)[0][self.key])
        return value if value >= 0 else float("nan")
