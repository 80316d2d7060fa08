# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Zoo operations: bundle registry, metadata validation, verify, package, download (datasets: ``tlk_components.data``).

``load``, ``list_bundles_info`` and the ``large_files`` functions are imported on first use (they pull in torch
and MONAI's config parser, which bundle configs importing this package for ``infer_bundle_root`` do not need).
"""

from __future__ import annotations

import importlib
from typing import Any

from tlk_components.zoo.registry import bundles_dir, find_bundle, infer_bundle_root, list_bundles

#: name -> module, for the exports imported on first use.
_LAZY = {
    "load": "tlk_components.zoo.api",
    "list_bundles_info": "tlk_components.zoo.api",
    "default_bundle_dir": "tlk_components.zoo.api",
    "BundleLoadError": "tlk_components.zoo.api",
    "LargeFile": "tlk_components.zoo.large_files",
    "read_large_files": "tlk_components.zoo.large_files",
    "fetch_large_files": "tlk_components.zoo.large_files",
    "check_large_files": "tlk_components.zoo.large_files",
}

__all__ = [
    "BundleLoadError",
    "LargeFile",
    "bundles_dir",
    "check_large_files",
    "default_bundle_dir",
    "fetch_large_files",
    "find_bundle",
    "infer_bundle_root",
    "list_bundles",
    "list_bundles_info",
    "load",
    "read_large_files",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
