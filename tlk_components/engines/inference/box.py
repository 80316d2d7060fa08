# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Box-localization outputs: :class:`BoxPredictionWriter` writes, per volume, boxes with scores per slice and
3-D boxes per volume (JSON), PNG overlays of boxes on the FLAIR slice, and a NIfTI mask of the boxes in the
original geometry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events

from tlk_components.boxes.decode import boxes_to_mask
from tlk_components.data.nifti_checks import save_nifti
from tlk_components.engines.evaluators.box import scale_boxes, volume_boxes
from tlk_components.engines.handlers.reporting import save_figure
from tlk_components.utils.distributed import is_rank0
from tlk_components.utils.io import atomic_write_json
from tlk_components.utils.validation import check_in_range, check_positive_int

__all__ = ["BoxPredictionWriter"]


class BoxPredictionWriter:
    """Write the predictions of every volume: JSON (per slice and per volume), PNG overlays, NIfTI box mask.

    Files, for case ``X`` under ``output_dir``: ``X/X_boxes.json``, ``X/X_boxmask.nii.gz`` (uint8, original
    shape and affine; 1 inside predicted boxes), ``X/png/X_slice_NNN.png`` (FLAIR with predicted boxes in red,
    scores printed, and ground-truth boxes in dashed green when labels are present).

    Args:
        output_dir: destination folder.
        score_threshold: boxes with score > this are written, in [0, 1]. Default 0.5.
        save_png: write overlays. Default True.
        max_png_per_volume: overlays per volume (slices with the highest box score first; slices with only
            ground truth after them), >= 0. Default 12.
        save_nifti: write the box mask. Default True.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        score_threshold: float = 0.5,
        save_png: bool = True,
        max_png_per_volume: int = 12,
        save_nifti: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.score_threshold = check_in_range("score_threshold", score_threshold, 0.0, 1.0)
        self.save_png = bool(save_png)
        self.max_png = check_positive_int("max_png_per_volume", max_png_per_volume, minimum=0)
        self.save_nifti = bool(save_nifti)
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_rank0():
            return
        out, batch = engine.state.output, engine.state.batch
        case = out["case"]
        image = batch["image"][0]  # [Z, C, H, W]
        h, w = int(image.shape[-2]), int(image.shape[-1])
        orig = [int(v) for v in batch["orig_shape"][0].tolist()] if "orig_shape" in batch else [h, w, image.shape[0]]
        ranges = batch["ranges"][0].numpy() if "ranges" in batch else None
        affine = batch["affine"][0].numpy() if "affine" in batch else np.eye(4)
        scale = (orig[0] / h, orig[1] / w)
        if ranges is None:
            ranges = np.stack([np.arange(image.shape[0]), np.arange(image.shape[0]) + 1], axis=1)
        folder = self.output_dir / case
        slices = []
        mask = np.zeros(orig, dtype=np.uint8)
        for z, p in enumerate(out["pred"]):
            keep = p["scores"] > self.score_threshold
            boxes = p["boxes"][keep].numpy().astype(np.float64)
            scores = p["scores"][keep].numpy()
            ob = scale_boxes(boxes, scale)
            if len(ob):
                sl = boxes_to_mask(ob, orig[:2])
                for zz in range(int(ranges[z][0]), int(ranges[z][1])):
                    mask[..., zz] = np.maximum(mask[..., zz], sl)
            slices.append(
                {
                    "slice": z,
                    "source_slices": [int(ranges[z][0]), int(ranges[z][1])],
                    "boxes": np.round(ob, 2).tolist(),
                    "scores": np.round(scores, 4).tolist(),
                }
            )
        result = {
            "case": case,
            "box_mode": "[a0_min, a1_min, a0_max, a1_max] voxel indices of the original volume, exclusive max",
            "score_threshold": self.score_threshold,
            "slices": slices,
            "volume_boxes": volume_boxes(out["pred"], (h, w), self.score_threshold, ranges, scale),
        }
        self.written.append(atomic_write_json(folder / f"{case}_boxes.json", result))
        if self.save_nifti:
            self.written.append(save_nifti(nib.Nifti1Image(mask, affine), folder / f"{case}_boxmask.nii.gz"))
        if self.save_png and self.max_png:
            self._overlays(case, image, out, folder / "png")

    def _overlays(self, case: str, image: torch.Tensor, out: Mapping[str, Any], folder: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        top = [(float(p["scores"].max()) if p["scores"].numel() else 0.0, z) for z, p in enumerate(out["pred"])]
        has_gt = [z for z, g in enumerate(out["gt"] or []) if len(g["boxes"])]
        chosen = [z for s, z in sorted(top, reverse=True) if s > self.score_threshold]
        chosen += [z for z in has_gt if z not in chosen]
        for z in sorted(chosen[: self.max_png]):
            fig, ax = plt.subplots(figsize=(4, 4))
            ax.imshow(image[z, 0].numpy(), cmap="gray")
            p = out["pred"][z]
            for b, s in zip(p["boxes"].tolist(), p["scores"].tolist(), strict=True):
                if s <= self.score_threshold:
                    continue
                ax.add_patch(Rectangle((b[1] - 0.5, b[0] - 0.5), b[3] - b[1], b[2] - b[0], fill=False, color="red"))
                ax.text(b[1], b[0] - 1, f"{s:.2f}", color="red", fontsize=7)
            if out["gt"] is not None:
                for b in out["gt"][z]["boxes"].tolist():
                    ax.add_patch(
                        Rectangle(
                            (b[1] - 0.5, b[0] - 0.5), b[3] - b[1], b[2] - b[0], fill=False, color="lime", linestyle="--"
                        )
                    )
            ax.set_title(f"{case} slice {z}: predicted (red), truth (green)", fontsize=7)
            ax.axis("off")
            self.written.append(save_figure(fig, folder / f"{case}_slice_{z:03d}.png"))
