# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""MONAI-style dictionary transforms for the CT bundles.

* :class:`CTNormalized` - nnU-Net's "CT" normalisation with dataset-wide statistics: clip to the foreground
  0.5/99.5 percentiles, then z-score with the foreground mean and std. For domain adaptation the statistics
  come from the **source** foreground and are applied to both domains (TLK's recipe: the target is normalised
  with the statistics of the domain the network was trained on; Isensee et al., nnU-Net, Nature Methods 2021,
  for the CT scheme). Values are read from ``plans.json``
  (:mod:`tlk_components.data.plan`) or given explicitly.
* :class:`CompactFgBgIndicesd` - the foreground/background sampling indices of a label for MONAI's
  ``RandCropByPosNegLabeld``, compact enough to cache: ``int32`` foreground indices and an evenly strided subset of
  at most ``max_background`` background indices (MONAI's ``FgBgToIndicesd`` keeps every background voxel as
  ``int64``: 8 bytes per cached voxel, twice the image).
* :func:`nnunet_augmentation` - nnU-Net's training augmentation built from MONAI transforms (rotation and
  scaling, Gaussian noise and blur, brightness, contrast, simulated low resolution, gamma, mirroring), shared by the
  CT segmentation bundles.
* :func:`strong_intensity_view` - a strongly perturbed copy of the image (contrast, brightness, shift, gamma,
  noise; no spatial change) for mean-teacher self-training: the teacher labels the image, the student the copy.
* :class:`KidneyFromAmosd` - maps a 16-channel AMOS output to 2 channels (background, kidney) with
  kidney = max(right kidney, left kidney) and background = max(every other channel), as TLK did at prediction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, check_positive_int, check_probability

__all__ = [
    "BODY_HU",
    "CTNormalized",
    "CompactFgBgIndicesd",
    "KidneyFromAmosd",
    "chain",
    "nnunet_augmentation",
    "load_normalization",
    "select_body",
    "strong_intensity_view",
]

#: CT voxels above this value (HU) are the body (fat, soft tissue, bone, contrast); air and lung lie below.
BODY_HU = -500.0


def chain(parts: Sequence[Callable | Sequence[Callable]]) -> Compose:
    """One ``Compose`` of ``parts`` in order: transforms, lists of transforms and ``Compose`` objects (flattened).

    How a config composes pipelines from named pieces without list arithmetic in ``$`` expressions, e.g. the
    kidney bundle's ``[load, align, resample, label map]``: an optional step is a part, not a slice.

    Args:
        parts: each a transform, a list/tuple of transforms, or a ``Compose`` (its ``transforms`` are taken).

    Returns:
        ``Compose`` of the flattened transforms (MONAI's defaults).

    Raises:
        ConfigError: a part that is not callable.

    Example:
        >>> chain([[select_body], Compose([abs])]).transforms == (select_body, abs)
        True
    """
    flat: list[Callable] = []
    for i, part in enumerate(parts):
        items = part.transforms if isinstance(part, Compose) else part if isinstance(part, list | tuple) else [part]
        for t in items:
            if not callable(t):
                raise ConfigError(f"chain: parts[{i}] holds {type(t).__name__}, not a transform")
            flat.append(t)
    return Compose(flat)


def select_body(x: torch.Tensor | np.ndarray, threshold_hu: float = BODY_HU) -> torch.Tensor | np.ndarray:
    """The body mask of a CT image in Hounsfield units: ``x > threshold_hu`` (default :data:`BODY_HU`).

    For ``CropForegroundd(select_fn=...)``: cropping each volume to the body's bounding box keeps the patients'
    anatomy and drops the air around them (on real scans a third of the field of view or more), so cached volumes
    are smaller and random patches land in the body. The kidney bundle crops before resampling, so that only the
    body is resampled (on a 512 x 512 x 475 scan: 11 instead of 15 s and 2.7 instead of 3.2 GB of transient memory).
    """
    return x > threshold_hu


def load_normalization(plans_file: str | os.PathLike) -> dict[str, float]:
    """Read ``{"clip_low", "clip_high", "mean", "std"}`` from the ``normalization`` entry of a plans.json.

    Raises:
        ConfigError: missing file or keys, naming the file and how to create it.
    """
    path = Path(plans_file)
    if not path.is_file():
        raise ConfigError(
            f"plans file {path} not found; create it with `python -m tlk_components plan DATASET_DIR --out {path}`"
        )
    try:
        norm = json.loads(path.read_text())["normalization"]
        return {k: float(norm[k]) for k in ("clip_low", "clip_high", "mean", "std")}
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"{path}: no valid 'normalization' entry with clip_low, clip_high, mean, std ({type(e).__name__}: {e}); "
            "regenerate it with `python -m tlk_components plan`"
        ) from None


class CTNormalized(MapTransform):
    """Clip CT intensities to [clip_low, clip_high], then ``(x - mean) / std``, with fixed dataset statistics.

    Reference: nnU-Net ``preprocessing.py`` CT scheme (``use_mask_for_norm=False``), statistics from every
    10th foreground voxel of the (source) training set.

    Args:
        keys: image keys to normalise.
        plans_file: a plans.json whose ``normalization`` entry gives the four values; or give them directly.
        clip_low: lower clip (HU), e.g. the foreground 0.5th percentile.
        clip_high: upper clip (HU), > clip_low.
        mean: foreground mean (HU).
        std: foreground standard deviation (HU), > 0.
        allow_missing_keys: do not fail when a key is absent.

    Shape:
        any; works on numpy arrays and (Meta)Tensors, keeps the type and meta data.

    Raises:
        ConfigError: neither a plans file nor all four values, std <= 0 or clip_low >= clip_high.
    """

    def __init__(
        self,
        keys: KeysCollection,
        plans_file: str | os.PathLike | None = None,
        clip_low: float | None = None,
        clip_high: float | None = None,
        mean: float | None = None,
        std: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        given = {"clip_low": clip_low, "clip_high": clip_high, "mean": mean, "std": std}
        if plans_file is not None:
            values = load_normalization(plans_file)
            values.update({k: float(v) for k, v in given.items() if v is not None})
        else:
            missing = [k for k, v in given.items() if v is None]
            if missing:
                raise ConfigError(
                    f"CTNormalized: {missing} not given; pass plans_file=... or all of clip_low, clip_high, mean, std"
                )
            values = {k: float(v) for k, v in given.items()}  # type: ignore[arg-type]
        if not values["std"] > 0:
            raise ConfigError(f"CTNormalized: std={values['std']}: expected > 0")
        if not values["clip_low"] < values["clip_high"]:
            raise ConfigError(f"CTNormalized: clip_low={values['clip_low']} must be < clip_high={values['clip_high']}")
        self.clip_low, self.clip_high = values["clip_low"], values["clip_high"]
        self.mean, self.std = values["mean"], values["std"]

    def normalize(self, img: Any) -> Any:
        """Apply the clip and z-score to one array or tensor (float32 result)."""
        if isinstance(img, torch.Tensor):
            out = img.float().clamp(self.clip_low, self.clip_high)
            return (out - self.mean) / self.std
        arr = np.clip(np.asarray(img, dtype=np.float32), self.clip_low, self.clip_high)
        return (arr - np.float32(self.mean)) / np.float32(self.std)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key])
        return d


class KidneyFromAmosd(MapTransform):
    """Turn AMOS class scores into (background, kidney): kidney = max of the kidney channels, background = max
    of all the others.

    Args:
        keys: keys of channel-first scores (logits or probabilities) with the AMOS channels (16 incl. background).
        kidney_channels: channels that make "kidney". Default (2, 3) (AMOS right and left kidney).
        allow_missing_keys: do not fail when a key is absent.

    Shape:
        (C, *spatial) -> (2, *spatial), or (B, C, *spatial) -> (B, 2, *spatial) when ``batched``.

    Raises:
        ConfigError: a kidney channel outside the input's channels (when called).
    """

    def __init__(
        self,
        keys: KeysCollection,
        kidney_channels: Sequence[int] = (2, 3),
        batched: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.kidney_channels = [check_positive_int("kidney_channels[i]", c, minimum=0) for c in kidney_channels]
        if not self.kidney_channels:
            raise ConfigError("KidneyFromAmosd: kidney_channels is empty; expected e.g. (2, 3)")
        self.batched = batched

    def map_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Map one tensor of scores (channel axis 0, or 1 when batched)."""
        axis = 1 if self.batched else 0
        n = scores.shape[axis]
        if max(self.kidney_channels) >= n:
            raise ConfigError(
                f"KidneyFromAmosd: kidney channel {max(self.kidney_channels)} >= the {n} channels of "
                "the prediction; the network must output the AMOS classes (16 channels)"
            )
        others = [c for c in range(n) if c not in self.kidney_channels]
        kid = scores.index_select(axis, torch.as_tensor(self.kidney_channels, device=scores.device)).amax(axis)
        bg = scores.index_select(axis, torch.as_tensor(others, device=scores.device)).amax(axis)
        return torch.stack([bg, kid], dim=axis)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.map_scores(torch.as_tensor(d[key]))
        return d


class CompactFgBgIndicesd(MapTransform):
    """Foreground and (strided) background voxel indices of a label, for ``RandCropByPosNegLabeld``.

    Writes ``<key>_fg_indices`` (every voxel with label > 0, flat C-order indices of the spatial shape) and
    ``<key>_bg_indices`` (every ``k``-th label-0 voxel in C order, ``k = ceil(n_background / max_background)``, so
    at most ``max_background`` of them, spread evenly over the volume). Both are ``int32`` when the volume has
    fewer than 2**31 voxels, else ``int64``. ``RandCropByPosNegLabeld(..., fg_indices_key=..., bg_indices_key=...)``
    then draws a foreground centre with probability ``pos / (pos + neg)`` and otherwise a background centre from
    the subset: the same distribution as MONAI's ``FgBgToIndicesd`` up to the stride, at ~4 bytes per foreground
    voxel instead of 8 bytes per voxel.

    Args:
        keys: label key(s); shape ``(1, *S)`` or ``(*S)``.
        max_background: cap on the background indices kept, >= 1 (default 100000).
        image_key: with ``image_threshold``, background centres are only label-0 voxels whose image value (any
            channel) is above the threshold, as ``RandCropByPosNegLabeld(image_key=..., image_threshold=...)`` does
            without precomputed indices (e.g. no crop centred in the air around the body). Default None: every
            label-0 voxel.
        image_threshold: see ``image_key`` (default 0.0).
        allow_missing_keys: skip absent keys.

    Raises:
        ConfigError: ``max_background`` < 1.
        ValueError: at call time, a label with more than one channel, or an image of another spatial shape.
    """

    def __init__(
        self,
        keys: KeysCollection,
        max_background: int = 100_000,
        image_key: str | None = None,
        image_threshold: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.max_background = check_positive_int("max_background", max_background)
        self.image_key = image_key
        self.image_threshold = check_in_range("image_threshold", image_threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add the two index arrays for every key."""
        d = dict(data)
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key])
            if label.ndim >= 4 and label.shape[0] != 1:
                raise ValueError(f"{key}: expected a one-channel label (1, *S), got shape {tuple(label.shape)}")
            flat = (label.reshape(-1) > 0).cpu().numpy()
            dtype = np.int32 if flat.size < 2**31 else np.int64
            fg = np.flatnonzero(flat).astype(dtype)
            bg = np.flatnonzero(~flat & self._inside(d, label))
            step = max(1, -(-bg.size // self.max_background))
            d[f"{key}_fg_indices"] = fg
            d[f"{key}_bg_indices"] = bg[::step].astype(dtype)
        return d

    def _inside(self, d: Mapping[Hashable, Any], label: torch.Tensor) -> np.ndarray | bool:
        """Flat mask of the voxels whose image is above ``image_threshold`` in any channel (True without an image)."""
        if self.image_key is None:
            return True
        image = torch.as_tensor(d[self.image_key])
        spatial = label.shape[1:] if label.ndim >= 4 else label.shape
        if tuple(image.shape[-len(spatial) :]) != tuple(spatial):
            raise ValueError(
                f"{self.image_key}: spatial shape {tuple(image.shape[-len(spatial) :])} differs from the label's "
                f"{tuple(spatial)}"
            )
        image = image.reshape(-1, *spatial) if image.ndim > len(spatial) else image[None]
        return (image > self.image_threshold).any(0).reshape(-1).cpu().numpy()


def nnunet_augmentation(
    keys: Sequence[str] = ("image", "label"),
    rotate_range: float = 0.26,
    scale_range: float = 0.15,
    spatial_prob: float = 0.2,
    noise_prob: float = 0.1,
    noise_std: float = 0.1,
    blur_prob: float = 0.2,
    blur_sigma: Sequence[float] = (0.5, 1.0),
    brightness_prob: float = 0.15,
    brightness: float = 0.25,
    contrast_prob: float = 0.15,
    contrast: float = 0.25,
    low_resolution_prob: float = 0.25,
    low_resolution_zoom: Sequence[float] = (0.5, 1.0),
    gamma_prob: float = 0.3,
    gamma: Sequence[float] = (0.7, 1.5),
    mirror_axes: Sequence[int] = (0, 1, 2),
    mirror_prob: float = 0.5,
) -> list[MapTransform]:
    """nnU-Net's training augmentation (Isensee et al., Nature Methods 2021, supplementary note 4) from MONAI transforms.

    In nnU-Net's order: rotation and scaling (``RandAffined``, one draw for image and label, nearest for the label),
    Gaussian noise on the image (``RandGaussianNoised``), Gaussian blur (``RandGaussianSmoothd``), brightness
    (multiplicative, ``RandScaleIntensityd``), contrast (``RandScaleIntensityFixedMeand``: scaled about the mean),
    simulated low resolution (``RandSimulateLowResolutiond``), gamma (``RandAdjustContrastd``) and mirroring
    (``RandFlipd`` per axis). The defaults are nnU-Net's probabilities and ranges, with the image z-scored or in
    [0, 1]; only the rotation (±0.26 rad = ±15°) is smaller than nnU-Net's ±30°, for CPU-sized patches.

    Args:
        keys: ``(image_key, label_key)``; the label gets only the spatial transforms. Default ("image", "label").
        rotate_range: rotation about each axis, uniform in [-r, r] radians, >= 0 (default 0.26).
        scale_range: zoom 1 + uniform in [-s, s] per axis, in [0, 1) (default 0.15).
        spatial_prob: probability of the rotation/scaling, in [0, 1] (default 0.2).
        noise_prob: probability of Gaussian noise (default 0.1); noise_std: its standard deviation, >= 0 (0.1).
        blur_prob: probability of blurring (default 0.2); blur_sigma: (low, high) sigma in voxels, per axis.
        brightness_prob: probability of a brightness change (default 0.15); brightness: factor 1 + U(-b, b).
        contrast_prob: probability of a contrast change (default 0.15); contrast: factor 1 + U(-c, c) about the mean.
        low_resolution_prob: probability of simulated low resolution (default 0.25); low_resolution_zoom: (low,
            high) downsampling factor in (0, 1].
        gamma_prob: probability of a gamma change (default 0.3); gamma: (low, high) exponent range, > 0.
        mirror_axes: spatial axes (0-2) flipped, each with ``mirror_prob`` (default all three). Leave out an axis
            when mirroring along it swaps classes: the left-right axis (0 in RAS) for labels with left and right
            organs.
        mirror_prob: probability of each flip, in [0, 1] (default 0.5).

    Returns:
        The transforms, in order (a list a config can splice into :func:`chain`).

    Raises:
        ConfigError: a probability outside [0, 1], a negative range, ``scale_range`` >= 1, a (low, high) pair not
            ordered or out of range, a mirror axis outside 0-2, or ``keys`` not two names.
    """
    from monai.transforms import (  # noqa: PLC0415 - the transform zoo is only needed to build the list
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandScaleIntensityFixedMeand,
        RandSimulateLowResolutiond,
    )

    if isinstance(keys, str) or len(keys) != 2:
        raise ConfigError(f"nnunet_augmentation: keys={keys!r}: expected [image_key, label_key]")
    image, label = str(keys[0]), str(keys[1])
    probs = {
        "spatial_prob": spatial_prob,
        "noise_prob": noise_prob,
        "blur_prob": blur_prob,
        "brightness_prob": brightness_prob,
        "contrast_prob": contrast_prob,
        "low_resolution_prob": low_resolution_prob,
        "gamma_prob": gamma_prob,
        "mirror_prob": mirror_prob,
    }
    p = {name: check_probability(name, value) for name, value in probs.items()}
    rotate = check_in_range("rotate_range", rotate_range, 0.0)
    scale = check_in_range("scale_range", scale_range, 0.0)
    if scale >= 1.0:
        raise ConfigError(f"scale_range={scale_range!r}: expected a number in [0, 1) (the zoom is 1 +/- it)")
    std = check_in_range("noise_std", noise_std, 0.0)
    bright = check_in_range("brightness", brightness, 0.0)
    contr = check_in_range("contrast", contrast, 0.0)
    sigma = _ordered_pair("blur_sigma", blur_sigma, 0.0)
    zoom = _ordered_pair("low_resolution_zoom", low_resolution_zoom, 0.0, 1.0, low_inclusive=False)
    gam = _ordered_pair("gamma", gamma, 0.0, low_inclusive=False)
    axes = [int(check_in_range(f"mirror_axes[{i}]", a, 0, 2)) for i, a in enumerate(mirror_axes)]
    if any(a != b for a, b in zip(axes, mirror_axes, strict=True)):
        raise ConfigError(f"mirror_axes={list(mirror_axes)!r}: expected spatial axes among 0, 1, 2")
    return [
        RandAffined(
            keys=[image, label],
            prob=p["spatial_prob"],
            rotate_range=[rotate] * 3,
            scale_range=[scale] * 3,
            mode=["bilinear", "nearest"],
            padding_mode="border",
        ),
        RandGaussianNoised(keys=image, prob=p["noise_prob"], std=std),
        RandGaussianSmoothd(keys=image, prob=p["blur_prob"], sigma_x=sigma, sigma_y=sigma, sigma_z=sigma),
        RandScaleIntensityd(keys=image, prob=p["brightness_prob"], factors=bright),
        RandScaleIntensityFixedMeand(keys=image, prob=p["contrast_prob"], factors=contr),
        RandSimulateLowResolutiond(keys=image, prob=p["low_resolution_prob"], zoom_range=zoom),
        RandAdjustContrastd(keys=image, prob=p["gamma_prob"], gamma=gam),
        *[RandFlipd(keys=[image, label], prob=p["mirror_prob"], spatial_axis=a) for a in axes],
    ]


def strong_intensity_view(
    key: str = "image",
    view_key: str = "image_strong",
    contrast: float = 0.3,
    brightness: float = 0.2,
    shift: float = 0.3,
    gamma: Sequence[float] = (0.7, 1.5),
    noise_std: float = 0.2,
) -> list[MapTransform]:
    """A strongly perturbed copy of ``key`` under ``view_key``, voxel for voxel in the same place (MONAI transforms).

    The student view of mean-teacher self-training (:class:`~tlk_components.adaptation.teacher.MeanTeacher`;
    Perone et al., NeuroImage 2019): every perturbation is applied to every patch, in this order: contrast about
    the mean (``RandScaleIntensityFixedMeand``, factor 1 + U(-c, c)), brightness (``RandScaleIntensityd``, 1 +
    U(-b, b)), shift (``RandShiftIntensityd``, + U(-s, s)), gamma on the min-max range (``RandAdjustContrastd``) and
    Gaussian noise (``RandGaussianNoised``, std U(0, noise_std)). Ranges are for z-scored images. Intensity only:
    the teacher's labels of ``key`` stay valid for the copy.

    Args:
        key: the image key (default "image"); view_key: the copy's key (default "image_strong").
        contrast: in [0, 0.95] (default 0.3). brightness: in [0, 0.95] (default 0.2). shift: >= 0 (default 0.3).
        gamma: (low, high) exponent range, > 0 (default (0.7, 1.5)). noise_std: >= 0 (default 0.2).

    Returns:
        ``CopyItemsd`` then the five perturbations, as a list a config can splice into :func:`chain`.

    Raises:
        ConfigError: a range out of bounds, ``gamma`` not an ordered pair, or ``view_key`` equal to ``key``.
    """
    from monai.transforms import (  # noqa: PLC0415 - the transform zoo is only needed to build the list
        CopyItemsd,
        RandAdjustContrastd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandScaleIntensityFixedMeand,
        RandShiftIntensityd,
    )

    if str(view_key) == str(key):
        raise ConfigError(f"strong_intensity_view: view_key={view_key!r} must differ from key={key!r}")
    contr = check_in_range("contrast", contrast, 0.0, 0.95)
    bright = check_in_range("brightness", brightness, 0.0, 0.95)
    shift_ = check_in_range("shift", shift, 0.0)
    gam = _ordered_pair("gamma", gamma, 0.0, low_inclusive=False)
    std = check_in_range("noise_std", noise_std, 0.0)
    view = str(view_key)
    return [
        CopyItemsd(keys=str(key), times=1, names=view),
        RandScaleIntensityFixedMeand(keys=view, prob=1.0, factors=contr),
        RandScaleIntensityd(keys=view, prob=1.0, factors=bright),
        RandShiftIntensityd(keys=view, prob=1.0, offsets=shift_),
        RandAdjustContrastd(keys=view, prob=1.0, gamma=gam),
        RandGaussianNoised(keys=view, prob=1.0, std=std),
    ]


def _ordered_pair(
    name: str, value: Sequence[float], low: float, high: float | None = None, *, low_inclusive: bool = True
) -> tuple[float, float]:
    """``(a, b)`` with ``a <= b``, both in the range (see :func:`check_in_range`)."""
    if isinstance(value, str) or len(value) != 2:
        raise ConfigError(f"{name}={value!r}: expected [low, high]")
    a, b = (check_in_range(name, v, low, high, low_inclusive=low_inclusive) for v in value)
    if a > b:
        raise ConfigError(f"{name}={list(value)!r}: expected [low, high] with low <= high")
    return a, b
