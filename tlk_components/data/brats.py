# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""BraTS 2020 data for slice-wise tumour box localization: layout checks, demo writer, in-memory datasets.

Layout (the public BraTS 2020 training set)::

    <dataset_dir>/BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz
                                      /BraTS20_Training_001_t1.nii.gz
                                      /BraTS20_Training_001_t1ce.nii.gz
                                      /BraTS20_Training_001_t2.nii.gz
                                      /BraTS20_Training_001_seg.nii.gz    (labels 0, 1, 2, 4)

Any case folder ``BraTS20_*`` is accepted (``BraTS20_Validation_XXX`` without ``seg`` for inference).
Channels are ``(flair, t1, t1ce, t2)``; each is z-scored over the brain (non-zero voxels) with MONAI's
``NormalizeIntensity(nonzero=True, channel_wise=True)``. Tumour labels are binarised (``seg > 0``), as the source
document does (``clip max 1``). Slices are the last array axis; slices are resized in-plane to ``image_size``
(bilinear for images, nearest for labels) and, when a volume has more than ``max_slices`` slices, reduced by the
document's mean-intensity projection: the slices are split into ``max_slices`` contiguous groups of nearly equal
size (``numpy.array_split``), images averaged and labels OR-ed per group (155 -> e.g. 48 slices).

Splits are deterministic: cases sorted by name; the last ``test_fraction`` are the test split, the
``val_fraction`` before them the validation split, the rest training.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import NormalizeIntensity
from scipy import ndimage

from tlk_components.data.nifti_checks import load_nifti, save_nifti
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.validation import check_in_range, check_positive_int
from tlk_components.zoo.datasets import DatasetReport

__all__ = [
    "BRATS_LABELS",
    "SEQUENCES",
    "BratsSliceDataset",
    "BratsVolumeDataset",
    "brats_datalist",
    "find_cases",
    "load_case",
    "mean_projection",
    "prepare_inputs",
    "verify_dataset",
    "write_demo",
]

#: MRI sequences in channel order (FLAIR first: it is the one drawn under the boxes).
SEQUENCES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
#: BraTS 2020 label values: 0 background, 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour.
BRATS_LABELS: frozenset[int] = frozenset({0, 1, 2, 4})

_DEMO_SIZES = {"demo": (24, (96, 96, 40)), "tiny": (5, (96, 96, 12))}


# ----------------------------------------------------------------------------------------------- layout
def find_cases(dataset_dir: str | os.PathLike) -> list[Path]:
    """Case folders ``BraTS20_*`` of a dataset, sorted by name."""
    d = Path(dataset_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and p.name.startswith("BraTS20_"))


def _case_file(case_dir: Path, suffix: str) -> Path:
    return case_dir / f"{case_dir.name}_{suffix}.nii.gz"


def verify_dataset(dataset_dir: str | os.PathLike, require_label: bool = True) -> DatasetReport:
    """Check every case of a BraTS-layout dataset before any compute; list every bad case by name.

    Checks: at least one ``BraTS20_*`` case folder; all four sequences (and ``seg`` when ``require_label``)
    present and readable; all files of a case of the same 3-D shape; ``seg`` values in {0, 1, 2, 4}.

    Args:
        dataset_dir: the dataset folder.
        require_label: whether ``seg`` is required (False for inference inputs). Default True.

    Returns:
        A :class:`DatasetReport` (``report.ok`` / ``report.raise_if_bad()``).
    """
    report = DatasetReport(str(dataset_dir))
    report.fix = (
        "every case folder BraTS20_Training_XXX needs BraTS20_Training_XXX_{flair,t1,t1ce,t2,seg}.nii.gz of one "
        "shape, with seg values in {0,1,2,4}; remove or repair the cases listed"
    )
    d = Path(dataset_dir)
    if not d.is_dir():
        report.add(str(d), "dataset folder does not exist; pass --dataset_dir pointing at the BraTS 2020 folder")
        return report
    cases = find_cases(d)
    report.n_cases = len(cases)
    if not cases:
        report.add(d.name, "no case folders named BraTS20_* found (expected BraTS20_Training_001/ ...)")
        return report
    for case in cases:
        names = list(SEQUENCES) + (["seg"] if require_label else [])
        shapes: dict[str, tuple[int, ...]] = {}
        for name in names:
            f = _case_file(case, name)
            if not f.is_file():
                report.add(case.name, f"{f.name} missing (sequence '{name}'); expected all of {names}")
                continue
            try:
                img = nib.load(str(f))
                shapes[name] = tuple(int(s) for s in img.shape)
            except Exception as e:  # noqa: BLE001 - any reader failure is a bad file, reported by name
                report.add(case.name, f"{f.name} is not a readable NIfTI file ({type(e).__name__})")
                continue
            if len(shapes[name]) != 3:
                report.add(case.name, f"{f.name} has shape {shapes[name]}; expected a 3-D volume")
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{k} {v}" for k, v in shapes.items())
            report.add(case.name, f"sequences have different shapes ({detail}); expected one shape for all")
        seg = _case_file(case, "seg")
        if require_label and "seg" in shapes:
            try:
                _, data = load_nifti(seg)
            except ValueError as e:
                report.add(case.name, str(e))
                continue
            values = set(np.unique(data).tolist())
            bad = sorted(v for v in values if v not in BRATS_LABELS)
            if bad:
                report.add(
                    case.name,
                    f"{seg.name} holds unexpected label values {bad[:10]}; expected only {sorted(BRATS_LABELS)}",
                )
    return report


def brats_datalist(
    dataset_dir: str | os.PathLike,
    split: str = "train",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> list[dict[str, str]]:
    """Deterministic split of the cases: ``[{"case": name, "dir": path}, ...]``.

    Args:
        dataset_dir: the dataset folder.
        split: ``"train"``, ``"validation"``, ``"test"`` or ``"all"``.
        val_fraction: fraction of cases for validation, in [0, 1). Default 0.2 (at least 1 case when >= 3 cases).
        test_fraction: fraction of cases for the test split, in [0, 1). Default 0.2 (same rule).

    Raises:
        ConfigError: unknown split or fractions out of range. DatasetError: no case found.
    """
    if split not in ("train", "validation", "test", "all"):
        raise ConfigError(f"split={split!r}: expected 'train', 'validation', 'test' or 'all'")
    vf = check_in_range("val_fraction", val_fraction, 0.0, 1.0)
    tf = check_in_range("test_fraction", test_fraction, 0.0, 1.0)
    cases = find_cases(dataset_dir)
    if not cases:
        raise DatasetError(f"{dataset_dir}: no BraTS20_* case folders; point --dataset_dir at the BraTS 2020 folder")
    items = [{"case": c.name, "dir": str(c)} for c in cases]
    if split == "all":
        return items
    n = len(items)
    n_test = max(1, round(n * tf)) if (tf > 0 and n >= 3) else 0
    n_val = max(1, round(n * vf)) if (vf > 0 and n >= 3) else 0
    if n_test + n_val >= n:
        n_test, n_val = min(n_test, 1), min(n_val, 1)
    n_train = n - n_val - n_test
    if split == "train":
        return items[:n_train]
    if split == "validation":
        return items[n_train : n_train + n_val]
    return items[n_train + n_val :]


# ----------------------------------------------------------------------------------------------- loading
def mean_projection(
    image: np.ndarray, label: np.ndarray | None, max_slices: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Reduce the slice axis (last) to ``max_slices`` groups: mean of images, max (OR) of labels.

    Args:
        image: ``[C, H, W, Z]``.
        label: ``[H, W, Z]`` or None.
        max_slices: number of output slices when ``Z > max_slices``; 0 disables the projection.

    Returns:
        ``(image [C, H, W, Z'], label [H, W, Z'] | None, ranges [Z', 2])`` with the source slice range
        ``[start, stop)`` of every output slice.
    """
    z = image.shape[-1]
    if max_slices <= 0 or z <= max_slices:
        return image, label, np.stack([np.arange(z), np.arange(z) + 1], axis=1)
    groups = np.array_split(np.arange(z), max_slices)
    img = np.stack([image[..., g].mean(axis=-1) for g in groups], axis=-1)
    lbl = None if label is None else np.stack([label[..., g].max(axis=-1) for g in groups], axis=-1)
    ranges = np.array([[g[0], g[-1] + 1] for g in groups])
    return img, lbl, ranges


def load_case(
    case_dir: str | os.PathLike,
    image_size: Sequence[int] = (96, 96),
    max_slices: int = 48,
    with_label: bool = True,
) -> dict[str, Any]:
    """Load one case into memory as slices.

    Args:
        case_dir: ``.../BraTS20_Training_XXX``.
        image_size: in-plane size ``(H, W)`` after resizing. Default (96, 96).
        max_slices: mean-intensity projection target (0 = off). Default 48.
        with_label: load ``seg`` (binarised). Default True.

    Returns:
        ``{"case", "image": float32 [Z', 4, H, W], "label": uint8 [Z', 1, H, W] (if with_label),
        "affine": [4, 4], "orig_shape": (X, Y, Z), "ranges": [Z', 2]}``.

    Raises:
        DatasetError: a file is missing or unreadable, or shapes differ (names the case).
    """
    case_dir = Path(case_dir)
    chans, ref = [], None
    for name in SEQUENCES:
        try:
            img, data = load_nifti(_case_file(case_dir, name))
        except ValueError as e:
            raise DatasetError(f"{case_dir.name}: {e}") from None
        if ref is None:
            ref = img
        elif data.shape != ref.shape:
            raise DatasetError(f"{case_dir.name}: {name} has shape {data.shape}, flair has {ref.shape}")
        chans.append(np.asarray(data, dtype=np.float32))
    image = np.stack(chans)  # [4, X, Y, Z]
    image = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(image), dtype=np.float32)
    label = None
    if with_label:
        try:
            _, seg = load_nifti(_case_file(case_dir, "seg"))
        except ValueError as e:
            raise DatasetError(f"{case_dir.name}: {e}") from None
        if seg.shape != ref.shape:
            raise DatasetError(f"{case_dir.name}: seg has shape {seg.shape}, flair has {ref.shape}")
        label = (np.asarray(seg) > 0).astype(np.uint8)
    image, label, ranges = mean_projection(image, label, int(max_slices))
    img_t = torch.from_numpy(np.ascontiguousarray(image)).permute(3, 0, 1, 2)  # [Z, 4, X, Y]
    size = tuple(int(s) for s in image_size)
    if tuple(img_t.shape[-2:]) != size:
        img_t = torch.nn.functional.interpolate(img_t, size=size, mode="bilinear", align_corners=False)
    out: dict[str, Any] = {
        "case": case_dir.name,
        "image": img_t.contiguous().float(),
        "affine": np.asarray(ref.affine, dtype=np.float64),
        "orig_shape": tuple(int(s) for s in ref.shape),
        "ranges": ranges,
    }
    if label is not None:
        lbl_t = torch.from_numpy(np.ascontiguousarray(label)).permute(2, 0, 1)[:, None].float()  # [Z, 1, X, Y]
        if tuple(lbl_t.shape[-2:]) != size:
            lbl_t = torch.nn.functional.interpolate(lbl_t, size=size, mode="nearest")
        out["label"] = lbl_t.to(torch.uint8).contiguous()
    return out


class BratsVolumeDataset(torch.utils.data.Dataset):
    """Whole volumes (as stacks of slices), cached in memory: one item per case (evaluation and inference).

    Args:
        data: datalist from :func:`brats_datalist` (``[{"case", "dir"}, ...]``).
        image_size: in-plane size. Default (96, 96).
        max_slices: mean-intensity projection target (0 = off). Default 48.
        with_label: load labels. Default True.

    Items: ``{"case": str, "image": [Z, 4, H, W], "label": [Z, 1, H, W] (with labels), "affine": [4, 4],
    "orig_shape": [3], "ranges": [Z, 2]}`` — use ``batch_size=1``.
    """

    def __init__(
        self,
        data: Sequence[dict[str, str]],
        image_size: Sequence[int] = (96, 96),
        max_slices: int = 48,
        with_label: bool = True,
    ) -> None:
        if len(data) == 0:
            raise DatasetError("BratsVolumeDataset: the datalist is empty; check --dataset_dir and the split")
        self.volumes = [load_case(d["dir"], image_size, max_slices, with_label) for d in data]

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v = self.volumes[i]
        item = {
            "case": v["case"],
            "image": v["image"],
            "affine": torch.as_tensor(v["affine"]),
            "orig_shape": torch.tensor(v["orig_shape"]),
            "ranges": torch.as_tensor(v["ranges"]),
        }
        if "label" in v:
            item["label"] = v["label"]
        return item


class BratsSliceDataset(torch.utils.data.Dataset):
    """2-D slices of volumes cached in memory (slice-wise training, the source document's setting).

    Args:
        data: datalist from :func:`brats_datalist`.
        image_size: in-plane size. Default (96, 96).
        max_slices: mean-intensity projection target (0 = off). Default 48.
        transform: callable applied to every item dict (e.g. random flips then ``BoxTargetsd``). Default None.

    Items: ``{"image": [4, H, W] float32, "label": [1, H, W] uint8, "case": str, "slice": int}``.
    """

    def __init__(
        self,
        data: Sequence[dict[str, str]],
        image_size: Sequence[int] = (96, 96),
        max_slices: int = 48,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        if len(data) == 0:
            raise DatasetError("BratsSliceDataset: the datalist is empty; check --dataset_dir and the split")
        self.volumes = [load_case(d["dir"], image_size, max_slices, True) for d in data]
        self.index = [(v, z) for v, vol in enumerate(self.volumes) for z in range(vol["image"].shape[0])]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, z = self.index[i]
        vol = self.volumes[v]
        item = {"image": vol["image"][z], "label": vol["label"][z], "case": vol["case"], "slice": z}
        return self.transform(item) if self.transform is not None else item


# ----------------------------------------------------------------------------------------------- demo data
def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return f / (np.abs(f).max() + 1e-8)


def _demo_case(rng: np.random.Generator, shape: tuple[int, int, int], n_tumours: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic brain: four sequences ``[4, X, Y, Z]`` (int16) and a BraTS-valued seg ``[X, Y, Z]``."""
    x, y, z = (np.arange(n, dtype=np.float32) for n in shape)
    xx, yy, zz = np.meshgrid(x, y, z, indexing="ij")
    c = np.array(shape, dtype=np.float32) / 2 + rng.uniform(-2, 2, 3)
    radii = np.array(shape, dtype=np.float32) * np.array([0.40, 0.34, 0.55]) * rng.uniform(0.9, 1.05, 3)
    r = np.sqrt(((xx - c[0]) / radii[0]) ** 2 + ((yy - c[1]) / radii[1]) ** 2 + ((zz - c[2]) / radii[2]) ** 2)
    brain = r < 1.0
    texture = _smooth(rng, shape, 3.0)
    gm = brain & ((r > 0.8) | (texture > 0.25))
    vent = (
        ((xx - c[0]) / (radii[0] * 0.18)) ** 2
        + ((np.abs(yy - c[1]) - radii[1] * 0.15) / (radii[1] * 0.1)) ** 2
        + ((zz - c[2]) / (radii[2] * 0.35)) ** 2
    ) < 1.0
    #          flair  t1    t1ce  t2
    wm_i = np.array([0.55, 0.80, 0.80, 0.45])
    gm_i = np.array([0.65, 0.60, 0.62, 0.60])
    csf_i = np.array([0.20, 0.25, 0.25, 1.00])
    img = np.zeros((4, *shape), dtype=np.float32)
    for s in range(4):
        vol = np.where(gm, gm_i[s], wm_i[s]) * brain
        vol = np.where(vent & brain, csf_i[s], vol)
        img[s] = vol
    seg = np.zeros(shape, dtype=np.uint8)
    for _ in range(n_tumours):
        rad = rng.uniform(3.0, 13.0) * rng.uniform(0.7, 1.3, 2)  # in-plane semi-axes (px)
        rz = rng.uniform(2.0, max(2.5, shape[2] * 0.3))
        for _try in range(20):
            tc = c + rng.uniform(-0.55, 0.55, 3) * radii
            if np.sqrt((((tc - c) / radii) ** 2).sum()) < 0.6:
                break
        d = np.sqrt(((xx - tc[0]) / rad[0]) ** 2 + ((yy - tc[1]) / rad[1]) ** 2 + ((zz - tc[2]) / rz) ** 2)
        d = d + 0.25 * _smooth(rng, shape, 2.0)  # irregular outline
        tumour = (d < 1.0) & brain
        core, ring = tumour & (d < 0.45), tumour & (d >= 0.45) & (d < 0.7)
        edema = tumour & (d >= 0.7)
        seg[edema & (seg == 0)] = 2
        seg[ring] = 4
        seg[core] = 1
        k = rng.uniform(0.6, 1.4)  # contrast of this tumour
        img[0][edema | ring] += 0.45 * k
        img[0][core] += 0.25 * k
        img[1][tumour] -= 0.2 * k
        img[2][ring] += 0.6 * k
        img[2][core] -= 0.25 * k
        img[3][edema] += 0.4 * k
        img[3][core | ring] += 0.5 * k
    img += rng.normal(0.0, 0.03, img.shape).astype(np.float32) * brain
    img = np.clip(img, 0, None) * brain
    return (img * 1000).astype(np.int16), seg


def write_demo(out_dir: str | os.PathLike, size: str = "demo", seed: int = 0) -> Path:
    """Write deterministic synthetic brain MRI cases in the BraTS 2020 layout.

    Brain-like ellipsoids with grey/white matter texture and ventricles, four sequences with different tissue
    contrasts, 0-2 tumours per case of varying size, shape, position and contrast (oedema bright on FLAIR/T2,
    enhancing rim on T1ce, darker on T1), labelled with BraTS values {1, 2, 4}; every case with index ``i % 6 == 1``
    has no tumour, and slices above/below the tumours have none either.

    Args:
        out_dir: destination folder (created).
        size: ``"demo"`` (24 cases of 96x96x40) or ``"tiny"`` (5 cases of 96x96x12, for tests).
        seed: generator seed; the same seed writes the same files.

    Returns:
        ``out_dir``.
    """
    if size not in _DEMO_SIZES:
        raise ConfigError(f"size={size!r}: expected one of {sorted(_DEMO_SIZES)}")
    n_cases, shape = _DEMO_SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for i in range(n_cases):
        rng = np.random.default_rng([seed, i])
        n_tumours = 0 if i % 6 == 1 else (2 if rng.uniform() < 0.25 else 1)
        img, seg = _demo_case(rng, shape, n_tumours)
        name = f"BraTS20_Training_{i + 1:03d}"
        for s, seq in enumerate(SEQUENCES):
            save_nifti(nib.Nifti1Image(img[s], affine), out / name / f"{name}_{seq}.nii.gz")
        save_nifti(nib.Nifti1Image(seg, affine), out / name / f"{name}_seg.nii.gz")
    return out


def check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    """Validate an in-plane size ``(H, W)``."""
    if isinstance(image_size, int) or len(image_size) != 2:
        raise ConfigError(f"image_size={image_size!r}: expected [H, W]")
    return check_positive_int("image_size", image_size[0]), check_positive_int("image_size", image_size[1])


def prepare_inputs(input_dir: str | os.PathLike, demo_dir: str | os.PathLike | None = None) -> str:
    """Inference inputs: write the demo cases when ``input_dir`` is the (empty) demo folder, then check them.

    Labels are optional here (``verify_dataset(require_label=False)``).

    Raises:
        DatasetError: listing every bad case.
    """
    d = Path(input_dir)
    if demo_dir is not None and d.resolve() == Path(demo_dir).resolve() and not (d.is_dir() and any(d.iterdir())):
        write_demo(d, size="demo")
    verify_dataset(d, require_label=False).raise_if_bad()
    return str(d)
