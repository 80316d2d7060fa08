# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Evaluation engine and report for slice-wise box localization.

* :class:`BoxEvaluator` - MONAI ``SupervisedEvaluator`` iterating whole volumes (``BratsVolumeDataset``,
  ``batch_size=1``): slices go through the network in chunks, :class:`~tlk_components.boxes.decode.BoxDecoder`
  turns the heads into scored boxes, ground-truth boxes come from the label slices. Output: ``{"case", "pred",
  "gt"}`` as read by :mod:`tlk_components.engines.evaluators.box_metrics`.
* :class:`BoxEvaluationReport` - per-volume IoU table (CSV) and a bar chart (PNG).

Coordinates: network boxes are ``[a0_min, a1_min, a0_max, a1_max]`` on the resized slice; files written for a
person are in the voxel grid of the original NIfTI (in-plane scaled back, projected slices mapped to their source
slice range ``[start, stop)``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator
from scipy import ndimage

from tlk_components.boxes.decode import BoxDecoder, boxes_to_mask
from tlk_components.boxes.params import BoxParams
from tlk_components.boxes.targets import mask_to_boxes
from tlk_components.engines.evaluators.box_metrics import VolumeIoU
from tlk_components.engines.handlers.reporting import save_bar_chart
from tlk_components.engines.trainers.box import plain_tensor
from tlk_components.utils.distributed import is_rank0
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_positive_int

__all__ = ["BoxEvaluationReport", "BoxEvaluator", "scale_boxes", "volume_boxes"]


class BoxEvaluator(SupervisedEvaluator):
    """Volume-wise evaluator/predictor: network on every slice, boxes decoded, ground truth from the labels.

    Args:
        device: evaluation device.
        val_data_loader: ``BratsVolumeDataset`` items with ``batch_size=1``.
        network: the box network.
        params: the box parameterisation (decoder and ground-truth boxes).
        score_threshold: lowest score kept by the decoder, in [0, 1]. Default 0.05 (AP needs the low scores; the
            metrics and the writer apply their own, higher thresholds).
        nms_iou: NMS IoU; default ``params.iou_nms``.
        max_detections: boxes per slice, >= 1. Default 100.
        slice_batch_size: slices per forward pass, >= 1. Default 32.
        amp: mixed precision on CUDA. Default False.
        kwargs: passed to ``SupervisedEvaluator`` (``key_val_metric``, ``additional_metrics``, ``val_handlers``).

    Output per iteration: ``{"case": str, "pred": [per-slice dicts], "gt": [per-slice dicts] or None}``.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Any,
        network: torch.nn.Module,
        params: BoxParams,
        score_threshold: float = 0.05,
        nms_iou: float | None = None,
        max_detections: int = 100,
        slice_batch_size: int = 32,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("additional_metrics") and not kwargs.get("key_val_metric"):
            raise ConfigError(
                "BoxEvaluator: additional_metrics were given without key_val_metric; MONAI attaches metrics only "
                "together with a key metric - move one of them to key_val_metric"
            )
        device = torch.device(device)
        kwargs["decollate"] = False
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            network=network,
            amp=bool(amp) and device.type == "cuda",
            **kwargs,
        )
        self.params = params
        self.decoder = BoxDecoder(
            params, score_threshold=score_threshold, nms_iou=nms_iou, max_detections=max_detections
        )
        self.slice_batch_size = check_positive_int("slice_batch_size", slice_batch_size)

    def _iteration(self, engine: Any, batchdata: Mapping[str, Any]) -> dict[str, Any]:
        image = batchdata["image"]
        if image.ndim != 5 or image.shape[0] != 1:
            raise ValueError(
                f"evaluation batch image of shape {tuple(image.shape)}: expected [1, Z, C, H, W] (one volume); use "
                "BratsVolumeDataset with batch_size=1"
            )
        case = batchdata.get("case", ["volume"])
        case = case[0] if isinstance(case, list | tuple) else str(case)
        engine.network.eval()
        preds: list[dict[str, torch.Tensor]] = []
        with torch.no_grad():
            for start in range(0, image.shape[1], self.slice_batch_size):
                x = plain_tensor(image[0, start : start + self.slice_batch_size]).to(engine.state.device).float()
                with torch.autocast("cuda", enabled=bool(engine.amp)):
                    out = engine.inferer(x, engine.network)
                dec = self.decoder(out["classification"], out["box_regression"])
                preds += [{k: v.cpu() for k, v in d.items()} for d in dec]
        gts = None
        if "label" in batchdata:
            p = self.params
            gts = []
            for z in range(batchdata["label"].shape[1]):
                boxes, labels = mask_to_boxes(batchdata["label"][0, z], p.min_size_blob, p.box_padding, p.classes)
                gts.append({"boxes": boxes, "labels": labels})
        return {"case": case, "pred": preds, "gt": gts}


def scale_boxes(boxes: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """``[a0_min, a1_min, a0_max, a1_max]`` boxes ``(D, 4)`` from the resized slice to the original in-plane grid."""
    return boxes * np.array([scale[0], scale[1], scale[0], scale[1]], dtype=np.float64)


def volume_boxes(
    preds: Sequence[Mapping[str, Any]],
    image_shape: Sequence[int],
    score_threshold: float = 0.5,
    ranges: np.ndarray | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
) -> list[dict[str, Any]]:
    """3-D boxes of a volume: connected components (6-connectivity) of the stacked, filled slice boxes.

    Args:
        preds: per-slice decoder outputs.
        image_shape: in-plane ``(H, W)`` of the slices the boxes refer to.
        score_threshold: slice boxes with score > this are used. Default 0.5.
        ranges: ``[Z, 2]`` source slice range of every slice (projection); default slice ``z`` -> ``[z, z+1)``.
        scale: in-plane factors from slice coordinates to the output grid. Default (1, 1).

    Returns:
        ``[{"box": [a0_min, a1_min, z_min, a0_max, a1_max, z_max], "score": max slice score,
        "slices": [first, last + 1]}]`` (MONAI 3-D StandardMode order, exclusive max), highest score first.
    """
    z = len(preds)
    if ranges is None:
        ranges = np.stack([np.arange(z), np.arange(z) + 1], axis=1)
    h, w = int(image_shape[0]), int(image_shape[1])
    score_map = np.zeros((h, w, z), dtype=np.float32)
    for k, p in enumerate(preds):
        scores = np.asarray(p["scores"], dtype=np.float32).reshape(-1)
        boxes = np.asarray(p["boxes"], dtype=np.float32).reshape(-1, 4)
        for b, s in zip(boxes[scores > score_threshold], scores[scores > score_threshold], strict=True):
            m = boxes_to_mask(b[None], (h, w)).astype(bool)
            score_map[..., k][m] = np.maximum(score_map[..., k][m], s)
    comp, n = ndimage.label(score_map > 0)
    out = []
    for idx, sl in enumerate(ndimage.find_objects(comp)):
        if sl is None:
            continue
        score = float(score_map[sl][comp[sl] == idx + 1].max())
        a = scale_boxes(np.array([sl[0].start, sl[1].start, sl[0].stop, sl[1].stop], dtype=np.float64), scale)
        z0, z1 = int(ranges[sl[2].start][0]), int(ranges[sl[2].stop - 1][1])
        out.append(
            {"box": [float(a[0]), float(a[1]), z0, float(a[2]), float(a[3]), z1], "score": score, "slices": [z0, z1]}
        )
    return sorted(out, key=lambda d: -d["score"])


class BoxEvaluationReport:
    """At the end of an evaluation: the per-volume IoU table as CSV and a bar chart of per-volume median IoU.

    Args:
        volume_iou: the :class:`VolumeIoU` metric attached to the evaluator (its table is read).
        output_dir: destination folder.
        csv_name: default ``volume_iou.csv``. png_name: default ``volume_iou.png``.
    """

    def __init__(
        self,
        volume_iou: VolumeIoU,
        output_dir: str | os.PathLike,
        csv_name: str = "volume_iou.csv",
        png_name: str = "volume_iou.png",
    ) -> None:
        if not isinstance(volume_iou, VolumeIoU):
            raise ConfigError(f"volume_iou={volume_iou!r}: expected the VolumeIoU metric object of the evaluator")
        self.metric = volume_iou
        self.output_dir = Path(output_dir)
        self.csv_name, self.png_name = csv_name, png_name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_rank0():
            return
        table = self.metric.table
        self.metric.write_csv(self.output_dir / self.csv_name)
        if table:
            vals = [0.0 if np.isnan(r["iou_median"]) else r["iou_median"] for r in table]
            save_bar_chart(
                vals,
                [r["case"].replace("BraTS20_", "") for r in table],
                self.output_dir / self.png_name,
                title="median IoU per volume (tumour-free, no prediction: 0 bar, not counted)",
                ylabel="IoU",
            )
