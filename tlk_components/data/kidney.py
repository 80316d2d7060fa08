# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Data module of ``kidney_ct_da_segmentation``: AMOS22 (source) and KiTS19 (target) layouts.

Layouts (as the public datasets ship them):

* AMOS22 (source, labelled): ``imagesTr/amos_NNNN.nii.gz``, ``labelsTr/amos_NNNN.nii.gz`` and ``dataset.json``
  with the 15 organ labels (1 spleen, 2 right kidney, 3 left kidney, ... 15 prostate/uterus).
* KiTS19 (target): ``case_NNNNN/imaging.nii.gz`` and ``case_NNNNN/segmentation.nii.gz`` (0 background,
  1 kidney, 2 tumour). Arrays are stored slices-first (axis codes "IPL"), as in the real release; cases
  from 210 on are KiTS19's unlabelled test set.

Common variants of the real downloads are read as they are: uncompressed ``.nii`` files (``imaging.nii``,
``amos_0001.nii``; a file may exist in only one of the two forms), the official KiTS19 repository clone whose cases
sit in ``kits19/data/case_NNNNN/`` (``data/`` is entered automatically), and the full AMOS22 release, whose
``dataset.json`` also lists MRI scans (case ids 0501-0600): this bundle is CT-only, so they are left out, and the
log says how many.
* the demo folder (``--dataset_dir``) holds both: ``amos22/`` and ``kits19/``.
* converted (:mod:`tlk_components.data.convert`): MSD-style ``imagesTr/``, ``labelsTr/``, ``dataset.json``.

The demo's domain shift (``SOURCE_STYLE`` -> ``TARGET_STYLE``) follows the calibrated "V3" target of
``../shared/reference/domain_adaptation.md`` section 9: arterial instead of portal-venous contrast (kidney
cortex/medulla differentiation, bright aorta), less noise, finer and differently blurred voxels, a x1.2 / +40 HU
scanner shift, a different on-disk axis order, and kidney tumours the source never shows.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from tlk_components.data.btcv import label_names, msd_pairs, read_dataset_json
from tlk_components.data.nifti_checks import CasePair, check_folder_not_empty, check_pairs, save_nifti
from tlk_components.data.phantoms import AMOS_LABELS, KITS_LABELS, PhantomStyle, generate_phantom
from tlk_components.utils.errors import DatasetError
from tlk_components.utils.io import atomic_write_json
from tlk_components.utils.validation import look_up_option
from tlk_components.zoo.datasets import DatasetReport

logger = logging.getLogger(__name__)

__all__ = [
    "AMOS_CLASS_NAMES",
    "AMOS_FIRST_MRI_CASE",
    "AMOS_KIDNEY_CHANNELS",
    "KITS19_FIRST_TEST_CASE",
    "SIZES",
    "SOURCE_STYLE",
    "TARGET_STYLE",
    "amos22_datalist",
    "amos22_label_file",
    "detect_layout",
    "is_amos_mri",
    "kits19_case_file",
    "kits19_datalist",
    "kits19_root",
    "source_dir",
    "target_dir",
    "verify_amos22",
    "verify_dataset",
    "verify_kits19",
    "write_amos22",
    "write_demo",
    "write_kits19",
]

#: AMOS22 label value -> organ name.
AMOS_CLASS_NAMES: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gall bladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "postcava",
    10: "pancreas",
    11: "right adrenal gland",
    12: "left adrenal gland",
    13: "duodenum",
    14: "bladder",
    15: "prostate/uterus",
}
#: AMOS channels whose max is "kidney" at prediction time (the TLK mapping).
AMOS_KIDNEY_CHANNELS: tuple[int, int] = (2, 3)
#: KiTS19 cases from this id on are the unlabelled test set (no segmentation.nii.gz).
KITS19_FIRST_TEST_CASE = 210
#: AMOS22 case ids from this one on are MRI scans (ids 0001-0500 are CT).
AMOS_FIRST_MRI_CASE = 501
KITS_CLASS_NAMES: dict[int, str] = {0: "background", 1: "kidney", 2: "tumor"}

#: Source (AMOS-like): portal-venous phase, homogeneous bright kidneys, no tumours, thick slices.
SOURCE_STYLE = PhantomStyle(
    hu={"soft": 40.0, "muscle": 50.0, "liver": 60.0, "spleen": 50.0, "kidney": 150.0, "kidney_medulla": 150.0},
    noise_std=20.0,
    blur_sigma_mm=(0.0, 0.0, 4.0),
    spacing=(3.0, 3.0, 4.0),
    axcodes="LPS",
    perirenal_fat=1.45,
    tumours=(0, 0),
)

#: Target (KiTS-like, section 9 "V3"): arterial phase (cortex 130 / medulla 40, aorta 300), tumours at 35 HU,
#: noise 15, finer voxels, x1.2 + 40 HU, slices-first storage. ``medulla_scale`` (size of the dark medulla) and
#: ``perirenal_fat`` tune the gap: in a calibration with a small BatchNorm U-Net on whole volumes, source-only kept
#: 0.70 / 0.64 / 0.55 target Dice with medulla 0.62 / 0.72 / 0.8 (oracle 0.88 at 0.62), and 0.35 / 0.12 with the
#: fat capsule shrunk to 1.3 / 1.2 (medulla 0.72).
TARGET_STYLE = PhantomStyle(
    hu={
        "soft": 55.0,
        "muscle": 65.0,
        "liver": 75.0,
        "spleen": 80.0,
        "kidney": 130.0,
        "kidney_medulla": 40.0,
        "tumour": 35.0,
        "aorta": 300.0,
        "ivc": 90.0,
        "portal_vein": 120.0,
        "pancreas": 90.0,
    },
    noise_std=15.0,
    blur_sigma_mm=(1.4, 1.4, 1.0),
    spacing=(2.4, 2.4, 3.2),
    intensity_scale=1.2,
    intensity_offset=40.0,
    axcodes="IPL",
    perirenal_fat=1.45,
    tumours=(1, 2),
    tumour_radius_mm=(8.0, 18.0),
    medulla_scale=0.62,
)

#: size -> (AMOS cases, KiTS labelled cases, spacing scale). Demo: 24 + 30 cases, ~64x64x40 after resampling.
SIZES: dict[str, tuple[int, int, float]] = {"demo": (24, 30, 1.0), "tiny": (4, 4, 2.7)}


def write_amos22(
    out_dir: str | os.PathLike,
    n_cases: int,
    style: PhantomStyle = SOURCE_STYLE,
    seed: int = 0,
    spacing_scale: float = 1.0,
) -> Path:
    """Write ``n_cases`` source phantoms in the AMOS22 layout (``imagesTr``, ``labelsTr``, ``dataset.json``)."""
    out = Path(out_dir)
    training = []
    for i in range(n_cases):
        ph = generate_phantom(style, seed=seed, case_index=i, spacing_scale=spacing_scale)
        name = f"amos_{i + 1:04d}.nii.gz"
        save_nifti(ph.image_nifti(), out / "imagesTr" / name)
        save_nifti(ph.label_nifti(AMOS_LABELS), out / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    atomic_write_json(
        out / "dataset.json",
        {
            "name": "AMOS-demo",
            "description": "Synthetic abdominal CT phantoms in the AMOS22 layout (source domain); not patient data",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {str(k): v for k, v in AMOS_CLASS_NAMES.items()},
            "numTraining": n_cases,
            "numTest": 0,
            "training": training,
            "validation": [],
            "test": [],
        },
    )
    return out


def write_kits19(
    out_dir: str | os.PathLike,
    n_cases: int,
    style: PhantomStyle = TARGET_STYLE,
    seed: int = 0,
    spacing_scale: float = 1.0,
) -> Path:
    """Write ``n_cases`` target phantoms in the KiTS19 layout (``case_NNNNN/imaging.nii.gz`` + segmentation)."""
    out = Path(out_dir)
    for i in range(n_cases):
        # a different stream from the source: the same case index never shares anatomy across domains
        ph = generate_phantom(style, seed=seed + 100_003, case_index=i, spacing_scale=spacing_scale)
        case = out / f"case_{i:05d}"
        save_nifti(ph.image_nifti(), case / "imaging.nii.gz")
        save_nifti(ph.label_nifti(KITS_LABELS), case / "segmentation.nii.gz")
    return out


def write_demo(out_dir: str | os.PathLike, size: str = "demo", seed: int = 0) -> Path:
    """Write both demo domains: ``out_dir/amos22`` (source) and ``out_dir/kits19`` (target), deterministically.

    Args:
        out_dir: output folder (created).
        size: ``"demo"`` (24 AMOS + 30 KiTS cases; 64x64x40 source and 80x80x50 target voxels) or ``"tiny"``
            (4 + 4 cases, ~24 voxels a side) for tests.
        seed: generator seed (>= 0).

    Returns:
        ``out_dir`` as a Path.
    """
    n_src, n_tgt, scale = SIZES[look_up_option("size", size, SIZES)]
    out = Path(out_dir)
    write_amos22(out / "amos22", n_src, SOURCE_STYLE, seed, scale)
    write_kits19(out / "kits19", n_tgt, TARGET_STYLE, seed, scale)
    return out


# ------------------------------------------------------------------------------------------------ datalists


def _not_written_yet(d: Path) -> bool:
    return not d.is_dir() or not any(d.iterdir())


def source_dir(dataset_dir: str | os.PathLike) -> str:
    """The AMOS22 folder of a demo-style dataset folder (``dataset_dir/amos22``), else ``dataset_dir`` itself.

    A missing or empty ``dataset_dir`` gives ``dataset_dir/amos22``: the demo writer fills it later (configs
    evaluate this path before the demo is written on first use).
    """
    d = Path(dataset_dir)
    return str(d / "amos22") if (d / "amos22").is_dir() or _not_written_yet(d) else str(d)


def target_dir(dataset_dir: str | os.PathLike) -> str:
    """The KiTS19 folder of a demo-style dataset folder (``dataset_dir/kits19``), else ``dataset_dir`` itself.

    A missing or empty ``dataset_dir`` gives ``dataset_dir/kits19`` (see :func:`source_dir`).
    """
    d = Path(dataset_dir)
    return str(d / "kits19") if (d / "kits19").is_dir() or _not_written_yet(d) else str(d)


def kits19_root(kits_dir: str | os.PathLike) -> Path:
    """The folder that holds the ``case_NNNNN`` folders: ``kits_dir`` itself, or its ``data/`` subfolder (the
    official KiTS19 repository keeps the cases in ``kits19/data/``)."""
    base = Path(kits_dir)
    if not any(p.is_dir() for p in base.glob("case_*")) and any(p.is_dir() for p in (base / "data").glob("case_*")):
        return base / "data"
    return base


def kits19_case_file(case: str | os.PathLike, name: str) -> Path:
    """``case/<name>.nii.gz`` or, where only that exists, ``case/<name>.nii`` (a KiTS19 copy stored uncompressed).

    Args:
        case: a ``case_NNNNN`` folder.
        name: ``"imaging"`` or ``"segmentation"``.

    Returns:
        The existing file; ``<name>.nii.gz`` when neither exists (checks then name the expected file).

    Raises:
        DatasetError: both forms exist (it is unclear which one holds the case).
    """
    case = Path(case)
    gz, plain = case / f"{name}.nii.gz", case / f"{name}.nii"
    if gz.exists() and plain.exists():
        raise DatasetError(
            f"{case}: both {gz.name} and {plain.name} exist; keep one of them (delete or move the other) so that "
            "it is clear which one holds the case"
        )
    return plain if plain.exists() else gz


def amos22_label_file(amos_dir: str | os.PathLike, image: str | os.PathLike) -> Path:
    """The label of an AMOS22 image: ``labelsTr/<case>.nii.gz`` or, where only that exists, ``labelsTr/<case>.nii``
    (``<case>`` without an nnU-Net ``_0000`` suffix); the ``.nii.gz`` path when neither exists."""
    name = Path(image).name
    case = name.split(".nii")[0].removesuffix("_0000")
    folder = Path(amos_dir) / "labelsTr"
    gz, plain = folder / f"{case}.nii.gz", folder / f"{case}.nii"
    return plain if plain.exists() and not gz.exists() else gz


def is_amos_mri(path: str | os.PathLike) -> bool:
    """True for an AMOS22 MRI scan (``amos_NNNN`` with NNNN >= :data:`AMOS_FIRST_MRI_CASE`)."""
    m = re.match(r"amos_(\d+)", Path(path).name)
    return bool(m) and int(m.group(1)) >= AMOS_FIRST_MRI_CASE


def _split(items: list, split: str, test_fraction: float) -> list:
    split = look_up_option("split", split, ("train", "test", "all"))
    if split == "all" or not items:
        return items
    n_test = max(1, round(len(items) * test_fraction))
    return items[:-n_test] if split == "train" else items[-n_test:]


def amos22_datalist(
    amos_dir: str | os.PathLike, split: str = "all", test_fraction: float = 1 / 3, labels: bool = True
) -> list[dict[str, str]]:
    """Datalist of an AMOS22 folder (from its ``dataset.json`` ``training`` list).

    Args:
        amos_dir: the AMOS22 folder (or a demo folder holding ``amos22/``).
        split: ``"train"`` (first cases), ``"test"`` (last ``test_fraction``, at least one) or ``"all"``.
        test_fraction: share of cases held out for ``"test"``, in (0, 1). Default 1/3.
        labels: include ``"label"`` paths.

    Returns:
        ``[{"image": path, "label": path}, ...]`` sorted by case id.
    """
    pairs = msd_pairs(source_dir(amos_dir), keys=("training",))
    mri = [p for p in pairs if is_amos_mri(p.image)]
    if mri:
        logger.info(
            f"AMOS22: left out {len(mri)} MRI case(s) listed in dataset.json (ids >= {AMOS_FIRST_MRI_CASE}); this "
            "bundle is trained on CT"
        )
        pairs = [p for p in pairs if not is_amos_mri(p.image)]
    items = [{"image": str(p.image), **({"label": str(p.label)} if labels and p.label else {})} for p in pairs]
    return _split(items, split, test_fraction)


def kits19_datalist(
    kits_dir: str | os.PathLike, split: str = "all", test_fraction: float = 1 / 3, labels: bool = True
) -> list[dict[str, str]]:
    """Datalist of a KiTS19 folder: labelled cases (``case_NNNNN`` < 210 with a segmentation).

    With ``labels=False`` the items hold only ``"image"``, so adaptation never sees a target label path.

    Args:
        kits_dir: the KiTS19 folder (or a demo folder holding ``kits19/``).
        split: ``"train"`` (first cases, for adaptation and the oracle), ``"test"`` (last ``test_fraction``, at
            least one; for evaluation) or ``"all"``.
        test_fraction: share of cases held out for ``"test"``, in (0, 1). Default 1/3.
        labels: include ``"label"`` paths.

    Raises:
        DatasetError: the folder holds no ``case_*`` folders.
    """
    base = kits19_root(target_dir(kits_dir))
    cases = sorted(p for p in base.glob("case_*") if p.is_dir())
    if not cases:
        raise DatasetError(f"{base}: no case_NNNNN folders; expected the KiTS19 layout (case_00000/imaging.nii.gz)")
    items = []
    for case in cases:
        if _kits_case_number(case.name) >= KITS19_FIRST_TEST_CASE:
            continue
        item = {"image": str(kits19_case_file(case, "imaging"))}
        if labels:
            item["label"] = str(kits19_case_file(case, "segmentation"))
        items.append(item)
    return _split(items, split, test_fraction)


def _kits_case_number(name: str) -> int:
    m = re.fullmatch(r"case_(\d+)", name)
    return int(m.group(1)) if m else -1


# ----------------------------------------------------------------------------------------------- verification


def detect_layout(dataset_dir: str | os.PathLike) -> str:
    """``"demo"`` (amos22/ + kits19/), ``"kits19"``, ``"amos22"``, ``"converted"`` (MSD json) or ``"unknown"``."""
    d = Path(dataset_dir)
    if (d / "amos22").is_dir() or (d / "kits19").is_dir():
        return "demo"
    if any(p.is_dir() for p in kits19_root(d).glob("case_*")):
        return "kits19"
    if (d / "dataset.json").is_file():
        try:
            labels = read_dataset_json(d).get("labels", {})
        except DatasetError:
            return "converted"
        return (
            "amos22"
            if len(labels) == len(AMOS_CLASS_NAMES) and "tlk_conversion" not in read_dataset_json(d)
            else "converted"
        )
    return "unknown"


def verify_kits19(kits_dir: str | os.PathLike, report: DatasetReport | None = None) -> DatasetReport:
    """Check a KiTS19 folder: every case < 210 has imaging + segmentation, readable 3-D, same geometry,
    labels in {0, 1, 2}, no NaN/Inf; cases from 210 on need only the image."""
    base = Path(kits_dir)
    report = report or DatasetReport(str(base), fix=_FIX)
    if not base.is_dir():
        report.add(base.name, f"KiTS19 folder {base} does not exist")
        return report
    base = kits19_root(base)
    cases = sorted(p for p in base.glob("case_*") if p.is_dir())
    if not cases:
        report.add(
            base.name,
            f"no case_NNNNN folders in {base}; expected case_00000/imaging.nii.gz, case_00000/segmentation.nii.gz",
        )
        return report
    labelled, unlabelled = [], []
    for case in cases:
        number = _kits_case_number(case.name)
        if number < 0:
            report.add(case.name, "folder name does not match case_NNNNN; rename it or move it out")
            continue
        try:
            pair = CasePair(
                f"kits19/{case.name}", kits19_case_file(case, "imaging"), kits19_case_file(case, "segmentation")
            )
        except DatasetError as e:
            report.add(case.name, str(e))
            continue
        (labelled if number < KITS19_FIRST_TEST_CASE else unlabelled).append(pair)
    if labelled:
        check_pairs(labelled, report, expected_labels=KITS_CLASS_NAMES.keys())
    if unlabelled:
        check_pairs(unlabelled, report, expected_labels=KITS_CLASS_NAMES.keys(), require_labels=False)
    return report


def verify_amos22(amos_dir: str | os.PathLike, report: DatasetReport | None = None) -> DatasetReport:
    """Check an AMOS22 (or converted MSD) folder: dataset.json readable, every image in ``imagesTr`` has its
    label, readable 3-D NIfTI, same geometry, labels within dataset.json's ``labels``, no NaN/Inf."""
    base = Path(amos_dir)
    report = report or DatasetReport(str(base), fix=_FIX)
    if not base.is_dir():
        report.add(base.name, f"folder {base} does not exist")
        return report
    images = check_folder_not_empty(base / "imagesTr", "*.nii*", report, "CT images")
    try:
        names = label_names(base) if (base / "dataset.json").is_file() else None
        listed = {p.image.resolve(): p for p in msd_pairs(base, keys=("training",))} if names else {}
    except DatasetError as e:
        report.add(f"{base.name}/dataset.json", str(e))
        names, listed = None, {}
    if names is None and not any("dataset.json" in p for p in report.problems):
        report.add(f"{base.name}/dataset.json", "missing; expected the dataset.json with 'labels' and 'training'")
    pairs = []
    for img in images:
        if is_amos_mri(img):
            continue  # MRI scans of the full AMOS22 release: not used by this CT bundle
        pair = listed.get(img.resolve())
        label = pair.label if pair is not None and pair.label is not None else amos22_label_file(base, img)
        cid = img.name.split(".nii")[0].removesuffix("_0000")
        pairs.append(CasePair(f"{base.name}/{cid}", img, label))
    for path, pair in listed.items():
        if not path.exists() and not is_amos_mri(path):
            report.add(pair.case, f"listed in dataset.json but {pair.image} does not exist")
    if pairs:
        check_pairs(pairs, report, expected_labels=(names or AMOS_CLASS_NAMES).keys())
    return report


_FIX = (
    "repair or remove the listed cases (or regenerate the demo with `python -m tlk_components prepare_demo "
    "kidney_ct_da_segmentation DIR`), then rerun"
)


def verify_dataset(dataset_dir: str | os.PathLike) -> DatasetReport:
    """Check a kidney DA dataset before any compute, listing every bad case.

    Accepts the demo folder (``amos22/`` + ``kits19/``: both must be present), a KiTS19 folder, an AMOS22
    folder, or a converted MSD folder.

    Args:
        dataset_dir: the folder to check.

    Returns:
        the :class:`DatasetReport`.
    """
    base = Path(dataset_dir)
    report = DatasetReport(str(base), fix=_FIX)
    if not base.is_dir():
        report.add(
            str(base),
            "dataset folder does not exist; pass --dataset_dir (a folder holding amos22/ and "
            "kits19/), or --source_dir and --target_dir",
        )
        return report
    layout = detect_layout(base)
    if layout == "demo":
        for sub, fn in (("amos22", verify_amos22), ("kits19", verify_kits19)):
            if not (base / sub).is_dir():
                report.add(
                    sub,
                    f"folder {base / sub} missing; the dataset folder must hold both amos22/ (source) "
                    "and kits19/ (target)",
                )
            else:
                fn(base / sub, report)
    elif layout == "kits19":
        verify_kits19(base, report)
    elif layout in ("amos22", "converted"):
        verify_amos22(base, report)
    else:
        report.add(
            base.name,
            "unrecognised layout; expected amos22/ + kits19/ subfolders, KiTS19 case_NNNNN "
            "folders, or imagesTr/ + labelsTr/ + dataset.json",
        )
    return report
