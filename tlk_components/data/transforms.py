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
from tlk_components.utils.validation import check_positive_int

__all__ = [
    "BODY_HU",
    "CTNormalized",
    "CompactFgBgIndicesd",
    "KidneyFromAmosd",
    "chain",
    "load_normalization",
    "select_body",
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
        allow_missing_keys: skip absent keys.

    Raises:
        ConfigError: ``max_background`` < 1.
        ValueError: at call time, a label with more than one channel.
    """

    def __init__(self, keys: KeysCollection, max_background: int = 100_000, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.max_background = check_positive_int("max_background", max_background)

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
            bg = np.flatnonzero(~flat)
            step = max(1, -(-bg.size // self.max_background))
            d[f"{key}_fg_indices"] = fg
            d[f"{key}_bg_indices"] = bg[::step].astype(dtype)
        return d
