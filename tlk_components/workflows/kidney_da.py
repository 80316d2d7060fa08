# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Workflow pieces of the ``kidney_ct_da_segmentation`` bundle that are too long for a JSON one-liner.

* :func:`prepare_domains` — write the demo on first use and verify both domains before any compute. With
  ``target_labels=False`` (adaptation) the target is checked from its images only: no target label file is opened.
* :func:`patch_size_prior` — the class-size prior ``[background, kidney]``: the expected kidney share of a random
  patch of a preprocessed SOURCE volume (what the adapter's size term sees on target patches);
  :func:`scaled_prior` rescales its kidney share (the lever of the prior-error study).
* :func:`with_labels` — pair target images with the label files of a separate ``--labels_dir``.
* :class:`TargetDiceEvaluation` — per-case and mean kidney(+tumour) Dice on target test cases for every model
  that exists (source-only ``pretrained.pt``, adapted ``model.pt``, oracle ``oracle.pt``), side by side, written to
  ``metrics.json``, ``per_case_dice.csv`` and ``dice_per_case.png``. Dice is computed in each case's original
  geometry: the sliding-window probabilities are brought back to the image file's orientation, spacing and shape
  (MONAI ``Invertd`` of the preprocessing) and compared with the label file as stored. Where the labels hold
  KiTS19's tumour class it also reports which part of the kidney(+tumour) Dice each model misses: the Dice of the
  kidney parenchyma with tumour voxels left out, and the share of tumour voxels predicted as kidney.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset, MetaTensor, decollate_batch
from monai.metrics import compute_dice
from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd, LoadImage
from tqdm import tqdm

from tlk_components.adaptation.intensity import ensure_alignment, ensure_quantile_map
from tlk_components.data import kidney
from tlk_components.data.datasets import DatasetReport, ensure_demo
from tlk_components.data.inputs import case_name
from tlk_components.data.nifti_checks import CasePair, check_pairs
from tlk_components.data.plan import ensure_plans, load_plans
from tlk_components.data.registry import prepare_dataset
from tlk_components.data.transforms import BODY_HU
from tlk_components.engines.evaluators.kidney import kidney_parts
from tlk_components.engines.handlers.reporting import save_bar_chart
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import atomic_write_json, atomic_write_text, load_weights, sha256_file
from tlk_components.utils.validation import check_in_range

__all__ = [
    "BUNDLE",
    "CaseScores",
    "TargetDiceEvaluation",
    "case_scores",
    "patch_label_share",
    "patch_size_prior",
    "model_transforms",
    "plan_kidney_prior",
    "prepare_domains",
    "prepare_stage",
    "scaled_prior",
    "with_labels",
]

BUNDLE = "kidney_ct_da_segmentation"
logger = logging.getLogger(__name__)


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def prepare_domains(
    layout: kidney.KidneyLayout,
    demo_dir: str | os.PathLike,
    target_labels: bool = True,
) -> kidney.KidneyLayout:
    """Write the demo when needed, then verify the source fully and the target (labels only if allowed).

    Args:
        layout: where the domains are (:func:`tlk_components.data.kidney.resolve_layout` of ``--dataset_dir``,
            ``--source_dir``, ``--target_dir``).
        demo_dir: the bundle's demo folder (written on first use when ``layout.root`` is it).
        target_labels: False for label-free adaptation: the target is verified from its images alone.

    Returns:
        ``layout``.

    Raises:
        DatasetError: listing every bad case of both domains.
    """
    ensure_demo(BUNDLE, kidney.write_demo, layout.root, demo_dir)
    if target_labels and _inside(layout.source, layout.root) and _inside(layout.target, layout.root):
        prepare_dataset(BUNDLE, layout.root, demo_dir)
        return layout
    report = DatasetReport(f"{layout.source} + {layout.target}", fix=kidney._FIX)
    src = kidney.verify_dataset(layout.source)
    report.problems += src.problems
    report.n_cases += src.n_cases
    if target_labels:
        tgt = kidney.verify_dataset(layout.target)
        report.problems += tgt.problems
        report.n_cases += tgt.n_cases
    else:
        try:
            items = layout.target_datalist("all", labels=False)
        except DatasetError as e:
            report.add(str(layout.target), str(e))
            items = []
        pairs = [CasePair(Path(it["image"]).parent.name, Path(it["image"]), None) for it in items]
        if pairs:
            check_pairs(pairs, report, require_labels=False)
            report.n_cases += len(pairs)
    report.raise_if_bad()
    return layout


def prepare_stage(
    layout: kidney.KidneyLayout,
    plans_file: str | os.PathLike,
    plan_settings: Mapping[str, Any],
    alignment_file: str | os.PathLike,
    source_train_list: Sequence[Mapping[str, str]],
    target_train_list: Sequence[Mapping[str, str]],
    align_intensity: bool | None = True,
    quantile_map_file: str | os.PathLike | None = None,
) -> str:
    """The ``initialize`` step every kidney stage runs after :func:`prepare_domains`: what is fitted on the data.

    In order: the plan (``plans.json``, :func:`tlk_components.data.plan.ensure_plans` with ``plan_settings``), the
    label-free intensity alignment of the target to the source (:func:`tlk_components.adaptation.intensity.
    ensure_alignment`, when ``align_intensity``) and, for the histogram-matching baseline, the quantile map (when
    ``quantile_map_file`` is given). Each is written once and reused. A separate step from
    :func:`prepare_domains` because its datalists can only be read once the demo data exist.

    Args:
        layout: where the domains are (see :func:`prepare_domains`).
        plans_file: where the plan is (written when missing).
        plan_settings: keyword arguments of :func:`tlk_components.data.plan.plan` (``max_patch_voxels``,
            ``memory_voxels``).
        alignment_file: the alignment parameters (fitted on the training lists when missing).
        source_train_list, target_train_list: the datalists the alignment and quantile map are fitted on (the
            target's images only).
        align_intensity: ``enabled`` of :func:`~tlk_components.adaptation.intensity.ensure_alignment`: True fits
            the alignment, False writes the identity, None (pretraining, oracle, evaluation) leaves the map the last
            adaptation wrote. Default True.
        quantile_map_file: the histogram-matching map, fitted when missing; None (default): not needed.

    Returns:
        ``plans_file`` as a string.
    """
    ensure_plans(layout.root, plans_file, source_dir=layout.source, target_dir=layout.target, **dict(plan_settings))
    ensure_alignment(alignment_file, source_train_list, target_train_list, enabled=align_intensity)
    if quantile_map_file is not None:
        ensure_quantile_map(quantile_map_file, source_train_list, target_train_list)
    return str(plans_file)


def model_transforms(
    aligned_models: Sequence[str],
    aligned: Callable,
    histmatch_models: Sequence[str] = (),
    histmatch: Callable | None = None,
) -> dict[str, Callable]:
    """The evaluation preprocessing of the models that do not use the default one.

    Args:
        aligned_models: models adapted with the target intensity alignment: they get ``aligned``.
        aligned: load, align, resample (``evaluate.json``'s ``eval_preprocessing_aligned``).
        histmatch_models: the histogram-matching baselines: they get ``histmatch``.
        histmatch: load, quantile-match, resample; needed when ``histmatch_models`` is not empty.

    Returns:
        ``{model name: preprocessing}`` for :class:`TargetDiceEvaluation`'s ``model_transforms``.

    Raises:
        ConfigError: a model in both lists, or histogram-matching models without ``histmatch``.
    """
    both = sorted(set(aligned_models) & set(histmatch_models))
    if both:
        raise ConfigError(f"models {both} are in both aligned_models and histmatch_models; put each in one")
    if histmatch_models and histmatch is None:
        raise ConfigError("histmatch_models are given but no histmatch preprocessing; pass histmatch")
    return {**{k: aligned for k in aligned_models}, **{k: histmatch for k in histmatch_models}}


def _coverage(length: int, patch: int) -> np.ndarray:
    """How many of the ``length - patch + 1`` patch positions along one axis cover each index (patch <= length)."""
    n = length - patch + 1
    i = np.arange(length)
    return (np.minimum(i, n - 1) - np.maximum(0, i - patch + 1) + 1).astype(np.float64)


def patch_label_share(label: np.ndarray | torch.Tensor, patch_size: Sequence[int]) -> float:
    """Expected foreground share (label > 0) of a patch drawn uniformly at random from a volume.

    A voxel at index ``i`` along an axis of length ``L`` lies in ``c(i) = min(i, L-p) - max(0, i-p+1) + 1`` of the
    ``L - p + 1`` positions of a patch of size ``p``, so the expected share is
    ``sum_{v in fg} prod_a c_a(v_a) / prod_a ((L_a - p_a + 1) p_a)`` — the same as MONAI ``RandSpatialCropd`` with
    a fixed ``roi_size`` (``random_size=False``). Voxels near the volume's border lie in fewer patches, so on a
    volume only a few patches wide the interior (where the kidneys are) weighs up to several times more than in
    the plain voxel share.

    Args:
        label: ``(1, *S)`` or ``(*S)`` labels.
        patch_size: one size per spatial axis; an axis shorter than its patch counts as one position.

    Raises:
        ValueError: ``patch_size`` has another length than the label's spatial axes.
    """
    lab = torch.as_tensor(label)
    lab = lab[0] if lab.ndim == len(patch_size) + 1 and lab.shape[0] == 1 else lab
    if lab.ndim != len(patch_size):
        raise ValueError(f"patch_size {list(patch_size)} does not match a label of shape {tuple(lab.shape)}")
    idx = np.nonzero(lab.cpu().numpy() > 0)
    num = np.ones(len(idx[0]))
    den = 1.0
    for axis, (length, p) in enumerate(zip(lab.shape, patch_size, strict=True)):
        p = min(int(p), int(length))
        num *= _coverage(int(length), p)[idx[axis]]
        den *= (length - p + 1) * p
    return float(num.sum() / den)


def patch_size_prior(
    prior_file: str | os.PathLike,
    source_datalist: Sequence[Mapping[str, str]],
    preprocessing: Any,
    patch_size: Sequence[int],
    plans_file: str | os.PathLike | None = None,
) -> list[float]:
    """``[background, kidney]``: the expected kidney share of a random patch of a preprocessed SOURCE volume.

    Label-free adaptation computes its size term on random target patches (``RandSpatialCropd`` of the cached,
    body-cropped volume), so the prior is that same quantity on the labelled source: the source cases are run
    through ``preprocessing`` (the cached part of the pipeline: resampling, body crop, padding, label map) and
    :func:`patch_label_share` is averaged over cases (the loader draws cases uniformly). The value is computed once
    and kept in ``prior_file`` (JSON with the source image list, the patch size and the plan's sha256; recomputed
    when any of them changes). The kidney share of whole volumes or of body voxels is not what a patch sees: on the
    demo a random body patch holds ~2x the body-voxel share, because patches overlap the interior more than the
    border.

    Args:
        prior_file: JSON cache of the value (e.g. ``<ckpt_dir>/size_prior.json``), written atomically.
        source_datalist: labelled source items (``image``, ``label``).
        preprocessing: the deterministic preprocessing whose output the patches are cut from; maps the source labels
            to ``{0: background, 1: kidney}``.
        patch_size: the adapter's patch size.
        plans_file: the plan the preprocessing follows (spacing, normalisation); a re-plan recomputes the prior.

    Raises:
        DatasetError: no labelled source item, or no kidney voxel in them.
    """
    items = [d for d in source_datalist if d.get("label")]
    if not items:
        raise DatasetError("patch_size_prior: the source datalist has no labelled case; check --source_dir")
    key = {
        "images": [str(d["image"]) for d in items],
        "patch_size": [int(p) for p in patch_size],
        "plan_sha256": sha256_file(plans_file) if plans_file is not None and Path(plans_file).is_file() else None,
    }
    path = Path(prior_file)
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if {k: cached.get(k) for k in key} == key:
                return [1.0 - float(cached["kidney_share"]), float(cached["kidney_share"])]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            logger.warning("%s: unreadable, recomputing the size prior", path)
    shares = [patch_label_share(preprocessing(dict(d))["label"], patch_size) for d in items]
    k = float(np.mean(shares))
    if k <= 0:
        raise DatasetError(
            f"patch_size_prior: the {len(items)} source labels hold no kidney voxel after preprocessing; check "
            "--source_dir and the label map"
        )
    atomic_write_json(path, {**key, "kidney_share": k, "per_case": shares})
    logger.info(
        "size prior: kidney share of a random %s patch of the source = %.5f (%d cases)",
        key["patch_size"],
        k,
        len(items),
    )
    return [1.0 - k, k]


def plan_kidney_prior(
    plans_file: str | os.PathLike, kidney_labels: Sequence[int] = kidney.AMOS_KIDNEY_CHANNELS
) -> list[float]:
    """``[background, kidney]``: the kidney share of the source's **body** voxels (image > -500 HU), from the plan.

    A volume-level prior: what share of a whole scan's body is kidney, recorded by the plan's fingerprint
    (``body_label_shares``). Used by the zero-training baseline that thresholds each target volume's kidney
    probability so that this share of its body is predicted kidney (:class:`TargetDiceEvaluation`
    ``foreground_shares``). It is not the patch prior of the adapter (:func:`patch_size_prior`): a random patch of a
    body-cropped volume over-represents the interior. It changes with the scan length (a chest-abdomen-pelvis scan
    holds more non-kidney body than a kidney-centred one).

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


@dataclass(frozen=True)
class CaseScores:
    """One case's scores of one model (:meth:`TargetDiceEvaluation.score_cases`).

    Attributes:
        dice: kidney(+tumour) Dice: prediction vs label > 0 (the KiTS19 kidney composite), in [0, 1].
        parenchyma_dice: Dice of the prediction vs label 1 with the tumour voxels (label 2) left out of both, i.e. how
            well the kidney tissue itself is found; equals ``dice`` when the case has no tumour; NaN when there is
            neither kidney tissue in the label nor outside the tumour in the prediction.
        tumour_recall: share of the tumour voxels predicted as kidney, in [0, 1]; None when the case has no tumour.
    """

    dice: float
    parenchyma_dice: float
    tumour_recall: float | None


def case_scores(pred: torch.Tensor, label: torch.Tensor) -> CaseScores:
    """Kidney(+tumour) Dice, parenchyma Dice and tumour recall of a binary prediction (see :class:`CaseScores`; the
    parts are :func:`tlk_components.engines.evaluators.kidney.kidney_parts`, as the evaluation CLI reports them).

    Args:
        pred: kidney mask, any shape, nonzero = kidney.
        label: KiTS19 label of the same shape (0 background, 1 kidney, 2 tumour; AMOS-style labels without 2 work).

    Raises:
        ValueError: the shapes differ.
    """
    parts = kidney_parts(pred, label)
    p = pred != 0
    dice = compute_dice(p.float()[None, None], (label > 0).float()[None, None], ignore_empty=False)
    return CaseScores(
        dice=float(dice.item()),
        parenchyma_dice=parts["kidney_tissue_dice"],
        tumour_recall=None if math.isnan(parts["tumour_found"]) else parts["tumour_found"],
    )


class TargetDiceEvaluation:
    """Kidney Dice of several checkpoints on the same labelled target cases, side by side.

    ``metrics.json`` holds ``<metric_prefix>_<model>`` (mean kidney(+tumour) Dice) and ``per_case``; when any label
    holds tumour voxels also ``<metric_prefix>_parenchyma_<model>`` (tumour voxels left out) and
    ``target_tumour_recall_<model>`` (mean over the cases with a tumour), see :class:`CaseScores`.

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
        foreground_shares: model name -> share in (0, 1): instead of the argmax, each case's kidney probability is
            thresholded so that this share of its body voxels (image > -500 HU, original geometry) is kidney (the
            prior-matched threshold baseline; the share of a volume prior such as :func:`plan_kidney_prior`).

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
        foreground_shares: Mapping[str, float] | None = None,
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
        self.foreground_shares = {
            k: check_in_range(f"foreground_shares[{k!r}]", v, 0.0, 1.0, low_inclusive=False)
            for k, v in (foreground_shares or {}).items()
        }

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.inferer(x, self.network)

    def score_cases(
        self, path: str | os.PathLike, transforms: Any = None, foreground_share: float | None = None
    ) -> list[CaseScores]:
        """Per-case scores of the weights at ``path`` in the original geometry (same order as the datalist); with
        ``foreground_share`` the kidney is the top ``foreground_share`` of the body voxels by kidney probability.

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
                *([AsDiscreted("pred", argmax=True)] if foreground_share is None else []),
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
                if foreground_share is not None:
                    body = load_label(item["image"]) > BODY_HU
                    prob = torch.as_tensor(pred)[1:2]
                    t = torch.quantile(
                        prob[body].float()[:: max(1, int(body.sum()) // 2_000_000)], 1.0 - foreground_share
                    )
                    pred = ((prob > t) & body).to(torch.uint8)
                label = load_label(item["label"])
                if tuple(pred.shape[1:]) != tuple(label.shape[1:]):
                    raise DatasetError(
                        f"{item['label']}: label shape {tuple(label.shape[1:])} differs from its image's "
                        f"{tuple(pred.shape[1:])}; the label must lie on its image's voxel grid"
                    )
                scores.append(case_scores(torch.as_tensor(pred)[0] == 1, torch.as_tensor(label)[0]))
        return scores

    def run(self) -> dict[str, Any]:
        """Evaluate every existing checkpoint, write the reports, log the table; returns the metrics dict."""
        present = {k: v for k, v in self.checkpoints.items() if Path(v).is_file()}
        if not present:
            raise ConfigError(
                f"no checkpoint to evaluate: none of {list(self.checkpoints.values())} exists; run pretrain.json "
                "and train.json first (or pass --ckpt_dir)"
            )
        scored = {
            name: self.score_cases(path, self.model_transforms.get(name), self.foreground_shares.get(name))
            for name, path in present.items()
        }
        per_model = {name: [s.dice for s in v] for name, v in scored.items()}
        cases = [
            case_name(d["image"]) if isinstance(d["image"], str | os.PathLike) else f"case_{i}"
            for i, d in enumerate(self.datalist)
        ]
        metrics: dict[str, Any] = {f"{self.metric_prefix}_{k}": float(np.mean(v)) for k, v in per_model.items()}
        metrics["per_case"] = {k: dict(zip(cases, v, strict=True)) for k, v in per_model.items()}
        metrics["n_cases"] = len(cases)
        with_tumour = [i for i, s in enumerate(next(iter(scored.values()))) if s.tumour_recall is not None]
        if with_tumour:
            for k, v in scored.items():
                metrics[f"{self.metric_prefix}_parenchyma_{k}"] = float(np.nanmean([s.parenchyma_dice for s in v]))
                metrics[f"target_tumour_recall_{k}"] = float(np.mean([v[i].tumour_recall for i in with_tumour]))
            metrics["n_cases_with_tumour"] = len(with_tumour)
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
        if not with_tumour:
            table = [f"| model | target kidney Dice (mean over {len(cases)} cases) |", "|---|---|"]
            table += [f"| {k} | {np.mean(v):.4f} |" for k, v in per_model.items()]
        else:  # which part each model misses: the kidney tissue or the tumours (KiTS19 labels)
            table = [
                f"| model | target kidney Dice (mean over {len(cases)} cases) | kidney tissue Dice (tumour left out) "
                f"| tumour voxels found ({len(with_tumour)} cases) |",
                "|---|---|---|---|",
            ]
            table += [
                f"| {k} | {np.mean(per_model[k]):.4f} | {metrics[f'{self.metric_prefix}_parenchyma_{k}']:.4f} "
                f"| {metrics[f'target_tumour_recall_{k}']:.3f} |"
                for k in per_model
            ]
        text = "\n".join(table)
        atomic_write_text(self.output_dir / "dice_table.md", text + "\n")
        print(text, flush=True)
        return metrics
