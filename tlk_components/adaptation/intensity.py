# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Label-free intensity alignment of a target CT domain to the source (a simple input-space adapter).

TLK normalised BOTH domains with the source foreground statistics (clip + z-score). When the target scanner or
reconstruction maps tissue to other values (the demo's ``x 1.2 + 40 HU``), every target organ then sits at
another normalised value than the model learnt. Here the first two moments of the BODY voxels (``HU > -500``;
no label involved) are matched: ``x' = (x - μ_t) · σ_s / σ_t + μ_s``, applied to target images before the usual
normalisation. The statistics come from target IMAGES only and are stored next to the adapted model
(``intensity_alignment.json``) so inference applies the same map. Contrast-phase differences between organs
(what a linear map cannot undo) are left to the feature/output-space adapters.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import atomic_write_json
from tlk_components.utils.validation import check_positive_int

__all__ = ["IntensityAlignd", "body_stats", "ensure_alignment"]

BODY_HU = -500.0


def body_stats(datalist: Sequence[Mapping[str, str]], threshold: float = BODY_HU, stride: int = 7) -> dict[str, float]:
    """Mean and std of body voxels (``> threshold`` HU) over the images of ``datalist`` (labels are not read).

    Args:
        datalist: items with ``"image"`` paths.
        threshold: body threshold in HU (default -500).
        stride: use every ``stride``-th voxel, >= 1 (default 7).

    Raises:
        DatasetError: no image, or no body voxel.
    """
    stride = check_positive_int("stride", stride)
    values = []
    for item in datalist:
        arr = np.asarray(nib.load(item["image"]).dataobj, dtype=np.float32).ravel()[::stride]
        values.append(arr[arr > threshold])
    v = np.concatenate(values) if values else np.empty(0)
    if v.size == 0:
        raise DatasetError(f"body_stats: no voxel above {threshold} HU in {len(datalist)} image(s); is this CT?")
    return {"mean": float(v.mean()), "std": float(v.std()), "n_images": len(datalist)}


def ensure_alignment(
    path: str | os.PathLike,
    source_datalist: Sequence[Mapping[str, str]],
    target_datalist: Sequence[Mapping[str, str]],
    enabled: bool = True,
) -> str:
    """Write ``path`` (JSON: ``scale``, ``shift``, source and target body statistics) unless it exists with the same
    ``enabled`` setting.

    With ``enabled=False`` the identity (scale 1, shift 0) is written, so configs can switch alignment off.
    Returns the path.
    """
    p = Path(path)
    if p.is_file():
        try:
            if bool(json.loads(p.read_text()).get("enabled", True)) == bool(enabled):
                return str(p)
        except (OSError, ValueError):
            pass  # unreadable: recompute
    if not enabled:
        atomic_write_json(p, {"scale": 1.0, "shift": 0.0, "enabled": False})
        return str(p)
    src, tgt = body_stats(source_datalist), body_stats(target_datalist)
    scale = src["std"] / tgt["std"]
    atomic_write_json(
        p, {"scale": scale, "shift": src["mean"] - tgt["mean"] * scale, "enabled": True, "source": src, "target": tgt}
    )
    return str(p)


class IntensityAlignd(MapTransform):
    """``x' = scale · x + shift`` with the map of :func:`ensure_alignment` (target HU → source-like HU).

    Args:
        keys: image keys.
        params_file: the JSON written by :func:`ensure_alignment`; or give ``scale`` and ``shift``.
        scale: > 0. shift: in HU.
        allow_missing_keys: default False.

    Raises:
        ConfigError: neither a readable params file nor both values, or scale <= 0.
    """

    def __init__(
        self,
        keys: KeysCollection,
        params_file: str | os.PathLike | None = None,
        scale: float | None = None,
        shift: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if params_file is not None:
            try:
                params = json.loads(Path(params_file).read_text())
                scale, shift = float(params["scale"]), float(params["shift"])
            except (OSError, KeyError, ValueError, TypeError) as e:
                raise ConfigError(
                    f"intensity alignment file {params_file}: unreadable ({type(e).__name__}: {e}); delete it and rerun "
                    "the adaptation (train.json) to recompute it from the target images"
                ) from None
        if scale is None or shift is None:
            raise ConfigError("IntensityAlignd: give params_file or both scale and shift")
        if not scale > 0:
            raise ConfigError(f"IntensityAlignd: scale={scale}: expected > 0")
        self.scale, self.shift = float(scale), float(shift)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            d[key] = (
                x.float() * self.scale + self.shift
                if isinstance(x, torch.Tensor)
                else (np.asarray(x, dtype=np.float32) * np.float32(self.scale) + np.float32(self.shift))
            )
        return d
