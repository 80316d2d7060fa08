# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Data module of ``kidney_ct_da_segmentation``: AMOS22 (source) and KiTS19 (target) layouts.

Layouts (as the public datasets ship them):

* AMOS22 (source, labelled): ``imagesTr/amos_NNNN.nii.gz``, ``labelsTr/amos_NNNN.nii.gz`` and ``dataset.json``
  with the 15 organ labels (1 spleen, 2 right kidney, 3 left kidney, ... 15 prostate/uterus).
* KiTS19 (target): ``case_NNNNN/imaging.nii.gz`` and ``case_NNNNN/segmentation.nii.gz`` (0 background,
  1 kidney, 2 tumour). Arrays are stored slices-first (axis codes "IPL"), as in the real release; cases
  from 210 on are KiTS19's unlabelled test set.
* the demo folder (``--dataset_dir``) holds both: ``amos22/`` and ``kits19/``.
* converted (:mod:`tlk_components.data.convert`): MSD-style ``imagesTr/``, ``labelsTr/``, ``dataset.json``.

Common variants of the real downloads are read as they are: uncompressed ``.nii`` files (``imaging.nii``,
``amos_0001.nii``; a file may exist in only one of the two forms), the official KiTS19 repository clone whose cases
sit in ``kits19/data/case_NNNNN/`` (``data/`` is entered automatically), and the full AMOS22 release, whose
``dataset.json`` also lists MRI scans (case ids 0501-0600): this bundle is CT-only, so they are left out, and the
log says how many.

The demo data (:func:`write_demo`) are adult, real-geometry phantoms (:mod:`tlk_components.data.adult_phantoms`)
whose two domains differ as the real ones do: AMOS22-like source scans mostly in the portal-venous phase over the
abdomen (some abdomen-pelvis and chest-abdomen-pelvis ranges), from many scanners, without tumours, stored LPS;
KiTS19-like target scans mostly late-arterial (bright cortex, dark medulla) over a kidney-centred range, with one or
two tumours from 1.5 cm to kidney-replacing, stored slices-first. Field of view, scan length, patient size, spacing,
contrast timing and noise vary per case within each domain, so the kidney share of a scan differs between domains
through the field of view, as on the real datasets.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tlk_components.data.adult_phantoms import (
    AMOS_PROFILE,
    KITS_PROFILE,
    AdultPhantom,
    CaseGeometry,
    DomainProfile,
    draw_case_geometry,
    generate_adult_phantom,
    write_case,
)
from tlk_components.data.btcv import btcv_datalist, label_names, msd_pairs, read_dataset_json
from tlk_components.data.btcv import detect_layout as detect_btcv_layout
from tlk_components.data.datasets import DatasetReport
from tlk_components.data.nifti_checks import CasePair, check_folder_not_empty, check_pairs
from tlk_components.data.phantoms import AMOS_LABELS, KITS_LABELS
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import atomic_write_json
from tlk_components.utils.validation import check_in_range, look_up_option

logger = logging.getLogger(__name__)

__all__ = [
    "AMOS_CLASS_NAMES",
    "AMOS_FIRST_MRI_CASE",
    "AMOS_KIDNEY_CHANNELS",
    "KidneyLayout",
    "LAYOUT_KINDS",
    "KITS19_FIRST_TEST_CASE",
    "SIZES",
    "SOURCE_PROFILE",
    "TARGET_PROFILE",
    "amos22_datalist",
    "amos22_label_file",
    "demo_spacing",
    "is_amos_mri",
    "kits19_case_file",
    "kits19_datalist",
    "kits19_root",
    "resolve_layout",
    "split_cases",
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

#: Source (AMOS22-like): portal-venous phase mostly, abdomen / abdomen-pelvis / chest-abdomen-pelvis ranges, many
#: scanners (noise 8-30 HU), no tumours, stored LPS (see :mod:`tlk_components.data.adult_phantoms`).
SOURCE_PROFILE: DomainProfile = AMOS_PROFILE
#: Target (KiTS19-like): late-arterial phase mostly, kidney-centred ranges mostly, one or two tumours per case from
#: 1.5 cm to kidney-replacing, stored slices-first (IPL).
TARGET_PROFILE: DomainProfile = KITS_PROFILE

#: size -> (AMOS cases, KiTS labelled cases). ``demo``: the real geometry (adult anatomy, per-case field of view,
#: scan length and contrast) at a coarse per-case spacing (:func:`demo_spacing`, ~85 voxels in-plane); ``tiny``:
#: the same at twice that spacing, for tests; ``real``: 512 x 512 in-plane at the drawn real spacing (0.6-0.98 mm,
#: 0.5-5 mm slices), for scale tests and rehearsals with real-size data (~0.1-0.3 GB per case in memory).
SIZES: dict[str, tuple[int, int]] = {"demo": (24, 30), "tiny": (4, 4), "real": (20, 20)}


def demo_spacing(geometry: CaseGeometry, size: str) -> tuple[float, float, float] | None:
    """The voxel spacing (x, y, z) mm of a case at ``size``: None (the drawn real spacing) for ``real``.

    ``demo``: 6x the real in-plane spacing (3.6-5.9 mm, so ~85 voxels across every field of view) and the real
    slice spacing clamped to [4, 6] mm; ``tiny``: twice the demo spacing. The spacing varies per case as the real
    one does, so resampling to the plan's spacing is exercised as on real data.
    """
    size = look_up_option("size", size, SIZES)
    if size == "real":
        return None
    sx, sy, sz = geometry.spacing
    f = 6.0 if size == "demo" else 12.0
    zs = min(6.0, max(4.0, sz)) * (1.0 if size == "demo" else 2.0)
    return (round(sx * f, 3), round(sy * f, 3), round(zs, 3))


def _phantom(profile: DomainProfile, seed: int, case_index: int, size: str) -> AdultPhantom:
    geo = draw_case_geometry(profile, seed, case_index)
    return generate_adult_phantom(profile, seed, case_index, size=size, spacing=demo_spacing(geo, size))


def write_amos22(
    out_dir: str | os.PathLike,
    n_cases: int,
    profile: DomainProfile = SOURCE_PROFILE,
    seed: int = 0,
    size: str = "demo",
) -> Path:
    """Write ``n_cases`` source phantoms in the AMOS22 layout (``imagesTr``, ``labelsTr``, ``dataset.json``)."""
    out = Path(out_dir)
    training = []
    for i in range(n_cases):
        name = f"amos_{i + 1:04d}.nii.gz"
        write_case(out / "imagesTr" / name, out / "labelsTr" / name, _phantom(profile, seed, i, size), AMOS_LABELS)
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
    profile: DomainProfile = TARGET_PROFILE,
    seed: int = 0,
    size: str = "demo",
) -> Path:
    """Write ``n_cases`` target phantoms in the KiTS19 layout (``case_NNNNN/imaging.nii.gz`` + segmentation)."""
    out = Path(out_dir)
    for i in range(n_cases):
        case = out / f"case_{i:05d}"
        write_case(case / "imaging.nii.gz", case / "segmentation.nii.gz", _phantom(profile, seed, i, size), KITS_LABELS)
    return out


def write_demo(out_dir: str | os.PathLike, size: str = "demo", seed: int = 0) -> Path:
    """Write both demo domains: ``out_dir/amos22`` (source) and ``out_dir/kits19`` (target), deterministically.

    Args:
        out_dir: output folder (created).
        size: ``"demo"`` (24 AMOS + 30 KiTS cases at ~4.5 mm, ~85 voxels in-plane, 30-130 slices), ``"tiny"``
            (4 + 4 cases at twice that spacing) for tests, or ``"real"`` (20 + 20 cases, 512 x 512 in-plane at the
            real spacing; minutes to write, ~2-4 GB on disk). See :data:`SIZES`.
        seed: generator seed (>= 0); a different seed gives other patients and scans (a fresh data seed).

    Returns:
        ``out_dir`` as a Path.
    """
    n_src, n_tgt = SIZES[look_up_option("size", size, SIZES)]
    out = Path(out_dir)
    write_amos22(out / "amos22", n_src, SOURCE_PROFILE, seed, size)
    write_kits19(out / "kits19", n_tgt, TARGET_PROFILE, seed, size)
    return out


# ------------------------------------------------------------------------------------------------ datalists


#: What :func:`resolve_layout` finds in a folder: both domains (the demo layout), or one domain in its public layout.
LAYOUT_KINDS: tuple[str, ...] = ("demo", "kits19", "amos22", "converted", "btcv", "unknown")


@dataclass(frozen=True)
class KidneyLayout:
    """Where the two domains of a kidney DA dataset lie and in which layout: the answer of :func:`resolve_layout`.

    Every datalist of the bundle comes from here (:meth:`source_datalist`, :meth:`target_datalist`), so the layout
    rules (demo subfolders, the KiTS19 clone's ``data/``, a missing demo written later) live in
    :func:`resolve_layout` only.

    Attributes:
        root: the ``--dataset_dir`` folder.
        kind: what ``root`` holds, one of :data:`LAYOUT_KINDS` (``"demo"``: ``amos22/`` + ``kits19/``, also for a
            missing or empty folder, which the demo writer fills on first use).
        source, target: the labelled source and the target folder (a KiTS19 target is the folder holding the
            ``case_NNNNN`` folders, i.e. ``data/`` of the official repository clone).
        source_kind, target_kind: the layout of each (``"amos22"``, ``"converted"``, ``"btcv"`` or ``"kits19"``;
            ``"amos22"`` / ``"kits19"`` for the demo's folders, ``"unknown"`` when nothing matches).
        target_given: the target is a folder of its own (the demo's ``kits19/`` or an explicit ``--target_dir``),
            not merely the single-domain ``root``.
    """

    root: Path
    kind: str
    source: Path
    target: Path
    source_kind: str
    target_kind: str
    target_given: bool = True

    def source_datalist(self, split: str = "all", labels: bool = True, test_fraction: float = 1 / 3) -> list[dict]:
        """Datalist of the source folder in its layout (AMOS22 / converted, BTCV, or KiTS19 labelled cases).

        Args:
            split: ``"train"``, ``"test"`` or ``"all"`` (see :func:`split_cases`).
            labels: include ``"label"`` paths.
            test_fraction: share of cases in ``"test"``, in (0, 1). Default 1/3.

        Raises:
            DatasetError: the folder holds no case of its layout.
        """
        _check_known(self.source, self.source_kind, "source")
        if self.source_kind == "kits19":
            return _kits19_items(self.source, split, test_fraction, labels)
        if self.source_kind == "btcv":
            items = btcv_datalist(self.source, split="all")
            items = [{"image": d["image"], **({"label": d["label"]} if labels else {})} for d in items]
            return split_cases(items, split, test_fraction)
        return _amos22_items(self.source, split, test_fraction, labels)

    def target_datalist(
        self, split: str = "all", labels: bool = True, dev_fraction: float = 0.0, test_fraction: float = 1 / 3
    ) -> list[dict]:
        """Datalist of the target folder: KiTS19 cases (``labels=False``: images only, no label path is ever
        listed), or the images (and labels) of an AMOS22 / converted target.

        Args:
            split: ``"train"``, ``"dev"``, ``"test"`` or ``"all"`` (see :func:`split_cases`).
            labels: include ``"label"`` paths.
            dev_fraction: share of cases in ``"dev"``, in [0, 1). Default 0.
            test_fraction: share of cases in ``"test"``, in (0, 1). Default 1/3.

        Raises:
            DatasetError: the folder holds no case of its layout.
        """
        _check_known(self.target, self.target_kind, "target")
        if self.target_kind == "kits19":
            return _kits19_items(self.target, split, test_fraction, labels, dev_fraction)
        return _amos22_items(self.target, split, test_fraction, labels, dev_fraction)


def _check_known(folder: Path, kind: str, domain: str) -> None:
    if kind == "unknown":
        raise DatasetError(
            f"{domain} folder {folder}: {'does not exist' if not folder.is_dir() else 'no known layout'}; expected "
            "KiTS19 case_NNNNN/ folders, an AMOS22 or MSD folder with dataset.json, BTCV imagesTr/ or Synapse "
            "RawData/, or a folder holding amos22/ and kits19/ (pass --dataset_dir, or --source_dir / --target_dir)"
        )


def _folder_kind(d: Path) -> str:
    """The layout of one domain folder: ``"kits19"``, ``"amos22"``, ``"converted"``, ``"btcv"`` or ``"unknown"``."""
    if any(p.is_dir() for p in kits19_root(d).glob("case_*")):
        return "kits19"
    if (d / "dataset.json").is_file():
        try:
            meta = read_dataset_json(d)
        except DatasetError:
            return "converted"
        amos = len(meta.get("labels", {})) == len(AMOS_CLASS_NAMES) and "tlk_conversion" not in meta
        return "amos22" if amos else "converted"
    try:
        detect_btcv_layout(d)  # BTCV imagesTr/ or Synapse RawData/Training/img/ (the BTCV module's one rule)
    except DatasetError:
        return "unknown"
    return "btcv"


def resolve_layout(
    dataset_dir: str | os.PathLike,
    source_dir: str | os.PathLike | None = None,
    target_dir: str | os.PathLike | None = None,
) -> KidneyLayout:
    """Find the two domains of a kidney DA dataset: the one place that knows the accepted layouts.

    * a folder holding ``amos22/`` and/or ``kits19/`` — or a missing or empty folder, which the demo writer fills
      on first use (configs resolve the layout before the demo is written) — is the demo layout: source
      ``amos22/``, target ``kits19/``;
    * any other folder holds one domain in its public layout (KiTS19 ``case_NNNNN/`` also inside ``data/``,
      AMOS22 or converted MSD ``dataset.json``, BTCV ``imagesTr/`` or Synapse ``RawData/``) and serves as both.

    Args:
        dataset_dir: the ``--dataset_dir`` folder.
        source_dir: the labelled source folder, replacing what ``dataset_dir`` gives (``--source_dir``).
        target_dir: the target folder, replacing what ``dataset_dir`` gives (``--target_dir``).

    Returns:
        the :class:`KidneyLayout`. Nothing is verified here (:func:`verify_dataset` does that).
    """
    root = Path(dataset_dir)
    demo = (root / "amos22").is_dir() or (root / "kits19").is_dir() or not root.is_dir() or not any(root.iterdir())
    kind = "demo" if demo else _folder_kind(root)
    source = Path(source_dir) if source_dir else (root / "amos22" if demo else root)
    target = Path(target_dir) if target_dir else (root / "kits19" if demo else root)
    source_kind = "amos22" if demo and not source_dir and not source.is_dir() else _folder_kind(source)
    target_kind = "kits19" if demo and not target_dir and not target.is_dir() else _folder_kind(target)
    if target_kind == "kits19":
        target = kits19_root(target)
    if source_kind == "kits19":
        source = kits19_root(source)
    return KidneyLayout(root, kind, source, target, source_kind, target_kind, demo or bool(target_dir))


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


#: The splits of a datalist (see :func:`split_cases`).
SPLITS: tuple[str, ...] = ("train", "dev", "test", "all")


def split_cases(items: list, split: str, test_fraction: float = 1 / 3, dev_fraction: float = 0.0) -> list:
    """One split of a case list sorted by case id, by position (deterministic, no shuffling).

    ``test``: the last ``round(n * test_fraction)`` cases (at least one); ``dev``: the ``round(n * dev_fraction)``
    cases before them (at least one when ``dev_fraction > 0``), whose labels serve only to choose settings (the
    oracle's model selection, the benchmark's sweeps); ``train``: the rest (adaptation images, oracle training);
    ``all``: every case. ``train`` with ``dev_fraction=0`` is everything before ``test``.

    Raises:
        ConfigError: unknown split, or fractions outside [0, 1) that leave no training case.
    """
    split = look_up_option("split", split, SPLITS)
    test_fraction = check_in_range("test_fraction", test_fraction, 0.0, 1.0, low_inclusive=False)
    dev_fraction = check_in_range("dev_fraction", dev_fraction, 0.0, 1.0)
    if split == "all" or not items:
        return list(items)
    n = len(items)
    n_test = max(1, round(n * test_fraction))
    n_dev = max(1, round(n * dev_fraction)) if dev_fraction > 0 else 0
    if n_dev and n_test + n_dev >= n and split != "test":
        raise ConfigError(
            f"test_fraction={test_fraction} and dev_fraction={dev_fraction} leave no training case of {n}; lower them"
        )
    if split == "test":
        return items[n - n_test :]
    if split == "dev":
        return items[n - n_test - n_dev : n - n_test]
    return items[: n - n_test - n_dev]


def amos22_datalist(
    amos_dir: str | os.PathLike, split: str = "all", test_fraction: float = 1 / 3, labels: bool = True
) -> list[dict[str, str]]:
    """Datalist of an AMOS22 folder (from its ``dataset.json`` ``training`` list; MRI scans left out).

    Args:
        amos_dir: the AMOS22 folder (or a demo folder holding ``amos22/``; see :func:`resolve_layout`).
        split: ``"train"`` (first cases), ``"test"`` (last ``test_fraction``, at least one) or ``"all"``.
        test_fraction: share of cases held out for ``"test"``, in (0, 1). Default 1/3.
        labels: include ``"label"`` paths.

    Returns:
        ``[{"image": path, "label": path}, ...]`` sorted by case id.

    Raises:
        DatasetError: no readable ``dataset.json``.
    """
    return _amos22_items(resolve_layout(amos_dir).source, split, test_fraction, labels)


def _amos22_items(
    base: Path, split: str, test_fraction: float, labels: bool, dev_fraction: float = 0.0
) -> list[dict[str, str]]:
    pairs = msd_pairs(base, keys=("training",))
    mri = [p for p in pairs if is_amos_mri(p.image)]
    if mri:
        logger.info(
            f"AMOS22: left out {len(mri)} MRI case(s) listed in dataset.json (ids >= {AMOS_FIRST_MRI_CASE}); this "
            "bundle is trained on CT"
        )
        pairs = [p for p in pairs if not is_amos_mri(p.image)]
    items = [{"image": str(p.image), **({"label": str(p.label)} if labels and p.label else {})} for p in pairs]
    return split_cases(items, split, test_fraction, dev_fraction)


def kits19_datalist(
    kits_dir: str | os.PathLike,
    split: str = "all",
    test_fraction: float = 1 / 3,
    labels: bool = True,
    dev_fraction: float = 0.0,
) -> list[dict[str, str]]:
    """Datalist of a KiTS19 folder: labelled cases (``case_NNNNN`` < 210 with a segmentation).

    With ``labels=False`` the items hold only ``"image"``, so adaptation never sees a target label path.

    Args:
        kits_dir: the KiTS19 folder (or a demo folder holding ``kits19/``, or the repository clone with
            ``data/``; see :func:`resolve_layout`).
        split: ``"train"`` (first cases, for adaptation and the oracle), ``"dev"`` (the cases before ``test``, for
            choosing settings and the oracle's model selection), ``"test"`` (last ``test_fraction``, at least one;
            for evaluation only) or ``"all"`` (see :func:`split_cases`).
        test_fraction: share of cases held out for ``"test"``, in (0, 1). Default 1/3.
        labels: include ``"label"`` paths.
        dev_fraction: share of cases in ``"dev"``, in [0, 1). Default 0 (no dev split).

    Raises:
        DatasetError: the folder holds no ``case_*`` folders.
    """
    return _kits19_items(resolve_layout(kits_dir).target, split, test_fraction, labels, dev_fraction)


def _kits19_items(
    base: Path, split: str, test_fraction: float, labels: bool, dev_fraction: float = 0.0
) -> list[dict[str, str]]:
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
    return split_cases(items, split, test_fraction, dev_fraction)


def _kits_case_number(name: str) -> int:
    m = re.fullmatch(r"case_(\d+)", name)
    return int(m.group(1)) if m else -1


# ----------------------------------------------------------------------------------------------- verification


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
    layout = resolve_layout(base).kind
    if layout == "demo" and not any(base.iterdir()):
        layout = "unknown"  # an empty folder holds no layout to check (the bundles write their demo before this)
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
