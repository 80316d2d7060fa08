# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Workflow pieces of the ``kidney_ct_da_segmentation`` bundle that are too long for a JSON one-liner.

* :func:`prepare_domains` — write the demo on first use and verify both domains before any compute. With
  ``target_labels=False`` (adaptation) the target is checked from its images only: no target label file is opened.
* :func:`kidney_prior` — the class-size prior ``[background, kidney]`` from the SOURCE labels (AMOS kidney
  channels 2 and 3); :func:`scaled_prior` rescales its kidney share (a label-free size lever).
* :func:`with_labels` — pair target images with the label files of a separate ``--labels_dir``.
* :class:`TargetDiceEvaluation` — per-case and mean kidney(+tumour) Dice on target test cases for every model
  that exists (source-only ``pretrained.pt``, adapted ``model.pt``, oracle ``oracle.pt``), side by side, written to
  ``metrics.json``, ``per_case_dice.csv`` and ``dice_per_case.png``. Dice is computed in each case's original
  geometry: the sliding-window probabilities are brought back to the image file's orientation, spacing and shape
  (MONAI ``Invertd`` of the preprocessing) and compared with the label file as stored.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import DataLoader, Dataset, MetaTensor, decollate_batch
from monai.metrics import compute_dice
from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd, LoadImage
from tqdm import tqdm

from tlk_components.data import kidney
from tlk_components.data.nifti_checks import CasePair, check_pairs
from tlk_components.data.plan import load_plans
from tlk_components.engines.reporting import save_bar_chart
from tlk_components.engines.seg_inference import case_name
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import atomic_write_json, atomic_write_text, load_weights
from tlk_components.utils.validation import check_in_range
from tlk_components.zoo.datasets import DatasetReport, prepare_dataset

__all__ = [
    "BUNDLE",
    "TargetDiceEvaluation",
    "kidney_prior",
    "prepare_domains",
    "plan_kidney_prior",
    "scaled_prior",
    "with_labels",
]

BUNDLE = "kidney_ct_da_segmentation"
logger = logging.getLogger(__name__)


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def prepare_domains(
    dataset_dir: str | os.PathLike,
    demo_dir: str | os.PathLike,
    source_dir: str | os.PathLike,
    target_dir: str | os.PathLike,
    target_labels: bool = True,
) -> str:
    """Write the demo when needed, then verify the source fully and the target (labels only if allowed).

    Args:
        dataset_dir: folder holding both domains (``amos22/`` + ``kits19/``); the demo folder by default.
        demo_dir: the bundle's demo folder (written on first use when ``dataset_dir`` is it).
        source_dir, target_dir: the two domains (default: inside ``dataset_dir``).
        target_labels: False for label-free adaptation: the target is verified from its images alone.

    Returns:
        ``dataset_dir`` as a string.

    Raises:
        DatasetError: listing every bad case of both domains.
    """
    d = Path(dataset_dir)
    is_demo = Path(demo_dir).resolve() == d.resolve()
    if is_demo and not (d.is_dir() and any(d.iterdir())):
        kidney.write_demo(d)
    if target_labels and _inside(source_dir, d) and _inside(target_dir, d):
        return prepare_dataset(BUNDLE, d, demo_dir)
    report = DatasetReport(f"{source_dir} + {target_dir}", fix=kidney._FIX)
    src = kidney.verify_dataset(source_dir)
    report.problems += src.problems
    report.n_cases += src.n_cases
    if target_labels:
        tgt = kidney.verify_dataset(target_dir)
        report.problems += tgt.problems
        report.n_cases += tgt.n_cases
    else:
        try:
            items = kidney.kits19_datalist(target_dir, split="all", labels=False)
        except DatasetError as e:
            report.add(str(target_dir), str(e))
            items = []
        pairs = [CasePair(Path(it["image"]).parent.name, Path(it["image"]), None) for it in items]
        if pairs:
            check_pairs(pairs, report, require_labels=False)
            report.n_cases += len(pairs)
    report.raise_if_bad()
    return str(d)


def kidney_prior(
    source_datalist: Sequence[Mapping[str, str]], kidney_labels: Sequence[int] = kidney.AMOS_KIDNEY_CHANNELS
) -> list[float]:
    """``[background, kidney]`` voxel shares over the source label files (both kidneys merged).

    The phantoms share one physical field of view, so the share is the same after resampling.

    Raises:
        DatasetError: no source item has a label.
    """
    kid = tot = 0
    for item in source_datalist:
        if "label" not in item:
            continue
        lab = np.asarray(nib.load(item["label"]).dataobj)
        kid += int(np.isin(lab, list(kidney_labels)).sum())
        tot += lab.size
    if tot == 0 or kid == 0:
        raise DatasetError("kidney_prior: no labelled source case with kidney voxels; check --source_dir")
    return [1.0 - kid / tot, kid / tot]


def plan_kidney_prior(
    plans_file: str | os.PathLike, kidney_labels: Sequence[int] = kidney.AMOS_KIDNEY_CHANNELS
) -> list[float]:
    """``[background, kidney]``: the kidney share of the source's **body** voxels, from ``plans.json``.

    Adaptation computes its size prior on random target patches drawn from volumes cropped to the body (air
    dropped), so the prior is the expected kidney share of such a patch: kidney voxels / body voxels (image > -500
    HU) over the labelled source, recorded by the plan's fingerprint (``body_label_shares``). Unlike the share of
    whole volumes it does not change with the air around the patient; it still changes with the scan length (a
    chest-abdomen-pelvis scan holds more non-kidney body than a kidney-centred one), which is why the bundle
    reports Dice against prior error and offers ``prior_kidney_scale`` and ``prior_size_range``.

    Args:
        plans_file: a plans.json written by :func:`tlk_components.data.plan.plan`.
        kidney_labels: source label values that are kidney (AMOS22: 2 and 3).

    Raises:
        ConfigError: the plan has no ``body_label_shares`` (written by an older version: delete it to re-plan).
        DatasetError: no kidney voxel in the source.
    """
    shares = load_plans(plans_file)["fingerprint"]["source"].get("body_label_shares")
    if shares is None:
        raise ConfigError(f"{plans_file}: no body_label_shares in the source fingerprint; delete it to re-plan")
    k = sum(float(shares.get(str(v), 0.0)) for v in kidney_labels)
    if k <= 0:
        raise DatasetError(
            f"{plans_file}: the source labels hold no kidney voxel (labels {list(kidney_labels)}); check --source_dir"
        )
    return [1.0 - k, k]


def scaled_prior(prior: Sequence[float], kidney_scale: float = 1.0) -> list[float]:
    """Multiply the foreground share of ``[background, kidney]`` by ``kidney_scale`` (> 0) and renormalise."""
    s = check_in_range("kidney_scale", kidney_scale, 0.0, low_inclusive=False)
    k = min(0.5, float(prior[1]) * s)
    return [1.0 - k, k]


def with_labels(datalist: Sequence[Mapping[str, str]], labels_dir: str | os.PathLike | None) -> list[dict[str, str]]:
    """Pair each image of ``datalist`` with its label file in a separate ``labels_dir`` (the evaluation's
    ``--labels_dir``); with ``labels_dir`` empty/None the datalist is returned unchanged.

    For a case ``C`` (KiTS19 folder name, or the image file name without ``.nii.gz``/``_0000``) the label is the
    first of ``C/segmentation.nii.gz``, ``C.nii.gz``, ``C_seg.nii.gz``, ``C/segmentation.nii`` and ``C.nii``.

    Raises:
        DatasetError: the folder does not exist, some cases have no label file, or a label file is unreadable or
            does not match its image's geometry (every such case is named).
    """
    if not labels_dir:
        return [dict(d) for d in datalist]
    base = Path(labels_dir)
    if not base.is_dir():
        raise DatasetError(f"--labels_dir {base} does not exist; point it at the folder of target label files")
    out, missing = [], []
    for item in datalist:
        case = case_name(item["image"])
        names = (
            f"{case}/segmentation.nii.gz",
            f"{case}.nii.gz",
            f"{case}_seg.nii.gz",
            f"{case}/segmentation.nii",
            f"{case}.nii",
        )
        found = next((base / n for n in names if (base / n).is_file()), None)
        if found is None:
            missing.append(case)
        else:
            out.append({**item, "label": str(found)})
    if missing:
        raise DatasetError(
            f"--labels_dir {base}: no label file for {len(missing)} case(s): {', '.join(missing)}; expected "
            "<case>/segmentation.nii.gz, <case>.nii.gz or <case>_seg.nii.gz for every evaluated image"
        )
    report = DatasetReport(f"--labels_dir {base}", fix="give every image a label file of the same geometry")
    check_pairs(
        [CasePair(case_name(d["image"]), Path(d["image"]), Path(d["label"])) for d in out],
        report,
        expected_labels=(0, 1, 2),
    )
    report.raise_if_bad()
    return out


class TargetDiceEvaluation:
    """Kidney Dice of several checkpoints on the same labelled target cases, side by side.

    Args:
        network: the segmentation network (weights are loaded into it in turn).
        checkpoints: display name -> ``state_dict`` path; missing files are skipped (at least one must exist).
        datalist: target test items with ``"image"`` and ``"label"`` (KiTS19: 1 kidney, 2 tumour; kidney Dice counts
            both, i.e. label > 0).
        transforms: the invertible image preprocessing (reorientation, resampling, body crop, normalisation) that
            keeps MONAI metadata (no ``EnsureTyped(track_meta=False)``); only ``"image"`` is passed through it, the
            label is read from its file as stored.
        inferer: e.g. ``seg_inference.GaussianSlidingWindowInferer(roi_size, overlap=0.5, mirror_axes=...)`` (the
            CT bundles' shared inferer; mirroring test-time augmentation is its ``mirror_axes``).
        device: torch device.
        output_dir: where ``metrics.json``, ``per_case_dice.csv`` and ``dice_per_case.png`` go.
        metric_prefix: metrics are named ``<prefix>_<model name>`` (default ``target_mean_dice_kidney``).
        model_transforms: model name -> preprocessing used for that model instead of ``transforms`` (e.g. the
            adapted model with the target intensity alignment it was adapted with).

    Raises:
        ConfigError: no checkpoint exists, or the datalist is empty or lacks labels.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        checkpoints: Mapping[str, str],
        datalist: Sequence[Mapping[str, str]],
        transforms: Any,
        inferer: Any,
        device: torch.device | str,
        output_dir: str | os.PathLike,
        metric_prefix: str = "target_mean_dice_kidney",
        model_transforms: Mapping[str, Any] | None = None,
    ) -> None:
        if not datalist or any("label" not in d for d in datalist):
            raise ConfigError("TargetDiceEvaluation: the target datalist is empty or has items without 'label'")
        self.network = network
        self.checkpoints = dict(checkpoints)
        self.datalist = list(datalist)
        self.transforms = transforms
        self.inferer = inferer
        self.device = torch.device(device)
        self.output_dir = Path(output_dir)
        self.metric_prefix = metric_prefix
        self.model_transforms = dict(model_transforms or {})

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.inferer(x, self.network)

    def evaluate(self, path: str | os.PathLike, transforms: Any = None) -> list[float]:
        """Per-case kidney Dice of the weights at ``path`` in the original geometry (same order as the datalist).

        Raises:
            ConfigError: the transforms drop the metadata needed to invert them.
            DatasetError: a label file does not lie on its image's voxel grid.
        """
        self.network.load_state_dict(load_weights(path, map_location=self.device))
        self.network.eval()
        tf = transforms if transforms is not None else self.transforms
        invert = Compose(
            [
                Activationsd("pred", softmax=True),
                Invertd("pred", transform=tf, orig_keys="image", nearest_interp=False, to_tensor=True),
                AsDiscreted("pred", argmax=True),
            ]
        )
        images = [{"image": d["image"]} for d in self.datalist]
        loader = DataLoader(Dataset(images, tf), batch_size=1, num_workers=0)
        load_label = LoadImage(image_only=True, ensure_channel_first=True)
        scores = []
        with torch.no_grad():
            for item, batch in zip(
                self.datalist, tqdm(loader, desc=f"evaluate {Path(path).name}", leave=False), strict=True
            ):
                if not isinstance(batch["image"], MetaTensor):
                    raise ConfigError(
                        "TargetDiceEvaluation: the evaluation transforms drop MONAI metadata (EnsureTyped with "
                        "track_meta=False?), so predictions cannot be brought back to the original geometry; pass "
                        "the image preprocessing that keeps it"
                    )
                batch["pred"] = self._predict(batch["image"].to(self.device)).cpu()
                out = invert(decollate_batch(batch, detach=True)[0])
                pred = out["pred"]
                label = load_label(item["label"])
                if tuple(pred.shape[1:]) != tuple(label.shape[1:]):
                    raise DatasetError(
                        f"{item['label']}: label shape {tuple(label.shape[1:])} differs from its image's "
                        f"{tuple(pred.shape[1:])}; the label must lie on its image's voxel grid"
                    )
                d = compute_dice(
                    (torch.as_tensor(pred) == 1).float()[None],
                    (torch.as_tensor(label) > 0).float()[None],
                    include_background=True,
                    ignore_empty=False,
                )
                scores.append(float(d.item()))
        return scores

    def run(self) -> dict[str, Any]:
        """Evaluate every existing checkpoint, write the reports, log the table; returns the metrics dict."""
        present = {k: v for k, v in self.checkpoints.items() if Path(v).is_file()}
        if not present:
            raise ConfigError(
                f"no checkpoint to evaluate: none of {list(self.checkpoints.values())} exists; run pretrain.json "
                "and train.json first (or pass --ckpt_dir)"
            )
        per_model = {name: self.evaluate(path, self.model_transforms.get(name)) for name, path in present.items()}
        cases = [
            case_name(d["image"]) if isinstance(d["image"], str | os.PathLike) else f"case_{i}"
            for i, d in enumerate(self.datalist)
        ]
        metrics: dict[str, Any] = {f"{self.metric_prefix}_{k}": float(np.mean(v)) for k, v in per_model.items()}
        metrics["per_case"] = {k: dict(zip(cases, v, strict=True)) for k, v in per_model.items()}
        metrics["n_cases"] = len(cases)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.output_dir / "metrics.json", metrics)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["case", *per_model])
        for i, c in enumerate(cases):
            w.writerow([c, *(f"{v[i]:.4f}" for v in per_model.values())])
        w.writerow(["mean", *(f"{np.mean(v):.4f}" for v in per_model.values())])
        atomic_write_text(self.output_dir / "per_case_dice.csv", buf.getvalue())
        save_bar_chart(
            {k: v for k, v in per_model.items()},
            cases,
            self.output_dir / "dice_per_case.png",
            title="Target kidney Dice per case",
            ylabel="Dice",
        )
        table = [f"| model | target kidney Dice (mean over {len(cases)} cases) |", "|---|---|"]
        table += [f"| {k} | {np.mean(v):.4f} |" for k, v in per_model.items()]
        text = "\n".join(table)
        atomic_write_text(self.output_dir / "dice_table.md", text + "\n")
        print(text, flush=True)
        return metrics
