# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Label-free intensity alignment of a target CT domain to the source (a simple input-space adapter).

TLK normalised BOTH domains with the source foreground statistics (clip + z-score). When the target scanner or
reconstruction maps tissue to other values (the demo's ``x 1.2 + 40 HU``), every target organ then sits at
another normalised value than the model learnt. Here the first two moments of the BODY voxels (``HU > -500``;
no label involved) are matched: ``x' = (x - μ_t) · σ_s / σ_t + μ_s``, applied to target images before the usual
normalisation. The statistics come from target IMAGES only and are stored next to the adapted model
(``intensity_alignment.json``) so inference applies the same map. Contrast-phase differences between organs
(what a linear map cannot undo) are left to the feature/output-space adapters.

:class:`QuantileMatchd` (with :func:`ensure_quantile_map`) is the zero-training baseline of the kidney benchmark:
quantile histogram matching of the target's body voxels to the source's (Nyul & Udupa, 1999, with 101 landmarks):
a piecewise-linear map through the matched percentiles, applied to body voxels only.

The map belongs to the weights adapted with it: :class:`AlignedWeightsRecorder` (the last handler of the
adaptation run) records the sha256 of the saved ``model.pt`` in the alignment file, and
:func:`inference_alignment` applies the map only to weights recorded there, so source-only or oracle weights
are not fed aligned images.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.transforms import Identityd, MapTransform

from tlk_components.data.transforms import BODY_HU
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import atomic_write_json, sha256_file
from tlk_components.utils.validation import check_positive_int

__all__ = [
    "AlignedWeightsRecorder",
    "IntensityAlignd",
    "QuantileMatchd",
    "body_stats",
    "body_values",
    "ensure_alignment",
    "ensure_quantile_map",
    "inference_alignment",
]

logger = logging.getLogger(__name__)


def body_values(datalist: Sequence[Mapping[str, str]], threshold: float = BODY_HU, stride: int = 7) -> np.ndarray:
    """Every ``stride``-th voxel (in file order) above ``threshold`` HU of the images of ``datalist``, as one array
    (labels are not read).

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
        raise DatasetError(f"no voxel above {threshold} HU in {len(datalist)} image(s); is this CT?")
    return v


def body_stats(datalist: Sequence[Mapping[str, str]], threshold: float = BODY_HU, stride: int = 7) -> dict[str, float]:
    """Mean and std of the body voxels of :func:`body_values`. Raises DatasetError as it does."""
    v = body_values(datalist, threshold, stride)
    return {"mean": float(v.mean()), "std": float(v.std()), "n_images": len(datalist)}


def ensure_alignment(
    path: str | os.PathLike,
    source_datalist: Sequence[Mapping[str, str]],
    target_datalist: Sequence[Mapping[str, str]],
    enabled: bool | None = True,
) -> str:
    """Write ``path`` (JSON: ``scale``, ``shift``, source and target body statistics) unless it exists with the same
    ``enabled`` setting.

    With ``enabled=False`` the identity (scale 1, shift 0) is written, so configs can switch alignment off. With
    ``enabled=None`` an existing file is kept whatever it holds (stages that only read the map, or do not use it,
    leave the one the last adaptation wrote) and the identity is written when there is none.
    Returns the path.
    """
    p = Path(path)
    if enabled is None:
        if p.is_file():
            return str(p)
        enabled = False
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


def ensure_quantile_map(
    path: str | os.PathLike,
    source_datalist: Sequence[Mapping[str, str]],
    target_datalist: Sequence[Mapping[str, str]],
    n_quantiles: int = 101,
) -> str:
    """Write ``path`` (JSON ``source``/``target``: the body-voxel percentiles 0..100 of each domain's images) unless it
    exists; labels are not read. Returns the path.

    Raises:
        DatasetError: a domain without body voxels.
    """
    p = Path(path)
    if p.is_file():
        return str(p)
    q = np.linspace(0.0, 100.0, check_positive_int("n_quantiles", n_quantiles, minimum=2))
    src, tgt = (np.percentile(body_values(d), q).tolist() for d in (source_datalist, target_datalist))
    atomic_write_json(p, {"percentiles": q.tolist(), "source": src, "target": tgt})
    return str(p)


class QuantileMatchd(MapTransform):
    """Quantile histogram matching of body voxels (``> -500`` HU): ``x' = interp(x, target_q, source_q)``.

    Args:
        keys: image keys (HU).
        params_file: the JSON written by :func:`ensure_quantile_map` (read now if it exists, else at first use).
        allow_missing_keys: default False.

    Raises:
        ConfigError: unreadable params file, or percentiles that do not increase.
    """

    def __init__(self, keys: KeysCollection, params_file: str | os.PathLike, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.params_file = Path(params_file)
        self._map: tuple[np.ndarray, np.ndarray] | None = None
        if self.params_file.is_file():  # else read at first use (a config may build it before the file is written)
            self._load()

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            params = json.loads(self.params_file.read_text())
            src = np.asarray(params["source"], dtype=np.float64)
            tgt = np.asarray(params["target"], dtype=np.float64)
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise ConfigError(
                f"quantile map {self.params_file}: unreadable ({type(e).__name__}: {e}); delete it and rerun "
                "evaluate.json with --histmatch_models to recompute it from the images"
            ) from None
        if src.shape != tgt.shape or src.ndim != 1 or src.size < 2 or (np.diff(tgt) < 0).any():
            raise ConfigError(f"quantile map {self.params_file}: expected two increasing lists of the same length")
        keep = np.concatenate([[True], np.diff(tgt) > 0])  # a flat part of the histogram: keep one landmark
        self._map = (tgt[keep], src[keep])
        return self._map

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            tgt, src = self._map or self._load()
            y = torch.as_tensor(d[key]).float().clone()  # a MetaTensor keeps its metadata
            body = y > BODY_HU
            y[body] = torch.from_numpy(np.interp(y[body].cpu().numpy(), tgt, src).astype(np.float32))
            d[key] = y
        return d


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


def _read_params(path: Path) -> dict[str, Any]:
    try:
        params = json.loads(path.read_text())
        if not isinstance(params, dict):
            raise ValueError("not a JSON object")
        return params
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"intensity alignment file {path}: unreadable ({type(e).__name__}: {e}); delete it and rerun the "
            "adaptation (train.json) to recompute it from the target images"
        ) from None


class AlignedWeightsRecorder:
    """Record in the alignment file that the weights saved at the end of training were adapted with its map.

    Attach as the LAST item of ``train#handlers`` (after the handler that writes ``weights``): at ``COMPLETED`` the
    sha256 of ``weights`` is added to the file's ``aligned_weights`` (sha256 -> file name). Rank 0 only under DDP.
    :func:`inference_alignment` then applies the map to exactly these weights. Recomputing the map
    (:func:`ensure_alignment` with another ``enabled``) drops the records, as the new map belongs to no weights.

    Args:
        params_file: the alignment JSON of :func:`ensure_alignment`.
        weights: the saved weights (``model.pt``).
        enabled: False records nothing (``align_intensity`` false: the model never saw aligned images).
    """

    def __init__(self, params_file: str | os.PathLike, weights: str | os.PathLike, enabled: bool = True) -> None:
        self.params_file, self.weights, self.enabled = Path(params_file), Path(weights), bool(enabled)

    def attach(self, engine: Engine) -> None:
        """Register at ``COMPLETED``."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, _engine: Engine | None = None) -> None:
        if not self.enabled or (
            torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank()
        ):
            return
        if not self.weights.is_file() or not self.params_file.is_file():
            logger.warning(f"intensity alignment not recorded: {self.weights} or {self.params_file} does not exist")
            return
        params = _read_params(self.params_file)
        if not params.get("enabled", True):
            return
        records = dict(params.get("aligned_weights") or {})
        records[sha256_file(self.weights)] = self.weights.name
        params["aligned_weights"] = records
        atomic_write_json(self.params_file, params)
        logger.info(f"intensity alignment {self.params_file} recorded for {self.weights}")


def inference_alignment(
    keys: KeysCollection, params_file: str | os.PathLike, weights: str | os.PathLike, apply: bool | str = "auto"
) -> MapTransform:
    """The intensity transform for inference with ``weights``: the alignment map, or the identity; logs which.

    Args:
        keys: image keys.
        params_file: the alignment JSON (may not exist).
        weights: the weights inference loads.
        apply: ``"auto"`` (default): apply the map only if ``params_file`` records ``weights`` (see
            :class:`AlignedWeightsRecorder`: the adapted model, not source-only or oracle weights); ``True``: always
            (the file must exist); ``False``: never.

    Raises:
        ConfigError: ``apply`` is not auto/true/false, or ``True`` without a readable file.
    """
    mode = str(apply).strip().lower()
    if mode not in ("auto", "true", "false"):
        raise ConfigError(f"align_intensity={apply!r}: expected 'auto', true or false")
    p = Path(params_file)
    if mode == "false":
        logger.info(f"intensity alignment: not applied (align_intensity false) for {weights}")
        return Identityd(keys)
    if mode == "true":
        if not p.is_file():
            raise ConfigError(
                f"align_intensity true but {p} does not exist; pass --alignment_file of the adaptation run, or "
                "--align_intensity auto"
            )
        logger.info(f"intensity alignment: applying {p} (align_intensity true) for {weights}")
        return IntensityAlignd(keys, params_file=p)
    if not p.is_file():
        logger.info(f"intensity alignment: not applied ({p} does not exist) for {weights}")
        return Identityd(keys)
    records = _read_params(p).get("aligned_weights") or {}
    if Path(weights).is_file() and sha256_file(weights) in records:
        logger.info(f"intensity alignment: applying {p} (the map {weights} was adapted with)")
        return IntensityAlignd(keys, params_file=p)
    logger.info(
        f"intensity alignment: not applied; {weights} is not the model adapted with {p} (source-only, oracle or "
        "other weights); pass --align_intensity true to apply it anyway"
    )
    return Identityd(keys)
