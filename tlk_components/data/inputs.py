# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Inference inputs of the CT bundles: the images of an input folder in any supported layout, and case names."""

from __future__ import annotations

import os
from pathlib import Path

from tlk_components.data.nifti_checks import check_volume_header
from tlk_components.utils.errors import DatasetError

__all__ = ["case_name", "input_datalist"]


def case_name(path: str | os.PathLike) -> str:
    """Case id of an image path: the file name without ``.nii(.gz)`` (``_0000`` dropped), or the parent folder
    for generic names such as KiTS19's ``case_00012/imaging.nii.gz``."""
    p = Path(str(path))
    stem = p.name.split(".nii")[0]
    if stem in ("imaging", "image", "ct", "img", "segmentation", "label"):
        return p.parent.name
    return stem.removesuffix("_0000")


def input_datalist(input_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Images to predict in ``input_dir``: KiTS19 ``case_*/imaging.nii[.gz]`` (also in ``data/``, as the KiTS19
    repository keeps them), ``imagesTs/`` (else ``imagesTr/``), or the ``*.nii[.gz]`` files of the folder itself.

    Every image's header is checked (no voxels are read): a 2-D image, a single slice, a 4-D series with more
    than one channel or an implausible voxel spacing (see :func:`~tlk_components.data.nifti_checks.check_volume_header`)
    is refused before any compute, all such files listed at once.

    Raises:
        DatasetError: the folder does not exist, holds no NIfTI image, or holds images a 3-D model cannot take.
    """
    base = Path(input_dir)
    if not base.is_dir():
        raise DatasetError(f"input_dir {base} does not exist; pass --input_dir with the CT volumes to segment")
    found = sorted(base.glob("case_*/imaging.nii*")) or sorted(base.glob("data/case_*/imaging.nii*"))  # KiTS19 clone
    for sub in ("imagesTs", "imagesTr"):
        if not found and (base / sub).is_dir():
            found = sorted(p for p in (base / sub).glob("*.nii*") if not p.name.startswith("."))
    if not found:
        found = sorted(p for p in base.glob("*.nii*") if not p.name.startswith("."))
    if not found:
        raise DatasetError(
            f"input_dir {base}: no .nii/.nii.gz image found (looked for case_*/imaging.nii.gz, "
            "imagesTs/, imagesTr/ and the folder itself)"
        )
    problems = [problem for p in found if (problem := check_volume_header(p)) is not None]
    if problems:
        raise DatasetError(
            f"input_dir {base}: {len(problems)} of {len(found)} image(s) cannot be segmented by the 3-D model; "
            "fix or remove them, then rerun",
            problems,
        )
    return [{"image": str(p)} for p in found]
