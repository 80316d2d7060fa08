# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Ground truth for a box detector: mask -> boxes -> classification/regression targets with their loss masks.

Box layout: MONAI ``StandardMode`` ``[a0_min, a1_min, a0_max, a1_max]``, exclusive max (see
:mod:`tlk_components.boxes.params`).

``mask_to_boxes`` (jarvis-md ``calculate_boxes``): connected components of ``mask > 0`` (4-connectivity, as
``scipy.ndimage.label``), components smaller than ``min_size_blob`` x the largest one dropped, ``box_padding``
pixels added on every side, boxes clipped to the image. Deliberate differences: a component's class is its most
frequent label value (jarvis: the value of its first pixel); label values outside ``1..classes`` raise a clear
error (jarvis turns a value 2 with ``classes=1`` into a weight of 255 through a ``uint8`` underflow).

``BoxTargetBuilder`` (jarvis-md ``calculate_gt_cls`` + ``calculate_deltas``): boxes partly outside the image are
clipped to it and boxes with no area inside it are dropped (jarvis assumes boxes inside the image); anchors are
matched by :class:`~tlk_components.boxes.matcher.IoUThresholdMatcher`; then

* ``cls``  ``[N, K]``: one-hot class of positive anchors, 0 elsewhere;
* ``cls-msk`` ``[N, K]``: 1 for positive and negative anchors, 0 for ignored ones (the IoU band);
* ``reg`` ``[N, 4]``: deltas of the matched box for positive anchors, 0 elsewhere;
* ``reg-msk`` ``[N, 4]``: 1 on positive anchors only (regression is learnt on positives only).

No sampling and no normalisation happen here; the losses normalise (see :mod:`tlk_components.losses.focal`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data.box_utils import clip_boxes_to_image
from monai.transforms import MapTransform
from scipy import ndimage

from tlk_components.boxes.anchors import BoxAnchors
from tlk_components.boxes.coder import BoxDeltaCoder
from tlk_components.boxes.matcher import IoUThresholdMatcher
from tlk_components.boxes.params import BoxParams
from tlk_components.utils.errors import ConfigError

__all__ = [
    "BoxTargetBuilder",
    "BoxTargetsd",
    "clip_boxes",
    "flat_to_maps",
    "mask_to_boxes",
    "maps_to_flat",
]


def _as_numpy_2d(mask: Any) -> np.ndarray:
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    arr = np.squeeze(arr)
    if arr.ndim == 1 and np.asarray(mask).size in (0, 1):
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise ValueError(f"mask of shape {tuple(np.shape(mask))}: expected one 2-D slice ([H, W] or [1, H, W])")
    return arr


def mask_to_boxes(
    mask: np.ndarray | torch.Tensor,
    min_size_blob: float = 0.1,
    padding: int = 0,
    classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of the connected components of a 2-D label mask.

    Args:
        mask: ``[H, W]`` (or ``[1, H, W]``) integer labels, 0 = background.
        min_size_blob: drop components smaller than this fraction of the largest component, in [0, 1]. Default 0.1.
        padding: pixels added on every side of each box (then clipped to the image), >= 0. Default 0.
        classes: when given, label values must lie in ``1..classes``.

    Returns:
        ``(boxes [G, 4] float32, labels [G] int64)`` with labels in ``1..K``; empty tensors when the mask is empty.

    Raises:
        ValueError: the mask is not 2-D, or holds label values outside ``1..classes`` (named, with the fix).
    """
    arr = _as_numpy_2d(mask)
    if classes is not None:
        values = np.unique(arr)
        bad = [v for v in values.tolist() if v != 0 and not (1 <= v <= classes and float(v).is_integer())]
        if bad:
            raise ValueError(
                f"mask holds label values {bad}, expected 0 (background) or 1..{classes}; binarise or remap the "
                "labels first (BraTS: label = seg > 0)"
            )
    comp, n = ndimage.label(arr > 0)
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32), torch.zeros((0,), dtype=torch.int64)
    sizes = np.bincount(comp.ravel())[1:]
    keep = sizes >= min_size_blob * sizes.max()
    h, w = arr.shape
    boxes, labels = [], []
    for idx, sl in enumerate(ndimage.find_objects(comp)):
        if sl is None or not keep[idx]:
            continue
        values = arr[sl][comp[sl] == idx + 1]
        uniq, counts = np.unique(values, return_counts=True)
        labels.append(int(round(float(uniq[np.argmax(counts)]))))
        boxes.append(
            [
                max(sl[0].start - padding, 0),
                max(sl[1].start - padding, 0),
                min(sl[0].stop + padding, h),
                min(sl[1].stop + padding, w),
            ]
        )
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)


def clip_boxes(
    boxes: torch.Tensor, labels: torch.Tensor, image_shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip boxes to ``[0, H] x [0, W]`` and drop those left without area (MONAI ``clip_boxes_to_image``).

    Returns:
        ``(boxes [G', 4], labels [G'])``.
    """
    if boxes.numel() == 0:
        return boxes.reshape(0, 4).float(), labels.reshape(0)
    clipped, keep = clip_boxes_to_image(boxes.float(), list(image_shape), remove_empty=True)
    return clipped, labels[keep]


def flat_to_maps(flat: torch.Tensor, params: BoxParams, name: str) -> dict[str, torch.Tensor]:
    """Split a flat per-anchor tensor ``[..., N, C]`` into per-level maps ``[..., A*C, gh, gw]`` keyed ``name-c{c}``.

    ``name`` may contain ``{c}`` (e.g. ``"cls-c{c}-msk"``); otherwise ``-c{c}`` is appended.
    """
    a = params.num_anchors_per_location
    out = {}
    for c, (gh, gw), chunk in zip(
        params.levels, params.grid_sizes, flat.split(params.anchors_per_level, dim=-2), strict=True
    ):
        lead = chunk.shape[:-2]
        ch = chunk.shape[-1]
        m = chunk.reshape(*lead, gh, gw, a * ch)
        m = m.movedim(-1, -3)
        out[name.format(c=c) if "{c}" in name else f"{name}-c{c}"] = m
    return out


def maps_to_flat(maps: list[torch.Tensor] | tuple[torch.Tensor, ...], channels: int) -> torch.Tensor:
    """Concatenate head maps ``[B, A*C, gh, gw]`` (one per level) into ``[B, N, C]`` in anchor order.

    The maps are taken in the order given (level order), never by sorting key names (jarvis' ``map_to_vec``
    sorts keys as strings, which mis-orders ``c10`` before ``c3``).
    """
    parts = []
    for m in maps:
        b = m.shape[0]
        parts.append(m.movedim(1, -1).reshape(b, -1, channels))
    return torch.cat(parts, dim=1)


class BoxTargetBuilder:
    """Classification and regression targets, with loss masks, for the anchors of a parameterisation.

    Args:
        params: the box parameterisation (image shape, levels, anchors, thresholds, classes, separate_maps).
        matcher: anchor matcher; default ``IoUThresholdMatcher(params.iou_upper, params.iou_lower)``.
        coder: delta coder; default ``BoxDeltaCoder()``.

    Shape:
        boxes ``[G, 4]``, labels ``[G]`` in ``1..K``; targets: see the module docstring and ``params.target_shapes``.

    Example:
        >>> p = BoxParams(image_shape=(64, 64), levels=(3,), anchor_shapes=(16,))
        >>> t = BoxTargetBuilder(p)(torch.tensor([[10.0, 10, 30, 26]]), torch.tensor([1]))
        >>> sorted(t), t["cls-c3"].shape
        (['cls-c3', 'cls-c3-msk', 'reg-c3', 'reg-c3-msk'], torch.Size([9, 8, 8]))
    """

    def __init__(
        self,
        params: BoxParams,
        matcher: IoUThresholdMatcher | None = None,
        coder: BoxDeltaCoder | None = None,
    ) -> None:
        if not isinstance(params, BoxParams):
            raise ConfigError(f"params={params!r}: expected a tlk_components.boxes.params.BoxParams")
        self.params = params
        self.matcher = matcher if matcher is not None else IoUThresholdMatcher(params.iou_upper, params.iou_lower)
        self.coder = coder if coder is not None else BoxDeltaCoder()
        self.anchors = BoxAnchors(params)

    def flat(self, boxes: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat targets ``cls``, ``cls-msk`` ``[N, K]`` and ``reg``, ``reg-msk`` ``[N, 4]``.

        Raises:
            ValueError: a label outside ``1..K``, or boxes not ``[G, 4]``.
        """
        p = self.params
        boxes = (
            torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            if torch.numel(torch.as_tensor(boxes))
            else (torch.zeros((0, 4)))
        )
        labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        if labels.shape[0] != boxes.shape[0]:
            raise ValueError(f"{boxes.shape[0]} boxes but {labels.shape[0]} labels; give one label per box")
        if labels.numel() and (labels.min() < 1 or labels.max() > p.classes):
            raise ValueError(
                f"box labels {sorted(set(labels.tolist()))}: expected values in 1..{p.classes} (0 is background); "
                "binarise or remap the labels"
            )
        boxes, labels = clip_boxes(boxes, labels, p.image_shape)
        n, k = len(self.anchors), p.classes
        cls = torch.zeros((n, k))
        cls_w = torch.ones((n, k))
        reg = torch.zeros((n, 4))
        reg_w = torch.zeros((n, 4))
        if boxes.shape[0]:
            _, matches = self.matcher(
                boxes, self.anchors.anchors_clipped, self.anchors.per_level, p.num_anchors_per_location
            )
            pos = matches >= 0
            cls_w[matches == IoUThresholdMatcher.BETWEEN_THRESHOLDS] = 0.0
            if pos.any():
                gt = matches[pos]
                cls[pos, labels[gt] - 1] = 1.0
                reg[pos] = self.coder.encode(boxes[gt], self.anchors.anchors[pos])
                reg_w[pos] = 1.0
        return {"cls": cls, "cls-msk": cls_w, "reg": reg, "reg-msk": reg_w}

    def __call__(self, boxes: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Targets per level (``params.separate_maps``) or flat."""
        t = self.flat(boxes, labels)
        if not self.params.separate_maps:
            return t
        out: dict[str, torch.Tensor] = {}
        for key, suffix in (("cls", ""), ("reg", "")):
            out.update(flat_to_maps(t[key], self.params, f"{key}-c{{c}}{suffix}"))
            out.update(flat_to_maps(t[f"{key}-msk"], self.params, f"{key}-c{{c}}-msk"))
        return out

    def from_mask(self, mask: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Targets of a 2-D label mask (``mask_to_boxes`` with the params' blob size and padding)."""
        boxes, labels = mask_to_boxes(
            mask, self.params.min_size_blob, self.params.box_padding, classes=self.params.classes
        )
        return self(boxes, labels)


class BoxTargetsd(MapTransform):
    """Dictionary transform: add flat box targets computed from a 2-D label mask.

    Adds ``cls_target``, ``cls_weight`` ``[N, K]`` and ``reg_target``, ``reg_weight`` ``[N, 4]`` (fixed shapes, so
    batches collate with the default collate), plus ``num_boxes``.

    Args:
        keys: the label key (one key), e.g. ``"label"``, holding ``[1, H, W]`` or ``[H, W]``.
        params: the box parameterisation.
        allow_missing_keys: skip when the label is absent. Default False.
    """

    def __init__(self, keys: KeysCollection, params: BoxParams, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ConfigError(f"BoxTargetsd keys={keys!r}: expected exactly one label key")
        self.builder = BoxTargetBuilder(params)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            p = self.builder.params
            boxes, labels = mask_to_boxes(d[key], p.min_size_blob, p.box_padding, classes=p.classes)
            t = self.builder.flat(boxes, labels)
            d["cls_target"], d["cls_weight"] = t["cls"], t["cls-msk"]
            d["reg_target"], d["reg_weight"] = t["reg"], t["reg-msk"]
            d["num_boxes"] = torch.tensor(boxes.shape[0])
        return d
