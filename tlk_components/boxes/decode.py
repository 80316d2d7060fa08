# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Predictions -> boxes (score threshold, deltas, non-maximum suppression); boxes -> display mask; IoU helpers.

Box layout: MONAI ``StandardMode`` ``[a0_min, a1_min, a0_max, a1_max]``, exclusive max (see
:mod:`tlk_components.boxes.params`).

Deliberate differences from jarvis-md ``convert_box_to_anc`` / ``apply_nms`` / ``draw_box`` (stated):

* the **scores are returned** with the boxes, sorted by decreasing score (jarvis returns anchor order and drops
  the scores, which makes AP/FROC impossible);
* NMS is MONAI's greedy ``non_max_suppression`` (single class) or ``batched_nms`` (per class when ``K > 1``;
  jarvis is class-agnostic), run whether or not deltas are applied (jarvis skips NMS for ``apply_deltas=False``);
  ``nms_iou >= 1`` disables it;
* at most ``topk`` candidates per image enter NMS and ``max_detections`` leave it, so an untrained network with
  thousands of anchors above threshold cannot make decoding dominate the inference time;
* a threshold or NMS IoU of 0 is honoured (jarvis' ``x or default`` replaced 0 by the default);
* decoded boxes are clipped to the image; ``boxes_to_mask`` clips each axis by its own size (jarvis used
  ``shape[0]`` for both, which is only right for square images);
* the candidate rule ``sigmoid(logit) > threshold`` (strict) is jarvis'; it is applied as ``logit > logit(threshold)``
  for the whole batch at once, so ``sigmoid`` and the box decoding run only on the candidates;
* ground truth is never decoded through this score path: jarvis passes target dicts through ``sigmoid`` of
  ``uint8`` maps (which raises ``OverflowError`` with numpy >= 2); ground-truth boxes come from the mask
  (:func:`tlk_components.boxes.targets.mask_to_boxes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.data.box_utils import batched_nms, box_iou, non_max_suppression

from tlk_components.boxes.anchors import BoxAnchors
from tlk_components.boxes.coder import BoxDeltaCoder
from tlk_components.boxes.params import BoxParams
from tlk_components.boxes.targets import maps_to_flat
from tlk_components.utils.validation import check_in_range, check_positive_int

__all__ = ["BoxDecoder", "box_ious", "boxes_to_mask"]


def box_ious(box: torch.Tensor | np.ndarray, boxes: torch.Tensor | np.ndarray) -> torch.Tensor:
    """IoU of one box against many (jarvis-md ``calculate_ious``), via MONAI ``box_iou``.

    Args:
        box: ``[4]`` (or ``[1, 4]``).
        boxes: ``[G, 4]``.

    Returns:
        ``[G]`` float32 IoUs in [0, 1]; empty when ``boxes`` is empty.
    """
    b = torch.as_tensor(box, dtype=torch.float32).reshape(1, 4)
    others = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if others.shape[0] == 0:
        return torch.zeros((0,), dtype=torch.float32)
    return box_iou(b, others).reshape(-1).to(torch.float32)


def boxes_to_mask(
    boxes: torch.Tensor | np.ndarray,
    shape: Sequence[int],
    labels: torch.Tensor | np.ndarray | None = None,
    outline: bool = False,
) -> np.ndarray:
    """Paint boxes into a ``[H, W]`` uint8 mask (for display or a NIfTI overlay).

    Args:
        boxes: ``[D, 4]`` boxes (fractional corners are rounded outwards).
        shape: ``(H, W)``.
        labels: ``[D]`` values to paint (default 1).
        outline: paint only the one-pixel border of each box. Default False (filled).

    Returns:
        ``[H, W]`` uint8 array.
    """
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), dtype=np.uint8)
    arr = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).cpu().numpy()
    vals = np.ones(len(arr), dtype=np.uint8) if labels is None else np.asarray(labels).astype(np.uint8).reshape(-1)
    for (y1, x1, y2, x2), v in zip(arr, vals, strict=True):
        r1, c1 = int(np.clip(np.floor(y1), 0, h)), int(np.clip(np.floor(x1), 0, w))
        r2, c2 = int(np.clip(np.ceil(y2), 0, h)), int(np.clip(np.ceil(x2), 0, w))
        if r2 <= r1 or c2 <= c1:
            continue
        if outline:
            out[r1:r2, [c1, c2 - 1]] = v
            out[[r1, r2 - 1], c1:c2] = v
        else:
            out[r1:r2, c1:c2] = v
    return out


class BoxDecoder:
    """Turn classification/regression head outputs into scored boxes per image.

    Args:
        params: the box parameterisation (anchors, image shape, classes; defaults for threshold and NMS IoU).
        score_threshold: keep anchors with ``sigmoid(logit) > score_threshold``, in [0, 1]; default
            ``params.cls_threshold``.
        nms_iou: NMS IoU in [0, 1]; >= 1 disables NMS; default ``params.iou_nms``.
        apply_deltas: refine anchors by the predicted deltas (False: report the anchors themselves). Default True.
        topk: candidates per image entering NMS (highest scores), >= 1. Default 1000.
        max_detections: boxes per image after NMS, >= 1. Default 100.
        coder: delta coder; default ``BoxDeltaCoder()``.

    Shape:
        ``cls``: list of ``[B, A*K, gh, gw]`` (one per level) or ``[B, N, K]``; ``reg``: list of
        ``[B, A*4, gh, gw]`` or ``[B, N, 4]``. Returns a list of ``B`` dicts ``{"boxes": [D, 4], "scores": [D],
        "labels": [D]}`` (labels 1..K), sorted by decreasing score.

    Example:
        >>> p = BoxParams(image_shape=(64, 64), levels=(3,), anchor_shapes=(16,))
        >>> dec = BoxDecoder(p)
        >>> out = dec([torch.full((1, 9, 8, 8), -9.0)], [torch.zeros(1, 36, 8, 8)])
        >>> out[0]["boxes"].shape
        torch.Size([0, 4])
    """

    def __init__(
        self,
        params: BoxParams,
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        apply_deltas: bool = True,
        topk: int = 1000,
        max_detections: int = 100,
        coder: BoxDeltaCoder | None = None,
    ) -> None:
        self.params = params
        self.score_threshold = check_in_range(
            "score_threshold", params.cls_threshold if score_threshold is None else score_threshold, 0.0, 1.0
        )
        self.nms_iou = check_in_range("nms_iou", params.iou_nms if nms_iou is None else nms_iou, 0.0, None)
        self.apply_deltas = bool(apply_deltas)
        self.topk = check_positive_int("topk", topk)
        self.max_detections = check_positive_int("max_detections", max_detections)
        self.coder = coder if coder is not None else BoxDeltaCoder()
        self.anchors = BoxAnchors(params)

    def _flat(self, x: torch.Tensor | Sequence[torch.Tensor], channels: int) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.ndim == 3:
            return x
        return maps_to_flat(list(x), channels)

    @torch.no_grad()
    def __call__(
        self, cls: torch.Tensor | Sequence[torch.Tensor], reg: torch.Tensor | Sequence[torch.Tensor] | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Decode a batch (see Shape). ``reg`` may be None only with ``apply_deltas=False``."""
        k = self.params.classes
        logits = self._flat(cls, k).float()
        if logits.shape[1] != len(self.anchors):
            raise ValueError(
                f"classification output has {logits.shape[1]} anchors, the params define {len(self.anchors)}; the "
                "network and BoxParams disagree (levels, image_shape or anchors)"
            )
        deltas = self._flat(reg, 4).float() if reg is not None else None
        if self.apply_deltas and deltas is None:
            raise ValueError("apply_deltas=True needs the regression output; pass reg or set apply_deltas=False")
        if self.anchors.anchors.device != logits.device:
            self.anchors.to(logits.device)
        h, w = self.params.image_shape
        hi = torch.tensor([h, w, h, w], dtype=torch.float32, device=logits.device)
        bsz = logits.shape[0]
        # candidates of the whole batch at once: threshold on the logit (sigmoid only for the candidates)
        thr = self.score_threshold
        logit_thr = math.log(thr / (1.0 - thr)) if 0.0 < thr < 1.0 else (-math.inf if thr <= 0.0 else math.inf)
        flat = logits.reshape(bsz, -1)
        b_idx, c_idx = torch.nonzero(flat > logit_thr, as_tuple=True)
        scores = torch.sigmoid(flat[b_idx, c_idx])
        anchor_idx = torch.div(c_idx, k, rounding_mode="floor")
        labels = c_idx % k + 1
        anchors = self.anchors.anchors[anchor_idx]
        if self.apply_deltas and anchor_idx.numel():
            boxes = self.coder.decode(deltas[b_idx, anchor_idx], anchors)
        else:
            boxes = anchors.clone()
        boxes = torch.minimum(torch.clamp(boxes, min=0.0), hi)
        counts = torch.bincount(b_idx, minlength=bsz).tolist()
        empty = {"boxes": boxes[:0], "scores": scores[:0], "labels": labels[:0]}
        out = []
        start = 0
        for n in counts:
            if n == 0:
                out.append(dict(empty))
                continue
            sl = slice(start, start + n)
            start += n
            out.append(self._select(boxes[sl], scores[sl], labels[sl]))
        return out

    def _select(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Top-k candidates, NMS (MONAI) and the final cap for one image."""
        if scores.numel() > self.topk:
            top = torch.topk(scores, self.topk).indices
            boxes, scores, labels = boxes[top], scores[top], labels[top]
        if scores.numel() > 1 and self.nms_iou < 1.0:
            if self.params.classes == 1:
                keep = non_max_suppression(boxes, scores, self.nms_iou, max_proposals=self.max_detections)
            else:
                keep = batched_nms(boxes, scores, labels, self.nms_iou, max_proposals=self.max_detections)
        else:
            keep = torch.argsort(scores, descending=True, stable=True)
        keep = keep[: self.max_detections]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
