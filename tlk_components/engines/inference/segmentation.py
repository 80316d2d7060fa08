# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Pre- and postprocessing of 3-D CT segmentation inference (kidney_ct_da_segmentation, abdomen_ct_attention_segmentation).

* :func:`ct_preprocessing` - load, channel-first, reorient to RAS, resample to the plan's spacing, CT-normalise.
* :func:`prediction_postprocessing` - softmax, optional AMOS->kidney channel map, PNG overlay, inversion of the
  preprocessing (MONAI ``Invertd``: back to the original spacing, orientation and shape), argmax, and
  :class:`SaveNiftiLikeInputd` (one NIfTI per case with the input's affine and header).
* Overlays a person can read: soft-tissue window, axial slices in radiological orientation, R/L marked.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    MapTransform,
    Orientationd,
    Spacingd,
)

from tlk_components.data.inputs import case_name
from tlk_components.data.nifti_checks import save_nifti
from tlk_components.data.transforms import CTNormalized, KidneyFromAmosd
from tlk_components.utils.errors import ConfigError, DatasetError

__all__ = [
    "SOFT_TISSUE_WINDOW",
    "OverlayPNGd",
    "SaveNiftiLikeInputd",
    "add_lr_markers",
    "axial_display",
    "ct_preprocessing",
    "display_window",
    "prediction_postprocessing",
    "save_nifti_like",
    "save_overlay_png",
]


def ct_preprocessing(
    *,
    keys: Sequence[str] = ("image",),
    label_keys: Sequence[str] = (),
    spacing: Sequence[float] | None = None,
    plans_file: str | os.PathLike | None = None,
    axcodes: str = "RAS",
    normalize: bool = True,
) -> Compose:
    """Deterministic CT preprocessing: load (nibabel), channel-first, reorient, resample, CT-normalise.

    Args:
        keys: image keys.
        label_keys: label keys (nearest-neighbour resampling, not normalised).
        spacing: target spacing (x, y, z) mm; default: the plan's ``target_spacing``; None without a plan =
            keep the native spacing.
        plans_file: plans.json with ``target_spacing`` and ``normalization``.
        axcodes: orientation to reorient to. Default "RAS".
        normalize: apply :class:`CTNormalized` with the plan's statistics (needs ``plans_file``).

    Returns:
        a MONAI ``Compose`` (invertible: use it as ``Invertd``'s ``transform``).

    Raises:
        ConfigError: ``normalize`` without a plans file.
    """
    keys, label_keys = list(keys), list(label_keys)
    all_keys = keys + label_keys
    if spacing is None and plans_file is not None:
        from tlk_components.data.plan import load_plans

        spacing = load_plans(plans_file)["target_spacing"]
    xforms: list[Any] = [
        LoadImaged(all_keys, reader="NibabelReader", image_only=True),
        EnsureChannelFirstd(all_keys),
        Orientationd(all_keys, axcodes=axcodes, labels=None),
    ]
    if spacing is not None:
        modes = ["bilinear"] * len(keys) + ["nearest"] * len(label_keys)
        xforms.append(Spacingd(all_keys, pixdim=[float(s) for s in spacing], mode=modes))
    if normalize:
        if plans_file is None:
            raise ConfigError("ct_preprocessing(normalize=True) needs plans_file=...; or pass normalize=False")
        xforms.append(CTNormalized(keys, plans_file=plans_file))
    xforms.append(EnsureTyped(all_keys, track_meta=True))
    return Compose(xforms)


#: Display window of CT in Hounsfield units: abdominal soft tissue, width 400 / level 40 -> [-160, 240] HU.
SOFT_TISSUE_WINDOW: tuple[float, float] = (-160.0, 240.0)


def display_window(image: np.ndarray) -> tuple[float, float]:
    """Grey-level range of a PNG of ``image``: the soft-tissue window for CT in HU (any voxel below -500, i.e. air),
    else the 1st-99th percentile of the non-background voxels (normalised or non-CT intensities)."""
    image = np.asarray(image, dtype=np.float32)
    if image.size and float(image.min()) < -500:
        return SOFT_TISSUE_WINDOW
    body = image[image > image.min()] if image.size else image
    lo, hi = np.percentile(body if body.size else np.zeros(1), [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def axial_display(volume_ras: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of a RAS-ordered ``(x, y, z)`` volume in radiological display: anterior up, the patient's
    right on the image's left (every PNG of the CT bundles uses this; :func:`add_lr_markers` labels it)."""
    return np.fliplr(np.rot90(np.asarray(volume_ras)[..., int(z)]))


def add_lr_markers(ax: Any) -> None:
    """Write "R" at the left and "L" at the right edge of a radiological axial panel (see :func:`axial_display`)."""
    style = {"color": "yellow", "fontsize": 9, "fontweight": "bold", "va": "center", "transform": ax.transAxes}
    ax.text(0.02, 0.5, "R", ha="left", **style)
    ax.text(0.98, 0.5, "L", ha="right", **style)


def save_overlay_png(
    image: np.ndarray, label: np.ndarray, path: str | os.PathLike, title: str = "", slice_index: int | None = None
) -> Path:
    """Save a PNG of the axial slice (last axis) with the most foreground, labels coloured over the CT in grey.

    The slice is shown in radiological convention (anterior up, the patient's right on the image's left, marked
    "R"/"L"), the CT in the soft-tissue window when it is in HU (see :func:`display_window`).

    Args:
        image: 3-D image (x, y, z) in RAS order.
        label: 3-D integer labels on the same grid.
        path: PNG path (written atomically).
        title: figure title.
        slice_index: axial slice to show; default the one with the most labelled voxels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tlk_components.engines.handlers.reporting import save_figure

    image, label = np.asarray(image, dtype=np.float32), np.asarray(label)
    if image.shape != label.shape or image.ndim != 3:
        raise ConfigError(f"overlay: image {image.shape} and label {label.shape} must be the same 3-D shape")
    k = int(np.argmax((label > 0).sum(axis=(0, 1)))) if slice_index is None else int(slice_index)
    lo, hi = display_window(image)
    img2d = axial_display(image, k)
    lab2d = axial_display(label, k).astype(float)
    fig, ax = plt.subplots(1, 2, figsize=(8, 4.2))
    for a in ax:
        a.imshow(img2d, cmap="gray", vmin=lo, vmax=hi)
        a.axis("off")
        add_lr_markers(a)
    masked = np.ma.masked_where(lab2d == 0, lab2d)
    ax[1].imshow(masked, cmap="tab20", alpha=0.5, vmin=0, vmax=max(20, int(lab2d.max()) + 1), interpolation="nearest")
    ax[0].set_title("CT")
    ax[1].set_title(f"prediction (axial slice {k})")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


class OverlayPNGd(MapTransform):
    """Write ``<output_dir>/<case>_overlay.png``: the prediction over the (preprocessed) CT, on the slice with the
    most foreground.

    Args:
        keys: prediction key(s): channel-first probabilities/logits (argmax taken) or a 1-channel label map.
        image_key: the CT image key on the same grid. Default "image".
        output_dir: folder for the PNGs.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        image_key: str = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        src = getattr(image, "meta", {}).get("filename_or_obj", "case")
        img = np.asarray(torch.as_tensor(image).detach().cpu())[0]
        for key in self.key_iterator(d):
            pred = torch.as_tensor(d[key]).detach().cpu()
            lab = pred.argmax(0) if pred.shape[0] > 1 else pred[0]
            save_overlay_png(img, lab.numpy(), self.output_dir / f"{case_name(src)}_overlay.png", title=case_name(src))
        return d


class SaveNiftiLikeInputd(MapTransform):
    """Write each prediction as ``<output_dir>/<case><postfix>.nii.gz`` with the input file's affine and header.

    The prediction must already be on the input's voxel grid (after ``Invertd``); the input file is read (header
    only) from the meta data's ``filename_or_obj``.

    Args:
        keys: label-map key(s) (1 channel, integers).
        output_dir: destination folder (created).
        output_postfix: appended to the case name. Default "_seg".
        dtype: on-disk label type. Default uint8.
        allow_missing_keys: skip absent keys.

    Raises:
        DatasetError: the prediction's shape differs from the input image (it was not inverted).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        output_postfix: str = "_seg",
        dtype: str = "uint8",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.dtype = np.dtype(dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            src = getattr(pred, "meta", {}).get("filename_or_obj") or getattr(d.get("image"), "meta", {}).get(
                "filename_or_obj"
            )
            if not src:
                raise DatasetError(f"{key}: no 'filename_or_obj' in the meta data; cannot find the input header")
            ref = nib.load(str(src))
            arr = np.asarray(torch.as_tensor(pred).detach().cpu())
            arr = arr[0] if arr.ndim == len(ref.shape) + 1 else arr
            if tuple(arr.shape) != tuple(ref.shape[:3]):
                raise DatasetError(
                    f"{case_name(src)}: prediction shape {tuple(arr.shape)} != input shape {tuple(ref.shape)}; "
                    "invert the preprocessing (Invertd) before saving"
                )
            header = ref.header.copy()
            header.set_data_dtype(self.dtype)
            out = nib.Nifti1Image(np.rint(arr).astype(self.dtype), ref.affine, header=header)
            out.set_qform(*ref.get_qform(coded=True))  # keep both orientation matrices and their codes as given
            out.set_sform(*ref.get_sform(coded=True))
            out.header.set_slope_inter(1.0, 0.0)
            save_nifti(out, self.output_dir / f"{case_name(src)}{self.output_postfix}.nii.gz")
        return d


def save_nifti_like(
    volume: np.ndarray,
    reference: nib.Nifti1Image,
    path: str | os.PathLike,
    dtype: Any = np.float32,
    descrip: str | None = None,
) -> Path:
    """Write ``volume`` (on the reference's voxel grid) with the reference's affine, header, qform and sform.

    For non-label volumes on the input grid (e.g. saliency maps); label maps go through :class:`SaveNiftiLikeInputd`.

    Args:
        volume: array of shape ``reference.shape[:3]``.
        reference: the input image (nibabel).
        path: output ``.nii.gz`` path (written atomically, folders created).
        dtype: stored data type. Default float32.
        descrip: optional header ``descrip`` text (at most 79 characters are kept).

    Returns:
        the written path.

    Raises:
        DatasetError: the shape differs from the reference's.
    """
    volume = np.asarray(volume)
    if volume.shape != tuple(reference.shape[:3]):
        raise DatasetError(f"{path}: volume shape {volume.shape} differs from the input's {tuple(reference.shape[:3])}")
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    img = nib.Nifti1Image(volume.astype(dtype), reference.affine, header=header)
    img.set_qform(*reference.get_qform(coded=True))
    img.set_sform(*reference.get_sform(coded=True))
    img.header.set_slope_inter(1.0, 0.0)
    if descrip is not None:
        img.header["descrip"] = descrip.encode("ascii", "replace")[:79]
    return save_nifti(img, path)


def prediction_postprocessing(
    *,
    preprocessing: Compose,
    output_dir: str | os.PathLike,
    pred_key: str = "pred",
    image_key: str = "image",
    kidney_from_amos: bool = False,
    overlay: bool = True,
    save: bool = True,
    output_postfix: str = "_seg",
) -> Compose:
    """Post-processing of one predicted case (after ``decollate_batch``), for an evaluator's ``postprocessing``.

    softmax -> [AMOS -> (background, kidney)] -> [PNG overlay on the preprocessed grid] -> ``Invertd`` (back to the
    original spacing, orientation and shape; bilinear on probabilities) -> argmax -> [NIfTI like the input].

    Args:
        preprocessing: the (invertible) preprocessing ``Compose`` that produced ``image_key``.
        output_dir: where NIfTI predictions and overlays go.
        pred_key: prediction key. Default "pred".
        image_key: image key. Default "image".
        kidney_from_amos: map a 16-channel AMOS prediction to (background, kidney) first.
        overlay: write ``<case>_overlay.png``.
        save: write ``<case><output_postfix>.nii.gz``.
        output_postfix: file-name suffix. Default "_seg".

    Returns:
        a MONAI ``Compose``.
    """
    xforms: list[Any] = [Activationsd(pred_key, softmax=True)]
    if kidney_from_amos:
        xforms.append(KidneyFromAmosd(pred_key))
    if overlay:
        xforms.append(OverlayPNGd(pred_key, output_dir=output_dir, image_key=image_key))
    xforms += [
        Invertd(pred_key, transform=preprocessing, orig_keys=image_key, nearest_interp=False, to_tensor=True),
        AsDiscreted(pred_key, argmax=True),
    ]
    if save:
        xforms.append(SaveNiftiLikeInputd(pred_key, output_dir=output_dir, output_postfix=output_postfix))
    return Compose(xforms)
