# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Zoo operations: bundle registry, dataset preparation, metadata validation (and verify/package/download)."""

from tlk_components.zoo.datasets import DatasetReport, prepare_dataset
from tlk_components.zoo.registry import bundles_dir, find_bundle, get_data_module, infer_bundle_root, list_bundles

__all__ = [
    "DatasetReport",
    "bundles_dir",
    "find_bundle",
    "get_data_module",
    "infer_bundle_root",
    "list_bundles",
    "prepare_dataset",
]
