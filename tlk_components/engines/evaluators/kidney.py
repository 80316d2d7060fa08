# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Evaluate a folder of kidney predictions (NIfTI, original geometry) against KiTS19 or AMOS22 labels.

The predictions are label maps on the voxel grid of each case's original image file, as the inference of
``kidney_ct_da_segmentation`` writes them (``<case>_seg.nii.gz``, the preprocessing inverted; see
:mod:`tlk_components.engines.inference.segmentation`). Nothing is resampled here: a prediction whose shape or affine differs
from its label is refused.

Metrics, per case, on binary masks ``P`` (prediction) and ``G`` (ground truth):

* **Dice** ``= 2 |P ∩ G| / (|P| + |G|)`` (MONAI :func:`monai.metrics.compute_dice`). ``G`` empty and ``P`` not:
  0. Both empty: undefined, reported as NaN (``null`` in JSON) and left out of every mean and std;
* **HD95** (optional, ``hd95=True``): the 95th percentile of the symmetric surface distances in mm, with the
  label's voxel spacing (MONAI :func:`monai.metrics.compute_hausdorff_distance`). The conventions of
  :func:`tlk_components.engines.evaluators.segmentation.case_metrics`: ``G`` empty -> NaN; ``G`` present but ``P`` empty -> the
  volume's diagonal in mm (the largest distance possible in the image, instead of ``inf``, so means stay finite).

Structures:

* **KiTS19** (labels 0 background, 1 kidney, 2 tumour): *kidney* is the KiTS19 "kidney + tumour" composite,
  ``G = label > 0`` vs ``P = prediction > 0`` (the bundle predicts kidney including tumour as one class).
  *Tumour* (``label == 2`` vs ``prediction == 2``) is evaluated only when the predictions contain a tumour class:
  when any prediction of the folder holds the value 2 (a 3-class model), tumour Dice is computed for every case
  (0 where a case's prediction has no tumour); otherwise it is ``null`` / "not predicted". The KiTS19 challenge
  *composite* is the mean of the kidney + tumour Dice and the tumour Dice (per case, and over the dataset as the
  mean of the two dataset means), only when tumour is evaluated. Which part of the composite a prediction misses
  (:func:`kidney_parts`, every case): *kidney tissue Dice*, ``label == 1`` vs ``P`` with the tumour voxels left
  out of both, and *tumour found*, the share of the ``label == 2`` voxels inside ``P`` (NaN without a tumour). A
  kidney-only model (trained on AMOS-like labels, which hold no tumour) can score well on the first and poorly on
  the second, which the composite alone hides.
* **AMOS22** (15 organs; 2 right kidney, 3 left kidney): ``G`` = label 2 ∪ 3. Predictions with values in {0, 1}
  only (the bundle's binary output, all files of the folder) are read as 1 = kidney. When any prediction holds a
  value above 1, all predictions are read in AMOS label values: ``P`` = prediction 2 ∪ 3, and the per-side Dice is
  reported too (right: 2 vs 2, left: 3 vs 3).

Prediction file names accepted (in ``pred_dir``; ``.nii.gz`` or ``.nii``; other files such as the ``*_overlay.png``
of inference and hidden files are ignored; every other NIfTI is an error):

* KiTS19: ``case_NNNNN_seg`` (what inference writes for ``case_NNNNN/imaging.nii.gz``), ``case_NNNNN``,
  ``prediction_NNNNN`` (the KiTS19 submission naming), and more generally ``case_NNNNN_<suffix>``. The case number
  is matched numerically to the ``case_NNNNN`` folders (``segmentation.nii.gz``, else ``segmentation.nii``).
* AMOS22: ``amos_NNNN_seg`` (what inference writes), ``amos_NNNN``, ``amos_NNNN_<suffix>``, matched numerically to
  the labels listed in ``dataset.json`` (``training``/``validation``) or found in ``labelsTr/``, ``labelsVa/``,
  ``labelsTs/``.

Outputs (written atomically into ``output_dir``): ``per_case_metrics.csv`` (one row per case), ``metrics.json``
(mean, std and number of measured cases per metric, ``n_cases``, the per-case rows) and ``dice_per_case.png``
(per-case kidney Dice bars, tumour bars too when evaluated). Std is the sample standard deviation (``ddof=1``;
``null`` for fewer than two measured cases).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from tlk_components.data.kidney import kits19_case_file, resolve_layout
from tlk_components.engines.evaluators.segmentation import write_csv
from tlk_components.engines.handlers.reporting import save_figure, to_jsonable
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import atomic_write_json, ensure_output_dir
from tlk_components.utils.validation import parse_flag

__all__ = [
    "AFFINE_TOLERANCE",
    "binary_metrics",
    "evaluate_amos22",
    "evaluate_kidney",
    "evaluate_kits19",
    "match_predictions",
]

#: Largest allowed absolute difference between prediction and label affines: (rotation/zoom part, translation in
#: mm). Headers store float32, so copies of one affine agree to ~1e-5; anything larger is another geometry.
AFFINE_TOLERANCE: tuple[float, float] = (1e-3, 1e-2)

_KITS_PRED = re.compile(r"(?:case|prediction)_(\d+)(?:_\w+)?")
_AMOS_PRED = re.compile(r"amos_(\d+)(?:_\w+)?")
_KITS_PATTERNS = "case_NNNNN_seg.nii.gz (inference), case_NNNNN.nii.gz, prediction_NNNNN.nii.gz (or .nii)"
_AMOS_PATTERNS = "amos_NNNN_seg.nii.gz (inference), amos_NNNN.nii.gz (or .nii)"
_GEOMETRY_FIX = (
    "predictions must be in the original geometry of each case (same voxel grid as the label file: shape and "
    "affine); invert the preprocessing before saving (the bundle's inference.json does: it writes <case>_seg.nii.gz "
    "with the input image's header)"
)
_NOT_PREDICTED = "not predicted"


# ------------------------------------------------------------------------------------------------------ metrics


def binary_metrics(
    pred: np.ndarray, label: np.ndarray, spacing: Sequence[float] | None = None, hd95: bool = False
) -> dict[str, float]:
    """Dice (and HD95) of two binary masks of one case.

    ``Dice = 2 |P ∩ G| / (|P| + |G|)`` (MONAI ``compute_dice``); 0 when only ``G`` is empty, NaN when both are
    empty (left out of means). HD95 in mm (MONAI ``compute_hausdorff_distance``, 95th percentile): NaN when ``G``
    is empty, the volume diagonal in mm when ``G`` is present but ``P`` empty (as
    :func:`tlk_components.engines.evaluators.segmentation.case_metrics`).

    Args:
        pred: prediction mask ``P`` (any array; non-zero = inside).
        label: ground-truth mask ``G``, same shape.
        spacing: voxel size in mm per axis (default 1 mm).
        hd95: also compute HD95 (slower); default False (then ``hd95`` is NaN).

    Returns:
        ``{"dice", "hd95", "pred_voxels", "label_voxels"}``.

    Raises:
        ValueError: the shapes differ.
    """
    p = torch.as_tensor(np.asarray(pred) != 0)
    g = torch.as_tensor(np.asarray(label) != 0)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} differs from label shape {tuple(g.shape)}")
    n_p, n_g = int(p.sum()), int(g.sum())
    if n_p == 0 and n_g == 0:
        dice = float("nan")
    else:
        dice = float(compute_dice(p[None, None], g[None, None], include_background=True, ignore_empty=False)[0, 0])
    hd = float("nan")
    if hd95 and n_g > 0:
        sp = [1.0] * p.ndim if spacing is None else [float(s) for s in spacing]
        if n_p == 0:
            hd = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, sp, strict=True))))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hd = float(
                    compute_hausdorff_distance(
                        p[None, None], g[None, None], include_background=True, percentile=95, spacing=sp
                    )[0, 0]
                )
    return {"dice": dice, "hd95": hd, "pred_voxels": n_p, "label_voxels": n_g}


def kidney_parts(pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Which part of the KiTS19 kidney(+tumour) label a kidney prediction finds.

    Args:
        pred: prediction, any shape; non-zero = kidney (a tumour class counts as kidney).
        label: KiTS19 label map of the same shape (0 background, 1 kidney, 2 tumour).

    Returns:
        ``{"kidney_tissue_dice", "tumour_found"}``: the Dice (:func:`binary_metrics`) of ``pred`` and ``label ==
        1`` with the tumour voxels left out of both, and ``|P ∩ T| / |T|`` for the tumour ``T`` (NaN when the case
        has no tumour), in [0, 1].

    Raises:
        ValueError: the shapes differ.
    """
    p, g = torch.as_tensor(np.asarray(pred) != 0), torch.as_tensor(np.asarray(label))
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} differs from label shape {tuple(g.shape)}")
    tumour = g == 2
    n_tumour = int(tumour.sum())
    return {
        "kidney_tissue_dice": binary_metrics((p & ~tumour).numpy(), (g == 1).numpy())["dice"],
        "tumour_found": float((p & tumour).sum()) / n_tumour if n_tumour else float("nan"),
    }


def _stats(values: Sequence[Any]) -> dict[str, Any]:
    """Mean, sample std and count over the finite numbers of ``values`` (NaN, None and text left out)."""
    arr = np.array(
        [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    )
    return {
        "mean": float(arr.mean()) if arr.size else None,
        "std": float(arr.std(ddof=1)) if arr.size > 1 else None,
        "n": int(arr.size),
    }


# ------------------------------------------------------------------------------------------------- file matching


def _strip_nii(name: str) -> str | None:
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


def match_predictions(
    pred_dir: str | os.PathLike, pattern: re.Pattern[str], case_id: Callable[[int], str], patterns_text: str
) -> dict[str, Path]:
    """The prediction files of ``pred_dir``, by case id.

    Args:
        pred_dir: folder of prediction NIfTIs (``.nii.gz`` or ``.nii``; hidden and non-NIfTI files are ignored).
        pattern: regular expression matched against the whole file stem; group 1 is the case number.
        case_id: case number -> case id (``case_00012``).
        patterns_text: the accepted names, for messages.

    Returns:
        ``{case_id: path}`` sorted by case id.

    Raises:
        DatasetError: the folder does not exist or holds no NIfTI; NIfTIs whose names match no accepted pattern
            (all listed); two files for one case (all listed).
    """
    base = Path(pred_dir)
    if not base.is_dir():
        raise DatasetError(
            f"prediction folder {base} does not exist; run inference first (python -m monai.bundle run --config_file "
            "configs/inference.json --input_dir DATA --output_dir PRED_DIR) and pass --pred_dir PRED_DIR"
        )
    files = sorted(p for p in base.iterdir() if p.is_file() and not p.name.startswith(".") and _strip_nii(p.name))
    if not files:
        raise DatasetError(
            f"{base}: no prediction NIfTI (.nii.gz / .nii) found; run inference first (python -m monai.bundle run "
            "--config_file configs/inference.json --input_dir DATA --output_dir PRED_DIR), or pass the folder that "
            f"holds the predictions. Accepted names: {patterns_text}"
        )
    found: dict[str, list[Path]] = {}
    unknown = []
    for f in files:
        m = pattern.fullmatch(_strip_nii(f.name) or "")
        if m is None:
            unknown.append(f"{f.name}: name not recognised")
        else:
            found.setdefault(case_id(int(m.group(1))), []).append(f)
    if unknown:
        raise DatasetError(
            f"{base}: {len(unknown)} NIfTI file(s) whose names match no case; rename them ({patterns_text}) or move "
            "them out of the prediction folder",
            unknown,
        )
    dups = [f"{case}: {', '.join(p.name for p in paths)}" for case, paths in found.items() if len(paths) > 1]
    if dups:
        raise DatasetError(
            f"{base}: {len(dups)} case(s) have more than one prediction file; keep one per case (move the others out)",
            dups,
        )
    return {case: paths[0] for case, paths in sorted(found.items())}


def _check_pairs(pairs: Sequence[tuple[str, Path, Path]]) -> dict[str, tuple[nib.Nifti1Image, nib.Nifti1Image]]:
    """Load headers and check prediction and label geometry for every pair; raise one error listing all problems."""
    problems, loaded = [], {}
    tol_m, tol_t = AFFINE_TOLERANCE
    for case, pred, label in pairs:
        try:
            pimg, limg = nib.load(str(pred)), nib.load(str(label))
        except Exception as e:  # nibabel raises many kinds on bad files
            problems.append(f"{case}: cannot read {pred} or {label} ({type(e).__name__}: {str(e)[:200]})")
            continue
        pshape, lshape = _shape3(pimg.shape), _shape3(limg.shape)
        if pshape is None or lshape is None:
            problems.append(
                f"{case}: expected 3-D volumes; prediction {pred} has shape {pimg.shape}, label {label} "
                f"has shape {limg.shape}"
            )
            continue
        diff = np.abs(np.asarray(pimg.affine, float) - np.asarray(limg.affine, float))
        if pshape != lshape:
            problems.append(f"{case}: prediction {pred} has shape {pshape}, its label {label} has shape {lshape}")
        elif diff[:3, :3].max() > tol_m or diff[:3, 3].max() > tol_t:
            problems.append(
                f"{case}: prediction {pred} has another affine than its label {label} (largest difference "
                f"{diff[:3].max():.4g}; prediction voxel size {_zooms(pimg)} mm, label {_zooms(limg)} mm)"
            )
        else:
            loaded[case] = (pimg, limg)
    if problems:
        raise DatasetError(
            f"{len(problems)} prediction(s) are not on the voxel grid of their label; {_GEOMETRY_FIX}", problems
        )
    return loaded


def _shape3(shape: Sequence[int]) -> tuple[int, ...] | None:
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape if len(shape) == 3 else None


def _zooms(img: nib.Nifti1Image) -> tuple[float, ...]:
    return tuple(round(float(z), 4) for z in img.header.get_zooms()[:3])


def _label_map(img: nib.Nifti1Image, path: Path, what: str, max_value: int) -> np.ndarray:
    """Integer label map of a NIfTI (3-D), or DatasetError for non-integer / out-of-range values."""
    data = np.asanyarray(img.dataobj)
    data = data.reshape(_shape3(data.shape) or data.shape)
    if data.dtype.kind == "f":
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise DatasetError(
                f"{path}: {what} holds non-integer values (probabilities?); expected a label map with values "
                f"0..{max_value} (argmax the prediction before saving)"
            )
    out_of_range = (data < 0) | (data > max_value)
    if out_of_range.any():
        bad = [v.item() for v in np.unique(data[out_of_range])[:10]]
        raise DatasetError(f"{path}: {what} holds values {bad} outside 0..{max_value}")
    return data.astype(np.uint8, copy=False)


# ------------------------------------------------------------------------------------------------ dataset roots


def _kits_root(kits_dir: str | os.PathLike) -> Path:
    base = Path(kits_dir)
    root = resolve_layout(base).target if base.is_dir() else base
    if root.is_dir() and any(p.is_dir() for p in root.glob("case_*")):
        return root
    raise DatasetError(
        f"--kits_dir {base}: no KiTS19 case_NNNNN folders found (looked in {root}); pass the KiTS19 folder "
        "(case_00000/segmentation.nii.gz ...), a folder holding kits19/, or the official kits19 repository clone "
        "(kits19/data/case_00000/)"
    )


def _kits_labels(root: Path) -> dict[str, Path | None]:
    out: dict[str, Path | None] = {}
    for case in root.glob("case_*"):
        m = re.fullmatch(r"case_(\d+)", case.name)
        if case.is_dir() and m:
            seg = kits19_case_file(case, "segmentation")  # the .nii.gz / .nii rule of the bundle's data module
            out[f"case_{int(m.group(1)):05d}"] = seg if seg.is_file() else None
    return out


def _amos_root(amos_dir: str | os.PathLike) -> Path:
    base = Path(amos_dir)
    tried = [resolve_layout(base).source]  # the folder itself, or amos22/ of a demo-style folder
    for d in tried:
        if (d / "dataset.json").is_file() or any((d / s).is_dir() for s in ("labelsTr", "labelsVa", "labelsTs")):
            return d
    raise DatasetError(
        f"--amos_dir {base}: no AMOS22 dataset.json or labelsTr/ found (looked in "
        f"{', '.join(str(d) for d in tried)}); pass the AMOS22 folder (dataset.json, labelsTr/amos_0001.nii.gz ...) "
        "or a folder holding amos22/"
    )


def _amos_labels(root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}

    def add(path: Path) -> None:
        m = re.fullmatch(r"amos_(\d+)", _strip_nii(path.name) or "")
        if m and path.is_file():
            out.setdefault(f"amos_{int(m.group(1)):04d}", path)

    meta_path = root / "dataset.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise DatasetError(f"{meta_path}: not readable JSON ({e}); repair or remove it") from None
        if isinstance(meta, dict) and "tlk_conversion" in meta:
            raise DatasetError(
                f"{root}: a converted (RAS-reoriented) dataset, not the original AMOS22 labels; pass the original "
                "AMOS22 folder as --amos_dir (predictions are compared in the original geometry)"
            )
        for key in ("training", "validation"):
            for item in meta.get(key, []) if isinstance(meta, dict) else []:
                if isinstance(item, dict) and item.get("label"):
                    add(root / str(item["label"]))
    for sub in ("labelsTr", "labelsVa", "labelsTs"):
        for f in sorted((root / sub).glob("*.nii*")):
            add(f)
    return out


# -------------------------------------------------------------------------------------------------- evaluation


def _pairs(
    preds: Mapping[str, Path], labels: Mapping[str, Path | None], labels_dir: Path, expected: str
) -> list[tuple[str, Path, Path]]:
    missing = [f"{case}: {p.name} has no label ({expected})" for case, p in preds.items() if not labels.get(case)]
    if missing:
        raise DatasetError(
            f"{len(missing)} prediction(s) have no ground-truth label in {labels_dir}; evaluate only labelled cases "
            "(move these predictions out, or pass the dataset folder they were predicted from)",
            missing,
        )
    return [(case, p, labels[case]) for case, p in preds.items()]  # type: ignore[misc]


def _volume_ml(voxels: int, img: nib.Nifti1Image) -> float:
    return voxels * float(np.prod(img.header.get_zooms()[:3])) / 1000.0


def evaluate_kits19(
    pred_dir: str | os.PathLike, kits_dir: str | os.PathLike, output_dir: str | os.PathLike, hd95: bool = False
) -> dict[str, Any]:
    """Evaluate kidney predictions against KiTS19 labels (kidney + tumour composite Dice; tumour Dice if predicted).

    Kidney Dice ``= 2 |P ∩ G| / (|P| + |G|)`` with ``G = segmentation > 0`` (kidney + tumour) and ``P = prediction
    > 0``; tumour Dice with ``segmentation == 2`` vs ``prediction == 2``, only when some prediction holds the value
    2 (else ``null``, "not predicted"). Both masks empty: NaN, left out of the means. See the module docstring.

    Args:
        pred_dir: folder of predictions in each case's original geometry (``case_NNNNN_seg.nii.gz`` as inference
            writes them, ``case_NNNNN.nii.gz``, ``prediction_NNNNN.nii.gz``; ``.nii`` too), values 0/1 (kidney) or
            0/1/2 (kidney, tumour).
        kits_dir: the KiTS19 folder of ``case_NNNNN/`` subfolders, a folder holding ``kits19/``, or the official
            kits19 repository clone (``data/case_NNNNN/``); labels ``segmentation.nii.gz`` or ``segmentation.nii``.
        output_dir: folder for ``per_case_metrics.csv``, ``metrics.json`` and ``dice_per_case.png`` (created).
        hd95: also compute the kidney HD95 in mm (slower); default False.

    Returns:
        The content of ``metrics.json``: ``dataset``, ``n_cases``, ``kidney_dice`` / ``kidney_hd95_mm`` /
        ``kidney_tissue_dice`` / ``tumour_found`` (:func:`kidney_parts`) / ``tumour_dice`` /
        ``kits19_composite_dice`` (each ``{"mean", "std", "n"}``, or None when not evaluated),
        ``tumour_evaluated``, notes and ``per_case`` rows (NaN as None).

    Raises:
        DatasetError: no predictions (run inference first), unrecognised or duplicate prediction names, a
            prediction without a label (all listed), a prediction not on its label's grid (both files named), values
            outside 0..2 or non-integer.
        ConfigError: ``output_dir`` cannot be written.
    """
    hd95 = parse_flag("hd95", hd95)
    output_dir = Path(ensure_output_dir(output_dir))
    root = _kits_root(kits_dir)
    preds = match_predictions(pred_dir, _KITS_PRED, lambda n: f"case_{n:05d}", _KITS_PATTERNS)
    pairs = _pairs(preds, _kits_labels(root), root, "expected case_NNNNN/segmentation.nii.gz or .nii")
    images = _check_pairs(pairs)
    rows, tumour_predicted = [], False
    for case, pred_path, label_path in pairs:
        pimg, limg = images[case]
        pred = _label_map(pimg, pred_path, "prediction", 2)
        label = _label_map(limg, label_path, "KiTS19 label", 2)
        spacing = limg.header.get_zooms()[:3]
        kid = binary_metrics(pred > 0, label > 0, spacing, hd95=hd95)
        tum = binary_metrics(pred == 2, label == 2)
        tumour_predicted |= tum["pred_voxels"] > 0
        rows.append(
            {
                "case": case,
                "kidney_dice": kid["dice"],
                **({"kidney_hd95_mm": kid["hd95"]} if hd95 else {}),
                **kidney_parts(pred, label),
                "tumour_dice": tum["dice"],
                "kits19_composite_dice": float("nan"),
                "kidney_volume_pred_ml": _volume_ml(kid["pred_voxels"], limg),
                "kidney_volume_label_ml": _volume_ml(kid["label_voxels"], limg),
                "prediction": pred_path.name,
                "label": str(label_path),
            }
        )
    for r in rows:
        if not tumour_predicted:
            r["tumour_dice"] = _NOT_PREDICTED
            r["kits19_composite_dice"] = _NOT_PREDICTED
        elif math.isfinite(r["kidney_dice"]) and math.isfinite(r["tumour_dice"]):
            r["kits19_composite_dice"] = (r["kidney_dice"] + r["tumour_dice"]) / 2
    kidney, tumour = _stats([r["kidney_dice"] for r in rows]), _stats([r["tumour_dice"] for r in rows])
    composite = None
    if tumour_predicted:
        composite = _stats([r["kits19_composite_dice"] for r in rows])
        if kidney["mean"] is not None and tumour["mean"] is not None:
            composite["challenge_score"] = (kidney["mean"] + tumour["mean"]) / 2
    summary = {
        "dataset": "KiTS19",
        "pred_dir": str(pred_dir),
        "labels_dir": str(root),
        "n_cases": len(rows),
        "kidney_dice": kidney,
        "kidney_hd95_mm": _stats([r["kidney_hd95_mm"] for r in rows]) if hd95 else None,
        "kidney_tissue_dice": _stats([r["kidney_tissue_dice"] for r in rows]),
        "tumour_found": _stats([r["tumour_found"] for r in rows]),
        "tumour_evaluated": tumour_predicted,
        "tumour_dice": tumour if tumour_predicted else None,
        "kits19_composite_dice": composite,
        "notes": _notes(
            "kidney = KiTS19 'kidney + tumour' composite (label > 0 vs prediction > 0)",
            "tumour (label 2 vs prediction 2) evaluated: some prediction holds the value 2"
            if tumour_predicted
            else "tumour not predicted (no prediction holds the value 2): tumour Dice and KiTS19 composite are null",
            "kits19_composite_dice: per case (kidney + tumour Dice) / 2; challenge_score = mean of the two dataset "
            "means; kidney_tissue_dice: label 1 vs prediction > 0, tumour voxels left out of both; tumour_found: share "
            "of the label-2 voxels inside prediction > 0 (cases with a tumour)",
            hd95,
        ),
        "per_case": rows,
    }
    return _write_outputs(summary, output_dir, series={"kidney + tumour": "kidney_dice", "tumour": "tumour_dice"})


def evaluate_amos22(
    pred_dir: str | os.PathLike, amos_dir: str | os.PathLike, output_dir: str | os.PathLike, hd95: bool = False
) -> dict[str, Any]:
    """Evaluate kidney predictions against AMOS22 labels (kidney = AMOS labels 2 ∪ 3; per side when predicted).

    Kidney Dice ``= 2 |P ∩ G| / (|P| + |G|)`` with ``G = label ∈ {2, 3}``; ``P = prediction == 1`` for binary
    predictions (every file of the folder in {0, 1}), else ``P = prediction ∈ {2, 3}`` (AMOS label values) plus the
    right (2) and left (3) kidney Dice. Both masks empty: NaN, left out of the means. See the module docstring.

    Args:
        pred_dir: folder of predictions in each case's original geometry (``amos_NNNN_seg.nii.gz`` as inference
            writes them, ``amos_NNNN.nii.gz``; ``.nii`` too).
        amos_dir: the AMOS22 folder (``dataset.json``, ``labelsTr/``, ``labelsVa/``) or a folder holding
            ``amos22/``.
        output_dir: folder for ``per_case_metrics.csv``, ``metrics.json`` and ``dice_per_case.png`` (created).
        hd95: also compute the kidney HD95 in mm (slower); default False.

    Returns:
        The content of ``metrics.json``: ``dataset``, ``n_cases``, ``prediction_values`` (``"binary"`` or
        ``"amos_labels"``), ``kidney_dice``, ``kidney_hd95_mm``, ``right_kidney_dice``, ``left_kidney_dice`` (each
        ``{"mean", "std", "n"}`` or None when not evaluated), notes and ``per_case`` rows.

    Raises:
        DatasetError: no predictions, unrecognised or duplicate names, a prediction without a label (all listed),
            a prediction not on its label's grid (both files named), values outside 0..15 or non-integer, a converted
            (RAS) dataset as ``amos_dir``.
        ConfigError: ``output_dir`` cannot be written.
    """
    hd95 = parse_flag("hd95", hd95)
    output_dir = Path(ensure_output_dir(output_dir))
    root = _amos_root(amos_dir)
    preds = match_predictions(pred_dir, _AMOS_PRED, lambda n: f"amos_{n:04d}", _AMOS_PATTERNS)
    pairs = _pairs(preds, _amos_labels(root), root, "expected labelsTr/ or labelsVa/amos_NNNN.nii.gz")
    images = _check_pairs(pairs)

    def measure(pred: np.ndarray, label: np.ndarray, limg: nib.Nifti1Image, sides: bool) -> dict[str, Any]:
        spacing = limg.header.get_zooms()[:3]
        g = (label == 2) | (label == 3)
        p = ((pred == 2) | (pred == 3)) if sides else pred == 1
        kid = binary_metrics(p, g, spacing, hd95=hd95)
        right = binary_metrics(pred == 2, label == 2)["dice"] if sides else _NOT_PREDICTED
        left = binary_metrics(pred == 3, label == 3)["dice"] if sides else _NOT_PREDICTED
        return {
            "kidney_dice": kid["dice"],
            **({"kidney_hd95_mm": kid["hd95"]} if hd95 else {}),
            "right_kidney_dice": right,
            "left_kidney_dice": left,
            "kidney_volume_pred_ml": _volume_ml(kid["pred_voxels"], limg),
            "kidney_volume_label_ml": _volume_ml(kid["label_voxels"], limg),
        }

    rows, binary_cases, multi = [], [], False
    for case, pred_path, label_path in pairs:
        pimg, limg = images[case]
        pred = _label_map(pimg, pred_path, "prediction", 15)
        label = _label_map(limg, label_path, "AMOS22 label", 15)
        sides = bool(pred.max(initial=0) > 1)
        multi |= sides
        if not sides:
            binary_cases.append(len(rows))
        rows.append(
            {"case": case, **measure(pred, label, limg, sides), "prediction": pred_path.name, "label": str(label_path)}
        )
    if multi:  # the folder holds AMOS label values: re-read the cases that happened to hold only 0/1
        for i in binary_cases:
            case, pred_path, label_path = pairs[i]
            pimg, limg = images[case]
            pred = _label_map(pimg, pred_path, "prediction", 15)
            label = _label_map(limg, label_path, "AMOS22 label", 15)
            rows[i].update(measure(pred, label, limg, True))
    summary = {
        "dataset": "AMOS22",
        "pred_dir": str(pred_dir),
        "labels_dir": str(root),
        "n_cases": len(rows),
        "prediction_values": "amos_labels" if multi else "binary",
        "kidney_dice": _stats([r["kidney_dice"] for r in rows]),
        "kidney_hd95_mm": _stats([r["kidney_hd95_mm"] for r in rows]) if hd95 else None,
        "right_kidney_dice": _stats([r["right_kidney_dice"] for r in rows]) if multi else None,
        "left_kidney_dice": _stats([r["left_kidney_dice"] for r in rows]) if multi else None,
        "notes": _notes(
            "kidney = AMOS22 labels 2 (right) + 3 (left)",
            "predictions in AMOS label values: kidney = prediction 2 or 3; right = 2, left = 3"
            if multi
            else "binary predictions: kidney = prediction 1; per-side Dice not predicted",
            None,
            hd95,
        ),
        "per_case": rows,
    }
    return _write_outputs(summary, output_dir, series={"kidney": "kidney_dice"})


def _notes(structure: str, classes: str, composite: str | None, hd95: bool) -> list[str]:
    notes = [
        structure,
        classes,
        "Dice = 2|P∩G| / (|P|+|G|); both masks empty: NaN (null), left out of means; std: sample std (ddof=1)",
    ]
    if composite:
        notes.append(composite)
    notes.append(
        "kidney HD95 in mm (label spacing); label empty: null; prediction empty: the volume diagonal"
        if hd95
        else "HD95 not computed (pass --hd95 true)"
    )
    return notes


def _write_outputs(summary: dict[str, Any], output_dir: Path, series: Mapping[str, str]) -> dict[str, Any]:
    rows = summary["per_case"]
    write_csv(rows, output_dir / "per_case_metrics.csv")  # "not predicted" as text, NaN as "nan"
    _plot_per_case(rows, series, summary, output_dir / "dice_per_case.png")
    json_rows = [{k: (None if v == _NOT_PREDICTED else v) for k, v in r.items()} for r in rows]
    out = to_jsonable({**summary, "per_case": json_rows})  # NaN and "not predicted" -> null
    atomic_write_json(output_dir / "metrics.json", out)
    return out


def _plot_per_case(
    rows: Sequence[Mapping[str, Any]], series: Mapping[str, str], summary: Mapping[str, Any], path: Path
) -> Path:
    """Per-case Dice bars (one series per measured structure), mean as a dashed line, n/a for undefined values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def num(v: Any) -> float:
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else float("nan")

    shown = {name: [num(r[key]) for r in rows] for name, key in series.items()}
    shown = {k: v for k, v in shown.items() if not all(math.isnan(x) for x in v) or k == next(iter(series))}
    n, k = len(rows), len(shown)
    x = np.arange(n)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.35 * n * k + 2), 40.0), 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, vals) in enumerate(shown.items()):
        pos = x + (i - (k - 1) / 2) * width
        arr = np.asarray(vals)
        ax.bar(pos, np.nan_to_num(arr), width, color=colours[i % len(colours)], label=name)
        for xp in pos[np.isnan(arr)]:
            ax.text(xp, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="grey")
        finite = arr[~np.isnan(arr)]
        if finite.size:
            ax.axhline(
                finite.mean(),
                color=colours[i % len(colours)],
                linestyle="--",
                linewidth=1,
                label=f"mean {name} {finite.mean():.3f}",
            )
    ax.set_xticks(x, [str(r["case"]) for r in rows], rotation=90 if n > 8 else 0, fontsize=8 if n > 30 else 9)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("Dice")
    ax.set_xlabel("case")
    kd = summary["kidney_dice"]
    mean_txt = "n/a" if kd["mean"] is None else f"{kd['mean']:.3f}"
    ax.set_title(f"{summary['dataset']}: Dice per case ({n} cases; mean kidney Dice {mean_txt})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------- CLI


def evaluate_kidney(
    pred_dir: str,
    output_dir: str,
    kits_dir: str | None = None,
    amos_dir: str | None = None,
    hd95: bool = False,
) -> dict[str, Any]:
    """Evaluate kidney predictions (original geometry) against KiTS19 (--kits_dir) or AMOS22 (--amos_dir) labels.

    Dice = 2|P∩G| / (|P|+|G|) per case; both masks empty: NaN, left out of the means. KiTS19: kidney = "kidney +
    tumour" (label > 0 vs prediction > 0), tumour Dice only when predictions hold a tumour class (2). AMOS22:
    kidney = labels 2 ∪ 3. Writes per_case_metrics.csv, metrics.json and dice_per_case.png into OUTPUT_DIR.

    Example:
        python -m tlk_components evaluate_kidney --pred_dir eval/predictions --kits_dir data/kits19 \\
            --output_dir eval/kits19_metrics [--hd95 true]

    Args:
        pred_dir: folder of prediction NIfTIs as inference writes them (``case_00012_seg.nii.gz``,
            ``amos_0001_seg.nii.gz``; also ``case_00012.nii.gz``, ``prediction_00012.nii.gz``, ``.nii``).
        output_dir: folder for the results (created).
        kits_dir: KiTS19 folder (``case_NNNNN/``, a folder holding ``kits19/``, or the kits19 repository clone).
        amos_dir: AMOS22 folder (``dataset.json``, ``labelsTr/``) or a folder holding ``amos22/``.
        hd95: also compute the kidney 95% Hausdorff distance in mm (slower); default false.

    Returns:
        The summary (``metrics.json`` without the per-case rows) and the paths written.

    Raises:
        ConfigError: neither or both of ``kits_dir`` / ``amos_dir`` given; bad ``hd95`` or ``output_dir``.
        DatasetError: see :func:`evaluate_kits19` and :func:`evaluate_amos22`.
    """
    if (kits_dir is None) == (amos_dir is None):
        raise ConfigError(
            "pass exactly one of --kits_dir (KiTS19 labels) or --amos_dir (AMOS22 labels)"
            + (" (both were given)" if kits_dir is not None else "")
        )
    if kits_dir is not None:
        result = evaluate_kits19(str(pred_dir), str(kits_dir), str(output_dir), hd95=parse_flag("hd95", hd95))
    else:
        result = evaluate_amos22(str(pred_dir), str(amos_dir), str(output_dir), hd95=parse_flag("hd95", hd95))
    out = {k: v for k, v in result.items() if k != "per_case"}
    out["outputs"] = [str(Path(output_dir) / f) for f in ("per_case_metrics.csv", "metrics.json", "dice_per_case.png")]
    return out
