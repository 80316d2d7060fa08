# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The box parameterisation of a 2-D anchor-based detector (RetinaNet / FPN), in one validated object.

Conventions used by every module of :mod:`tlk_components.boxes`:

* Boxes are MONAI ``StandardMode`` corners ``[a0_min, a1_min, a0_max, a1_max]`` in pixels, where ``a0`` is the
  first array axis (rows, "y" in image terms) and ``a1`` the second (columns). The maximum is **exclusive**
  (a one-pixel blob at row 3, column 5 is ``[3, 5, 4, 6]``), as in MONAI (``TO_REMOVE = 0``) and jarvis-md.
* Feature level ``c`` has stride ``2**c``; its anchor grid is ``image_shape // 2**c``.
* Anchors of a level are ordered location-major (row-major over the grid) then anchor-minor, and the ``A``
  anchors of one location are ratio-major, scale-minor (MONAI's ``AnchorGenerator`` order; jarvis-md is
  scale-major — the order only has to agree between targets and heads, which it does by construction).
* Head maps are channels-first ``[B, A*K, gh, gw]`` (classification) and ``[B, A*4, gh, gw]`` (regression), with
  channel ``a*K + k``; flattening them gives ``[B, gh*gw*A, K]``, the order of the anchors.

Reference: P. Chang, CS190 "box localization" tutorial (jarvis-md ``BoundingBox``); Lin et al., "Focal Loss for
Dense Object Detection" (RetinaNet), ICCV 2017.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, check_positive_int

__all__ = ["BoxParams"]


def _int_list(name: str, value: Any, minimum: int) -> list[int]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) == 0:
        raise ConfigError(f"{name}={value!r}: expected a non-empty list of integers >= {minimum}")
    return [check_positive_int(name, v, minimum=minimum) for v in value]


def _float_list(name: str, value: Any, low: float | None = None, low_inclusive: bool = True) -> list[float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) == 0:
        raise ConfigError(f"{name}={value!r}: expected a non-empty list of numbers")
    return [check_in_range(name, v, low, None, low_inclusive=low_inclusive) for v in value]


class BoxParams:
    """Anchor boxes, matching thresholds and target-map shapes of a 2-D box detector.

    The tutorial's ``BoundingBox(image_shape, classes, c, anchor_shapes, anchor_scales, anchor_ratios,
    iou_upper, iou_lower, iou_nms, box_padding, separate_maps)`` re-implemented as a plain, validated object.
    Anchor side lengths at level ``c`` are ``base * 2**(i/3)`` for every scale exponent ``i``, stretched by every
    aspect ratio ``r = extent_axis1 / extent_axis0`` at constant area (``h = s / sqrt(r)``, ``w = s * sqrt(r)``).

    Deliberate differences from jarvis-md (all stated here):

    * the image shape must be divisible by ``2**max(levels)`` (jarvis truncates the grid size and uses a
      fractional stride, which cannot line up with a strided-convolution network); a clear error says so;
    * an anchor template larger than the image is an error (jarvis silently clips it to the image);
    * ``iou_nms=0`` / ``cls_threshold=0`` are honoured (jarvis' ``x or default`` silently replaced them);
    * ``iou_lower <= iou_upper`` is checked.

    Args:
        image_shape: ``(H, W)`` of the network input in pixels; each >= 2**max(levels).
        classes: number of foreground classes ``K`` (>= 1; background is not a class). Default 1.
        levels: feature levels ``c`` (stride ``2**c``), strictly increasing, each >= 1. Default ``(3, 4)``.
        anchor_shapes: base anchor size in pixels per level (same length as ``levels``). Default ``(32, 64)``.
        anchor_scales: scale exponents ``i``; the scales are ``2**(i/3)``. Default ``(0, 1, 2)``.
        anchor_ratios: aspect ratios ``extent_axis1 / extent_axis0`` (> 0). Default ``(0.5, 1, 2)``.
        iou_upper: IoU at or above which an anchor is positive, in (0, 1]. Default 0.5 (the BraTS tutorial).
        iou_lower: IoU at or below which an anchor is negative, in [0, iou_upper]; anchors strictly between the
            two thresholds are ignored by the classification loss. Default 0.2.
        iou_nms: IoU above which non-maximum suppression removes the lower-scoring box, in [0, 1]. Default 0.5.
        box_padding: pixels added on every side of a ground-truth box made from a mask, >= 0. Default 0.
        min_size_blob: connected components smaller than this fraction of the largest blob of a slice are dropped,
            in [0, 1]. Default 0.1.
        cls_threshold: probability above which an anchor is reported as a detection, in [0, 1]. Default 0.5.
        separate_maps: True: targets are one map per level (``cls-c3``, ``reg-c3``, ... as the heads produce);
            False: one flat set over all anchors (``cls``, ``reg``, ``cls-msk``, ``reg-msk``). Default True.

    Raises:
        ConfigError: any value outside its range, an anchor larger than the image, an image shape not divisible by
            the deepest stride, or list lengths that disagree.

    Example:
        >>> p = BoxParams(image_shape=(240, 240), levels=(3, 4), anchor_shapes=(32, 64))
        >>> p.grid_sizes, p.num_anchors_per_location, p.num_anchors
        ([(30, 30), (15, 15)], 9, 10125)
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (240, 240),
        classes: int = 1,
        levels: Sequence[int] = (3, 4),
        anchor_shapes: Sequence[float] = (32, 64),
        anchor_scales: Sequence[float] = (0, 1, 2),
        anchor_ratios: Sequence[float] = (0.5, 1, 2),
        iou_upper: float = 0.5,
        iou_lower: float = 0.2,
        iou_nms: float = 0.5,
        box_padding: int = 0,
        min_size_blob: float = 0.1,
        cls_threshold: float = 0.5,
        separate_maps: bool = True,
    ) -> None:
        shape = _int_list("image_shape", image_shape, minimum=1)
        if len(shape) != 2:
            raise ConfigError(f"image_shape={image_shape!r}: expected two integers (H, W) of a 2-D slice")
        self.image_shape: tuple[int, int] = (shape[0], shape[1])
        self.classes = check_positive_int("classes", classes)
        self.levels = _int_list("levels", levels, minimum=1)
        if sorted(set(self.levels)) != self.levels:
            raise ConfigError(f"levels={levels!r}: expected strictly increasing feature levels, e.g. [3, 4]")
        self.anchor_shapes = _float_list("anchor_shapes", anchor_shapes, low=0.0, low_inclusive=False)
        if len(self.anchor_shapes) != len(self.levels):
            raise ConfigError(
                f"anchor_shapes={anchor_shapes!r} has {len(self.anchor_shapes)} entries but levels={self.levels} has "
                f"{len(self.levels)}; give one base anchor size per level"
            )
        self.anchor_scale_exponents = _float_list("anchor_scales", anchor_scales)
        self.anchor_scales = [2.0 ** (i / 3.0) for i in self.anchor_scale_exponents]
        self.anchor_ratios = _float_list("anchor_ratios", anchor_ratios, low=0.0, low_inclusive=False)
        self.iou_upper = check_in_range("iou_upper", iou_upper, 0.0, 1.0, low_inclusive=False)
        self.iou_lower = check_in_range("iou_lower", iou_lower, 0.0, 1.0)
        if self.iou_lower > self.iou_upper:
            raise ConfigError(
                f"iou_lower={iou_lower} > iou_upper={iou_upper}: expected iou_lower <= iou_upper "
                "(anchors between the two are ignored)"
            )
        self.iou_nms = check_in_range("iou_nms", iou_nms, 0.0, 1.0)
        self.box_padding = check_positive_int("box_padding", box_padding, minimum=0)
        self.min_size_blob = check_in_range("min_size_blob", min_size_blob, 0.0, 1.0)
        self.cls_threshold = check_in_range("cls_threshold", cls_threshold, 0.0, 1.0)
        self.separate_maps = bool(separate_maps)

        deepest = 2 ** max(self.levels)
        for axis, n in enumerate(self.image_shape):
            if n % deepest:
                raise ConfigError(
                    f"image_shape={self.image_shape}: axis {axis} ({n}) is not divisible by 2**{max(self.levels)}="
                    f"{deepest}, the stride of level c{max(self.levels)}; use levels deeper than that only with an "
                    f"image size that is a multiple of {deepest} (or resize/pad the slices)"
                )
        for c, base in zip(self.levels, self.anchor_shapes, strict=True):
            for h, w in self._level_templates(base):
                if h > self.image_shape[0] or w > self.image_shape[1]:
                    raise ConfigError(
                        f"anchor_shapes: level c{c} has an anchor of {h:.1f} x {w:.1f} px (base {base:g}, scales "
                        f"{self.anchor_scale_exponents}, ratios {self.anchor_ratios}), larger than image_shape "
                        f"{self.image_shape}; use smaller anchor_shapes/anchor_scales or a larger image"
                    )

    def _level_templates(self, base: float) -> list[tuple[float, float]]:
        """Unrounded (h, w) of the A templates of one level, ratio-major and scale-minor."""
        out = []
        for r in self.anchor_ratios:
            for s in self.anchor_scales:
                out.append((base * s / math.sqrt(r), base * s * math.sqrt(r)))
        return out

    # ------------------------------------------------------------------ reports
    @property
    def num_anchors_per_location(self) -> int:
        """``A`` = number of scales x number of ratios."""
        return len(self.anchor_scales) * len(self.anchor_ratios)

    @property
    def strides(self) -> list[int]:
        """Stride ``2**c`` of every level, in pixels."""
        return [2**c for c in self.levels]

    @property
    def grid_sizes(self) -> list[tuple[int, int]]:
        """Anchor grid ``(gh, gw)`` of every level (``image_shape // 2**c``)."""
        return [(self.image_shape[0] // s, self.image_shape[1] // s) for s in self.strides]

    @property
    def anchors_per_level(self) -> list[int]:
        """Number of anchors of every level (``gh * gw * A``)."""
        return [gh * gw * self.num_anchors_per_location for gh, gw in self.grid_sizes]

    @property
    def num_anchors(self) -> int:
        """Total number of anchors over all levels."""
        return sum(self.anchors_per_level)

    @property
    def template_shapes(self) -> dict[str, list[tuple[float, float]]]:
        """``{"c3": [(h, w), ...], ...}``: the A anchor templates of each level as the generator builds them.

        MONAI's generator rounds each half-extent to whole pixels, so an extent is ``2 * round(x / 2)``.
        """
        out = {}
        for c, base in zip(self.levels, self.anchor_shapes, strict=True):
            out[f"c{c}"] = [(2.0 * round(h / 2.0), 2.0 * round(w / 2.0)) for h, w in self._level_templates(base)]
        return out

    @property
    def target_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every target map (without batch axis), keyed as the targets are.

        ``separate_maps=True``: ``cls-c{c}`` / ``cls-c{c}-msk`` ``(A*K, gh, gw)`` and ``reg-c{c}`` / ``reg-c{c}-msk``
        ``(A*4, gh, gw)`` per level. ``False``: ``cls`` / ``cls-msk`` ``(N, K)`` and ``reg`` / ``reg-msk`` ``(N, 4)``.
        """
        a, k = self.num_anchors_per_location, self.classes
        if not self.separate_maps:
            n = self.num_anchors
            return {"cls": (n, k), "reg": (n, 4), "cls-msk": (n, k), "reg-msk": (n, 4)}
        out: dict[str, tuple[int, ...]] = {}
        for c, (gh, gw) in zip(self.levels, self.grid_sizes, strict=True):
            out[f"cls-c{c}"] = (a * k, gh, gw)
            out[f"reg-c{c}"] = (a * 4, gh, gw)
            out[f"cls-c{c}-msk"] = (a * k, gh, gw)
            out[f"reg-c{c}-msk"] = (a * 4, gh, gw)
        return out

    def check_network_depth(self, deepest_level: int, name: str = "network") -> None:
        """Raise if a level is deeper than the network provides.

        Args:
            deepest_level: the deepest feature level (number of stride-2 steps) the network has.
            name: how to call the network in the message.

        Raises:
            ConfigError: naming the offending level and the fix.
        """
        too_deep = [c for c in self.levels if c > deepest_level]
        if too_deep:
            raise ConfigError(
                f"levels={self.levels}: level(s) {too_deep} are deeper than the {name} provides (deepest level "
                f"c{deepest_level}, stride {2**deepest_level}); drop those levels or add contracting blocks"
            )

    def summary(self) -> str:
        """Human-readable report: grids, templates, counts and target-map shapes."""
        lines = [f"image_shape {self.image_shape}, classes K={self.classes}, A={self.num_anchors_per_location}"]
        for c, g, n in zip(self.levels, self.grid_sizes, self.anchors_per_level, strict=True):
            shapes = ", ".join(f"{h:g}x{w:g}" for h, w in self.template_shapes[f"c{c}"])
            lines.append(f"c{c}: grid {g[0]}x{g[1]}, stride {2**c}, {n} anchors; templates {shapes}")
        lines.append(f"total anchors {self.num_anchors}")
        lines += [f"{k}: {list(v)}" for k, v in self.target_shapes.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The constructor arguments (for metadata and logs)."""
        return {
            "image_shape": list(self.image_shape),
            "classes": self.classes,
            "levels": list(self.levels),
            "anchor_shapes": list(self.anchor_shapes),
            "anchor_scales": list(self.anchor_scale_exponents),
            "anchor_ratios": list(self.anchor_ratios),
            "iou_upper": self.iou_upper,
            "iou_lower": self.iou_lower,
            "iou_nms": self.iou_nms,
            "box_padding": self.box_padding,
            "min_size_blob": self.min_size_blob,
            "cls_threshold": self.cls_threshold,
            "separate_maps": self.separate_maps,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"BoxParams({args})"
