# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Training, evaluation and inference engines for slice-wise box localization (MONAI engines, ignite events).

* :class:`BoxTrainer` — MONAI ``SupervisedTrainer`` whose iteration feeds a batch of slices with flat anchor
  targets (``BoxTargetsd``) through the network and a loss returning ``{"classification", "bbox_regression"}``;
  its output is ``{"loss", "classification", "bbox_regression"}`` (detached scalars), read by the progress bar,
  ``StatsHandler`` (``output_transform=loss_terms``) and ``LossCurvePlotter``.
* :class:`BoxEvaluator` — MONAI ``SupervisedEvaluator`` iterating whole volumes (``BratsVolumeDataset``,
  ``batch_size=1``): slices go through the network in chunks, :class:`~tlk_components.boxes.decode.BoxDecoder`
  turns the heads into scored boxes, ground-truth boxes come from the label slices. Output: ``{"case", "pred",
  "gt"}`` as read by :mod:`tlk_components.engines.box_metrics`.
* :class:`BoxPredictionWriter` — per volume: boxes with scores per slice and 3-D boxes per volume (JSON), PNG
  overlays of boxes on the FLAIR slice, and a NIfTI mask of the boxes in the original geometry.
* :class:`BoxEvaluationReport` — per-volume IoU table (CSV) and a bar chart (PNG).

Coordinates: network boxes are ``[a0_min, a1_min, a0_max, a1_max]`` on the resized slice; files written for a
person are in the voxel grid of the original NIfTI (in-plane scaled back, projected slices mapped to their source
slice range ``[start, stop)``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from scipy import ndimage

from tlk_components.boxes.decode import BoxDecoder, boxes_to_mask
from tlk_components.boxes.params import BoxParams
from tlk_components.boxes.targets import mask_to_boxes
from tlk_components.data.nifti_checks import save_nifti
from tlk_components.engines.box_metrics import VolumeIoU
from tlk_components.engines.reporting import save_bar_chart, save_figure
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.io import atomic_write_json, load_weights
from tlk_components.utils.validation import check_in_range, check_positive_int

__all__ = [
    "TARGET_KEYS",
    "BoxEvaluationReport",
    "BoxEvaluator",
    "BoxPredictionWriter",
    "BoxTrainer",
    "WeightsLoader",
    "loss_terms",
    "volume_boxes",
]

logger = logging.getLogger(__name__)

TARGET_KEYS = ("cls_target", "cls_weight", "reg_target", "reg_weight")


def _is_rank0() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor (MONAI transforms may return ``MetaTensor``; metadata is not needed for boxes)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def loss_terms(output: Mapping[str, Any]) -> dict[str, float]:
    """``StatsHandler``/TensorBoard ``output_transform``: the trainer output as ``{name: float}``."""
    return {k: float(v) for k, v in output.items() if k in ("loss", "classification", "bbox_regression")}


class BoxTrainer(SupervisedTrainer):
    """Slice-wise RetinaNet trainer (MONAI ``SupervisedTrainer`` with a box iteration).

    Args:
        device: training device.
        max_epochs: epochs, >= 1.
        train_data_loader: batches ``{"image": [B, C, H, W], "cls_target", "cls_weight", "reg_target",
            "reg_weight"}`` (from ``BoxTargetsd``).
        network: a module returning ``{"classification": [...], "box_regression": [...]}`` (``BoxFPN``).
        optimizer: the optimizer.
        loss_function: :class:`~tlk_components.losses.focal.BoxLocalizationLoss` (returns the two named terms and
            has ``total``).
        amp: mixed precision on CUDA (ignored on CPU). Default False.
        kwargs: passed to ``SupervisedTrainer`` (``train_handlers``, ``epoch_length``, ...); ``decollate`` is
            always False (the output is a dict of scalars).
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Any,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: torch.nn.Module,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        if not hasattr(loss_function, "total"):
            raise ConfigError(
                f"loss_function={type(loss_function).__name__}: expected a BoxLocalizationLoss (with .total); use "
                "tlk_components.losses.focal.BoxLocalizationLoss"
            )
        device = torch.device(device)
        kwargs["decollate"] = False
        super().__init__(
            device=device,
            max_epochs=check_positive_int("max_epochs", max_epochs),
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            amp=bool(amp) and device.type == "cuda",
            **kwargs,
        )

    def _iteration(self, engine: Any, batchdata: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        missing = [k for k in ("image", *TARGET_KEYS) if k not in batchdata]
        if missing:
            raise KeyError(
                f"training batch lacks {missing}; add tlk_components.boxes.targets.BoxTargetsd to the transforms"
            )
        image = _plain(batchdata["image"]).to(engine.state.device, non_blocking=engine.non_blocking).float()
        targets = {
            k: _plain(batchdata[k]).to(engine.state.device, non_blocking=engine.non_blocking) for k in TARGET_KEYS
        }
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", enabled=bool(engine.amp)):
            outputs = engine.inferer(image, engine.network)
            terms = engine.loss_function(outputs, targets)
            loss = engine.loss_function.total(terms)
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.optimizer.step()
        return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}


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
                x = _plain(image[0, start : start + self.slice_batch_size]).to(engine.state.device).float()
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


def _scale_boxes(boxes: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
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
        a = _scale_boxes(np.array([sl[0].start, sl[1].start, sl[0].stop, sl[1].stop], dtype=np.float64), scale)
        z0, z1 = int(ranges[sl[2].start][0]), int(ranges[sl[2].stop - 1][1])
        out.append(
            {"box": [float(a[0]), float(a[1]), z0, float(a[2]), float(a[3]), z1], "score": score, "slices": [z0, z1]}
        )
    return sorted(out, key=lambda d: -d["score"])


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
        if not _is_rank0():
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
            ob = _scale_boxes(boxes, scale)
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
        if not _is_rank0():
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


class WeightsLoader:
    """Load a ``state_dict`` (``torch.load(weights_only=True)``) into the network when the engine starts.

    Args:
        load_path: the weights file (``models/model.pt``).
        network: the module to load into (DDP/DataParallel wrappers are unwrapped).
        map_location: default ``"cpu"`` (the module keeps its device).

    Raises:
        DatasetError: (at start) the file is missing or unreadable, naming it and the fix.
    """

    def __init__(self, load_path: str | os.PathLike, network: torch.nn.Module, map_location: str = "cpu") -> None:
        self.load_path = Path(load_path)
        self.network = network
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        from tlk_components.engines.checkpoint import unwrap_model

        state = load_weights(self.load_path, map_location=self.map_location)
        try:
            unwrap_model(self.network).load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(
                f"{self.load_path}: weights do not fit the network ({str(e).splitlines()[0][:200]}); the BoxParams "
                "(levels, anchors, classes) or network widths differ from those used for training"
            ) from None
        logger.info(f"loaded weights from {self.load_path}")
