# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Data module of ``abdomen_ct_attention_segmentation``: BTCV and MSD ``dataset.json`` layouts.

Layouts read (the first that matches wins):

* MSD / MONAI: ``dataset.json`` with ``labels`` and ``training`` (optionally ``validation``, ``test``) lists of
  ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}`` entries (MONAI's
  ``load_decathlon_datalist`` format; nnU-Net v1 raw folders with ``x_0000.nii.gz`` images are accepted too).
* BTCV folders without a json: ``imagesTr/img0001.nii.gz`` paired with ``labelsTr/label0001.nii.gz``
  (13 organs, labels 0-13), ``imagesTs/img0061.nii.gz`` unlabelled.
* The Synapse download as unpacked (``RawData.zip``): ``RawData/Training/img/img0001.nii.gz`` paired with
  ``RawData/Training/label/label0001.nii.gz``, ``RawData/Testing/img/img0061.nii.gz`` unlabelled; ``dataset_dir``
  may be the folder holding ``RawData`` or ``RawData`` itself.

:func:`detect_layout` decides which one a folder holds (and lists the accepted layouts when none matches).

The demo writer draws multi-organ phantoms (:mod:`tlk_components.data.phantoms`) in the BTCV layout, with a
``dataset.json`` (training/validation/test) next to the folders, like MONAI's BTCV tutorial.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlk_components.data.datasets import DatasetReport
from tlk_components.data.nifti_checks import CasePair, check_folder_not_empty, check_pairs, save_nifti
from tlk_components.data.phantoms import BTCV_LABELS, PhantomStyle, generate_phantom
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import atomic_write_json
from tlk_components.utils.validation import look_up_option

__all__ = [
    "BTCV_CLASS_NAMES",
    "BTCV_STYLE",
    "LAYOUTS",
    "SIZES",
    "DatasetLayout",
    "btcv_datalist",
    "detect_layout",
    "label_names",
    "msd_datalist",
    "msd_pairs",
    "num_classes",
    "read_dataset_json",
    "verify_dataset",
    "write_demo",
]

#: BTCV label value -> organ name (0 = background).
BTCV_CLASS_NAMES: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal vein and splenic vein",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}

#: Appearance of the BTCV demo: portal-venous phase with separable organ intensities, enlarged small organs.
BTCV_STYLE = PhantomStyle(
    hu={
        "soft": -20.0,
        "muscle": 50.0,
        "liver": 110.0,
        "spleen": 125.0,
        "kidney": 185.0,
        "kidney_medulla": 165.0,
        "gallbladder": 5.0,
        "esophagus": 55.0,
        "stomach": 25.0,
        "pancreas": 85.0,
        "duodenum": 45.0,
        "adrenal": 70.0,
        "aorta": 210.0,
        "ivc": 160.0,
        "portal_vein": 190.0,
        "bowel": 35.0,
    },
    noise_std=10.0,
    blur_sigma_mm=(0.0, 0.0, 2.0),
    spacing=(3.0, 3.0, 4.0),
    axcodes="LPS",
    small_organ_scale=1.8,
    perirenal_fat=1.3,
)

#: Demo sizes: (training cases, validation cases, unlabelled test cases, spacing scale).
SIZES: dict[str, tuple[int, int, int, float]] = {"demo": (24, 6, 2, 1.0), "tiny": (3, 2, 1, 2.7)}


def write_demo(out_dir: str | os.PathLike, size: str = "demo", seed: int = 0) -> Path:
    """Write the BTCV-layout demo dataset (deterministic for a seed).

    Writes ``imagesTr/imgNNNN.nii.gz`` + ``labelsTr/labelNNNN.nii.gz`` (13 organs), ``imagesTs/imgNNNN.nii.gz``
    and ``dataset.json`` with ``training``, ``validation`` and ``test`` lists.

    Args:
        out_dir: output folder (created).
        size: ``"demo"`` (24 + 6 labelled cases of 64x64x40 voxels, 3x3x4 mm) or ``"tiny"`` (3 + 2 cases of
            ~24x24x15 voxels) for tests.
        seed: generator seed (>= 0).

    Returns:
        ``out_dir`` as a Path.
    """
    n_train, n_val, n_test, scale = SIZES[look_up_option("size", size, SIZES)]
    out = Path(out_dir)
    entries: dict[str, list[dict[str, str]]] = {"training": [], "validation": [], "test": []}
    for i in range(n_train + n_val + n_test):
        ph = generate_phantom(BTCV_STYLE, seed=seed, case_index=i, spacing_scale=scale)
        num = i + 1 if i < n_train + n_val else 61 + i - n_train - n_val  # BTCV test ids start at 61
        if i < n_train + n_val:
            save_nifti(ph.image_nifti(), out / "imagesTr" / f"img{num:04d}.nii.gz")
            save_nifti(ph.label_nifti(BTCV_LABELS), out / "labelsTr" / f"label{num:04d}.nii.gz")
            key = "training" if i < n_train else "validation"
            entries[key].append({"image": f"imagesTr/img{num:04d}.nii.gz", "label": f"labelsTr/label{num:04d}.nii.gz"})
        else:
            save_nifti(ph.image_nifti(), out / "imagesTs" / f"img{num:04d}.nii.gz")
            entries["test"].append({"image": f"imagesTs/img{num:04d}.nii.gz"})
    meta = {
        "name": "BTCV-demo",
        "description": "Synthetic abdominal CT phantoms in the BTCV (Synapse multi-atlas) layout; not patient data",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in BTCV_CLASS_NAMES.items()},
        "numTraining": n_train + n_val,
        "numTest": n_test,
        **entries,
    }
    atomic_write_json(out / "dataset.json", meta)
    return out


def read_dataset_json(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``dataset_dir/dataset.json``.

    Raises:
        DatasetError: missing file or invalid JSON, naming the file and the fix.
    """
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{path} not found; expected an MSD-style dataset.json with 'labels' and 'training'")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON at line {e.lineno} ({e.msg}); fix or regenerate the file") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'labels' and 'training'")
    return meta


def _resolve(base: Path, rel: str) -> Path:
    """A ``dataset.json`` path, or where it does not exist the variant a copy of the dataset holds instead:
    the nnU-Net v1 raw name (``x_0000.nii.gz``) or the other NIfTI form (``x.nii`` for ``x.nii.gz`` and back)."""
    path = (base / rel).resolve() if not os.path.isabs(rel) else Path(rel)
    if path.exists():
        return path
    stem = _case_id(path)
    for alt in (f"{stem}_0000.nii.gz", f"{stem}_0000.nii", f"{stem}.nii", f"{stem}.nii.gz"):
        if path.with_name(alt).exists():
            return path.with_name(alt)
    return path


def _case_id(path: str | Path) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def msd_pairs(dataset_dir: str | os.PathLike, keys: tuple[str, ...] = ("training", "validation")) -> list[CasePair]:
    """Image/label pairs listed in an MSD ``dataset.json`` under ``keys`` (entries may be dicts or paths).

    Raises:
        DatasetError: no dataset.json, or an entry without ``image``.
    """
    base = Path(dataset_dir)
    meta = read_dataset_json(base)
    pairs: list[CasePair] = []
    for key in keys:
        for i, entry in enumerate(meta.get(key, []) or []):
            if isinstance(entry, str):
                entry = {"image": entry}
            if not isinstance(entry, dict) or "image" not in entry:
                raise DatasetError(
                    f"{base / 'dataset.json'}: {key}[{i}] has no 'image' entry; expected "
                    '{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}'
                )
            label = _resolve(base, entry["label"]) if entry.get("label") else None
            pairs.append(CasePair(_case_id(entry["image"]), _resolve(base, entry["image"]), label))
    return pairs


def msd_datalist(dataset_dir: str | os.PathLike, key: str = "training") -> list[dict[str, str]]:
    """MONAI datalist (``[{"image": path, "label": path}, ...]``) of one ``dataset.json`` list."""
    out = []
    for p in msd_pairs(dataset_dir, keys=(key,)):
        item = {"image": str(p.image)}
        if p.label is not None:
            item["label"] = str(p.label)
        out.append(item)
    return out


#: The dataset layouts read, as shown in error messages (``dataset_dir`` relative paths).
LAYOUTS: dict[str, str] = {
    "msd": "MSD / MONAI: dataset.json with 'labels' and 'training' lists (imagesTr/, labelsTr/ next to it)",
    "btcv": "BTCV folders: imagesTr/img0001.nii.gz + labelsTr/label0001.nii.gz (imagesTs/ unlabelled)",
    "synapse": "Synapse download: RawData/Training/img/img0001.nii.gz + RawData/Training/label/label0001.nii.gz "
    "(RawData/Testing/img/ unlabelled; dataset_dir may be RawData itself)",
}


@dataclass(frozen=True)
class DatasetLayout:
    """Where a dataset folder keeps its files.

    Attributes:
        name: ``"msd"``, ``"btcv"`` or ``"synapse"`` (see :data:`LAYOUTS`).
        root: the dataset folder as given.
        images: folder of the labelled images (None for ``msd``: the json lists them).
        labels: folder of their labels (None for ``msd``).
        tests: folder of unlabelled test images (None for ``msd`` or when absent).
    """

    name: str
    root: Path
    images: Path | None = None
    labels: Path | None = None
    tests: Path | None = None


def _nifti_files(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.nii*") if not p.name.startswith("."))


def detect_layout(dataset_dir: str | os.PathLike) -> DatasetLayout:
    """The layout of a BTCV / MSD dataset folder; the first that matches wins (``msd``, ``btcv``, ``synapse``).

    Args:
        dataset_dir: the dataset folder.

    Returns:
        The :class:`DatasetLayout` with the folders of that layout.

    Raises:
        DatasetError: the folder does not exist, or matches none of the layouts (every accepted layout is listed).
    """
    base = Path(dataset_dir)
    if not base.is_dir():
        raise DatasetError(
            f"dataset_dir {base} does not exist; pass --dataset_dir with one of the layouts: " + _accepted()
        )
    if (base / "dataset.json").is_file():
        return DatasetLayout("msd", base)
    if (base / "imagesTr").is_dir():
        tests = base / "imagesTs"
        return DatasetLayout("btcv", base, base / "imagesTr", base / "labelsTr", tests if tests.is_dir() else None)
    for raw in (base / "RawData", base):
        if (raw / "Training" / "img").is_dir():
            tests = raw / "Testing" / "img"
            return DatasetLayout(
                "synapse", base, raw / "Training" / "img", raw / "Training" / "label", tests if tests.is_dir() else None
            )
    raise DatasetError(
        f"dataset_dir {base}: no known dataset layout found (no dataset.json, imagesTr/ or RawData/Training/img/); "
        "expected one of: " + _accepted()
    )


def _accepted() -> str:
    return "; ".join(f"({i}) {text}" for i, text in enumerate(LAYOUTS.values(), start=1))


def _folder_pairs(layout: DatasetLayout, report: DatasetReport | None = None) -> list[CasePair]:
    """Image/label pairs of a folder layout (``imgNNNN`` <-> ``labelNNNN``, or equal names)."""
    if layout.images is None or layout.labels is None:
        raise DatasetError(f"{layout.root}: the {layout.name} layout lists its cases in dataset.json, not in folders")
    images = (
        check_folder_not_empty(layout.images, "*.nii*", report, "CT images")
        if report is not None
        else _nifti_files(layout.images)
    )
    pairs = []
    for img in images:
        cid = _case_id(img)
        cand = layout.labels / img.name.replace("img", "label", 1)
        label = cand if cand.exists() or cid.startswith("img") else layout.labels / img.name
        pairs.append(CasePair(cid, img, label))
    return pairs


def btcv_datalist(dataset_dir: str | os.PathLike, split: str = "training", val_fraction: float = 0.2) -> list[dict]:
    """Datalist of the BTCV / MSD dataset in ``dataset_dir``.

    With a ``dataset.json`` its ``split`` list is used (``training``, ``validation`` or ``test``). Without one
    (BTCV ``imagesTr`` or Synapse ``RawData/Training/img`` folders, see :func:`detect_layout`), the labelled pairs
    are split by sorted case id: the last ``val_fraction`` (at least one case) is ``validation``; ``test`` lists
    the unlabelled images (``imagesTs`` or ``RawData/Testing/img``).

    Args:
        dataset_dir: dataset folder.
        split: ``"training"``, ``"validation"``, ``"test"`` or ``"all"`` (training + validation).
        val_fraction: share of labelled cases used for validation without a json, in (0, 1). Default 0.2.

    Returns:
        list of ``{"image": str, "label": str}`` (no ``label`` for test images).

    Raises:
        DatasetError: the folder matches no known layout (the accepted ones are listed), or holds no image.
    """
    split = look_up_option("split", split, ("training", "validation", "test", "all"))
    base = Path(dataset_dir)
    layout = detect_layout(base)
    if layout.name == "msd":
        if split == "all":
            return msd_datalist(base, "training") + msd_datalist(base, "validation")
        if split == "validation" and not read_dataset_json(base).get("validation"):
            items = msd_datalist(base, "training")
            n_val = max(1, round(len(items) * val_fraction))
            return items[-n_val:]
        if split == "training" and not read_dataset_json(base).get("validation"):
            items = msd_datalist(base, "training")
            return items[: len(items) - max(1, round(len(items) * val_fraction))]
        return msd_datalist(base, split)
    if split == "test":
        return [{"image": str(p)} for p in _nifti_files(layout.tests)]
    items = [{"image": str(p.image), "label": str(p.label)} for p in _folder_pairs(layout)]
    if not items:
        raise DatasetError(f"{layout.images}: no .nii/.nii.gz images found; expected {LAYOUTS[layout.name]}")
    if split == "all":
        return items
    n_val = max(1, round(len(items) * val_fraction))
    return items[-n_val:] if split == "validation" else items[:-n_val]


def label_names(dataset_dir: str | os.PathLike) -> dict[int, str]:
    """Label value -> name from ``dataset.json`` (BTCV's 13 organs when there is no json)."""
    base = Path(dataset_dir)
    if not (base / "dataset.json").is_file():
        return dict(BTCV_CLASS_NAMES)
    labels = read_dataset_json(base).get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f'{base / "dataset.json"}: no \'labels\' mapping; expected e.g. {{"0": "background"}}')
    try:
        return {int(k): str(v) for k, v in labels.items()}
    except ValueError:
        raise DatasetError(f"{base / 'dataset.json'}: 'labels' keys must be integers as strings") from None


def num_classes(dataset_dir: str | os.PathLike) -> int:
    """Number of output channels (background included) read from the data's label names."""
    names = label_names(dataset_dir)
    if sorted(names) != list(range(len(names))):
        raise ConfigError(f"{dataset_dir}: label values {sorted(names)} are not 0..N-1; relabel them consecutively")
    return len(names)


def verify_dataset(dataset_dir: str | os.PathLike) -> DatasetReport:
    """Check a BTCV / MSD dataset before any compute; every bad case is listed.

    Checks: the folder holds one of the accepted layouts (:func:`detect_layout`); dataset.json (when present)
    parses and its files exist; every image has its label; files are readable 3-D NIfTI; image/label geometry matches; label values are within the dataset's labels; no NaN/Inf.

    Args:
        dataset_dir: the dataset folder.

    Returns:
        the :class:`DatasetReport` (``report.raise_if_bad()`` raises with every problem).
    """
    base = Path(dataset_dir)
    report = DatasetReport(
        str(base),
        fix="repair or remove the listed cases, or regenerate the demo with "
        "`python -m tlk_components prepare_demo abdomen_ct_attention_segmentation DIR`",
    )
    if not base.is_dir():
        report.add(
            str(base), "dataset folder does not exist; pass --dataset_dir with one of the layouts: " + _accepted()
        )
        return report
    try:
        layout = detect_layout(base)
    except DatasetError as e:
        report.add(base.name or str(base), str(e))
        return report
    try:
        names = label_names(base)
        if layout.name == "msd":
            pairs = msd_pairs(base)
            tests = msd_pairs(base, keys=("test",))
            if not pairs:
                report.add("dataset.json", "its 'training' list is empty; expected labelled image/label entries")
        else:
            pairs = _folder_pairs(layout, report)
            tests = [CasePair(_case_id(p), p) for p in _nifti_files(layout.tests)]
    except DatasetError as e:
        report.add("dataset.json", str(e))
        return report
    if pairs:
        check_pairs(pairs, report, expected_labels=names.keys())
    if tests:
        check_pairs(tests, report, require_labels=False)
    return report
