# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Small helpers of ``abdomen_ct_attention_segmentation`` that its data module (``btcv.py``) does not have.

CT intensity scaling (windowing or min-max) and the class count and organ names of a multi-organ dataset.
Inference input lists, sliding-window inference and NIfTI writing with the input's affine and header (the source
lecture's ``nib.Nifti1Image(pred, img.affine, img.header)``) are shared with ``kidney_ct_da_segmentation`` in
:mod:`tlk_components.engines.inference.segmentation`; the ``--saliency true`` flag parser is
:func:`tlk_components.utils.parse_flag`.

Two intensity options for ``abdomen_ct_attention_segmentation`` (``intensity_mode`` in the configs):

* ``"window"``: a CT window in Hounsfield units, clipped and mapped linearly to ``[b_min, b_max]``:
  ``y = b_min + (clip(x, a_min, a_max) - a_min) / (a_max - a_min) * (b_max - b_min)``; default window
  [-175, 250] HU (abdominal soft tissue, as in MONAI's BTCV tutorial). Images whose values do not look like HU
  (no air-like voxels below -500, or a span under 100) trigger a warning naming the file, since such a window
  would map them to a near-constant image.
* ``"minmax"``: the source lecture's per-volume scaling ``(x - min) / (max - min)`` (the lecture then multiplies by
  255; here the output range is ``[b_min, b_max]``, default [0, 1]). Works for any modality.

Both reuse MONAI's :class:`~monai.transforms.ScaleIntensityRange` / :class:`~monai.transforms.ScaleIntensity`.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import warnings
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, ScaleIntensity, ScaleIntensityRange

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_positive_int, look_up_option

__all__ = [
    "CTIntensityd",
    "NonCTRangeWarning",
    "demo_cache_dir",
    "inference_datalist",
    "organ_names",
    "resolve_num_classes",
]

logger = logging.getLogger(__name__)

#: HU below which a CT volume always has voxels (air around the body is about -1000 HU).
AIR_HU_THRESHOLD = -500.0
#: the smallest intensity span (max - min) a CT volume in HU can have.
MIN_CT_SPAN = 100.0


class NonCTRangeWarning(UserWarning):
    """An image's intensities do not look like CT Hounsfield units while CT windowing is on."""


def _source_name(img: Any) -> str:
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj", "image")
    return os.path.basename(str(name[0] if isinstance(name, list | tuple) and name else name))


class CTIntensityd(MapTransform):
    """CT windowing or min-max scaling of the image intensities (dictionary transform).

    Args:
        keys: image keys.
        mode: ``"window"`` (default) or ``"minmax"``; see the module docstring.
        a_min: lower window edge in HU (window mode); default -175.
        a_max: upper window edge in HU, > ``a_min``; default 250.
        b_min: output value of ``a_min`` (or of the volume minimum); default 0.
        b_max: output value of ``a_max`` (or of the volume maximum), > ``b_min``; default 1.
        clip: clip to ``[b_min, b_max]`` in window mode; default True.
        warn_non_ct: warn when a windowed image does not look like HU; default True.
        allow_missing_keys: as in MONAI.

    Shape:
        any; intensities only.

    Raises:
        ConfigError: unknown mode, or an empty window/output range.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "window",
        a_min: float = -175.0,
        a_max: float = 250.0,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = True,
        warn_non_ct: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = look_up_option("intensity_mode", mode, ("window", "minmax"))
        if not float(a_max) > float(a_min):
            raise ConfigError(f"CT window [{a_min}, {a_max}]: expected a_min < a_max (e.g. -175, 250 HU)")
        if not float(b_max) > float(b_min):
            raise ConfigError(f"intensity output range [{b_min}, {b_max}]: expected b_min < b_max (e.g. 0, 1)")
        self.a_min, self.a_max = float(a_min), float(a_max)
        self.warn_non_ct = bool(warn_non_ct)
        if self.mode == "window":
            self.scaler = ScaleIntensityRange(a_min, a_max, b_min, b_max, clip=clip)
        else:
            self.scaler = ScaleIntensity(minv=b_min, maxv=b_max)

    def _check_range(self, img: Any) -> None:
        t = torch.as_tensor(img)
        lo, hi = float(t.min()), float(t.max())
        if lo > AIR_HU_THRESHOLD or hi - lo < MIN_CT_SPAN:
            msg = (
                f"{_source_name(img)}: intensities span [{lo:.4g}, {hi:.4g}], which does not look like CT in "
                f"Hounsfield units (air is about -1000 HU); the CT window [{self.a_min:g}, {self.a_max:g}] HU would "
                "map it to a near-constant image. For MR or already normalised images pass "
                "--intensity_mode minmax."
            )
            warnings.warn(msg, NonCTRangeWarning, stacklevel=2)
            logger.warning(msg)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.mode == "window" and self.warn_non_ct:
                self._check_range(d[key])
            d[key] = self.scaler(d[key])
        return d


def resolve_num_classes(dataset_dir: str | os.PathLike, num_classes: int | str = "auto") -> int:
    """The number of output classes (background included): read from the data, or checked against it.

    Args:
        dataset_dir: the dataset (its ``dataset.json`` ``labels``; BTCV's 14 classes without one).
        num_classes: ``"auto"`` / 0 (use the data's count) or an integer >= 2.

    Returns:
        The class count to build the network with.

    Raises:
        ConfigError: the data has more label values than ``num_classes`` (names both and the fix).
    """
    from tlk_components.data.btcv import label_names  # the bundle's data module

    names = label_names(dataset_dir)
    n_data = max(names) + 1
    if num_classes in ("auto", 0, None):
        return n_data
    n = check_positive_int("num_classes", num_classes, minimum=2)
    if n_data > n:
        raise ConfigError(
            f"num_classes={n}, but the data in {dataset_dir} has {n_data} label values "
            f"(0..{n_data - 1}: {', '.join(names[k] for k in sorted(names))}); set --num_classes {n_data} "
            "(or 'auto' to read it from the data), or merge labels before training"
        )
    if n_data < n:
        logger.warning(
            f"num_classes={n} but the data has only {n_data} label values; classes {n_data}..{n - 1} "
            "will never be trained"
        )
    return n


def organ_names(dataset_dir: str | os.PathLike, num_classes: int | None = None) -> list[str]:
    """Organ names of classes ``1 .. C-1`` as metric-friendly identifiers (``"right kidney"`` -> ``right_kidney``).

    Args:
        dataset_dir: the dataset (label names from its ``dataset.json``; BTCV's without one).
        num_classes: ``C``; classes without a name in the data are called ``class_<i>``. Default: the data's count.

    Returns:
        ``C - 1`` names.
    """
    from tlk_components.data.btcv import label_names

    names = label_names(dataset_dir)
    n = (max(names) + 1) if num_classes is None else int(num_classes)
    out: list[str] = []
    for i in range(1, n):
        raw = names.get(i, f"class_{i}")
        out.append(re.sub(r"[^0-9a-zA-Z]+", "_", raw).strip("_").lower() or f"class_{i}")
    return out


BUNDLE = "abdomen_ct_attention_segmentation"


def demo_cache_dir(bundle: str = BUNDLE) -> Path:
    """Where the demo goes when the bundle folder is read-only: ``$TLK_HOME/demo_data/<bundle>``, else
    ``~/.cache/tlk_components/demo_data/<bundle>``."""
    home = os.environ.get("TLK_HOME")
    root = Path(home).expanduser() if home else Path.home() / ".cache" / "tlk_components"
    return root / "demo_data" / bundle


def _can_write(folder: Path) -> bool:
    """True when ``folder`` (or its nearest existing parent) accepts a new file."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".tlk_write_test"):
            return True
    except OSError:
        return False


def inference_datalist(
    input_dir: str | os.PathLike, dataset_dir: str | os.PathLike, demo_dir: str | os.PathLike
) -> list[dict[str, str]]:
    """The images inference segments; the demo is written only when the inputs default to it.

    Inference never prepares (writes or verifies) a training dataset. When ``input_dir`` is the default
    ``<demo_dir>/imagesTs`` (no ``--input_dir`` and no ``--dataset_dir`` given), the demo is written first (only if
    missing) into ``demo_dir``, or into :func:`demo_cache_dir` when the bundle folder is read-only. A default
    ``input_dir`` under a given ``--dataset_dir`` also finds the test images of the Synapse layout
    (``RawData/Testing/img``). Any other ``input_dir`` is read as given and nothing is written.

    Args:
        input_dir: folder of CT volumes (see :func:`tlk_components.data.inputs.input_datalist`).
        dataset_dir: the config's dataset folder (``input_dir`` defaults to its ``imagesTs``).
        demo_dir: the bundle's demo folder (``<bundle_root>/demo_data``).

    Returns:
        ``[{"image": path}, ...]``.

    Raises:
        DatasetError: ``input_dir`` missing or without images (see ``input_datalist``), or the demo cannot be written.
    """
    from tlk_components.data.btcv import detect_layout
    from tlk_components.data.inputs import input_datalist
    from tlk_components.utils.errors import DatasetError

    inp, data, demo = Path(input_dir), Path(dataset_dir), Path(demo_dir)
    default_input = inp.resolve() == (data / "imagesTs").resolve()
    if default_input and data.resolve() == demo.resolve():
        target = demo if _can_write(demo) else demo_cache_dir()
        if not (target / "imagesTs").is_dir() or not any((target / "imagesTs").glob("*.nii*")):
            from tlk_components.data.btcv import write_demo
            from tlk_components.data.datasets import write_demo_dataset

            if target != demo:
                logger.warning(f"bundle folder {demo.parent} is read-only: writing the demo data into {target}")
            write_demo_dataset(BUNDLE, write_demo, target)
        inp = target / "imagesTs"
    elif default_input and not inp.is_dir() and data.is_dir():
        try:
            tests = detect_layout(data).tests
        except DatasetError:
            tests = None
        if tests is not None:
            inp = tests
    return input_datalist(inp)
