# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The bundles' data modules, and the ``prepare_dataset`` step every bundle runs in ``initialize``.

A bundle's data module (demo writer and dataset checker) is registered in :data:`DATA_MODULES`. A data module is any
module with two functions::

    def write_demo(out_dir: str | Path, size: str = "demo", seed: int = 0) -> Path
        # size: "demo" (the bundle's default demo dataset) or "tiny" (for tests); deterministic per seed.
    def verify_dataset(dataset_dir: str | Path) -> DatasetReport
        # checks the whole dataset before any compute and lists every bad case.

The data modules themselves never import this module (they pass their own ``write_demo`` to
:func:`tlk_components.data.datasets.ensure_demo`), so the registry sits above them.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from tlk_components.data import datasets
from tlk_components.utils.errors import ConfigError, DatasetError

__all__ = ["DATA_MODULES", "get_data_module", "prepare_dataset", "write_demo_dataset"]

#: bundle name -> module providing ``write_demo`` and ``verify_dataset``.
DATA_MODULES: dict[str, str] = {
    "mnist_mlp_classification": "tlk_components.data.mnist",
    "kidney_ct_da_segmentation": "tlk_components.data.kidney",
    "brats_mri_box_localization": "tlk_components.data.brats",
    "cotraining_classification": "tlk_components.data.cotraining",
    "abdomen_ct_attention_segmentation": "tlk_components.data.btcv",
}


def get_data_module(bundle: str) -> ModuleType:
    """Import the data module registered for ``bundle``.

    Raises:
        ConfigError: the bundle has no registered data module (lists those that have one).
    """
    if bundle not in DATA_MODULES:
        raise ConfigError(f"no data module registered for bundle {bundle!r}; known: {sorted(DATA_MODULES)}")
    return importlib.import_module(DATA_MODULES[bundle])


def write_demo_dataset(bundle: str, out_dir: str | os.PathLike, size: str = "demo", seed: int = 0) -> Path:
    """Write ``bundle``'s demo into ``out_dir`` with its data module (see :func:`datasets.write_demo_dataset`)."""
    return datasets.write_demo_dataset(bundle, get_data_module(bundle).write_demo, out_dir, size=size, seed=seed)


def prepare_dataset(
    bundle: str, dataset_dir: str | os.PathLike, demo_dir: str | os.PathLike | None = None, size: str = "demo"
) -> str:
    """Make sure ``dataset_dir`` holds a valid dataset for ``bundle``; returns it as a string.

    When ``dataset_dir`` is the bundle's demo folder (``demo_dir``) and holds nothing yet, the demo dataset is
    written there first (deterministic, offline, with the demo marker); a non-empty folder is never written to.
    Then the dataset is verified and every bad case reported.

    Raises:
        DatasetError: the folder is missing (and is not the demo folder) or fails verification.
    """
    mod = get_data_module(bundle)
    d = Path(dataset_dir)
    datasets.ensure_demo(bundle, mod.write_demo, d, demo_dir, size=size)
    if not d.is_dir():
        raise DatasetError(
            f"dataset_dir {d} does not exist; point --dataset_dir at the dataset in its public layout, or run "
            f"`python -m tlk_components prepare-demo {bundle} {d}` to write the demo dataset there"
        )
    mod.verify_dataset(d).raise_if_bad()
    return str(d)
