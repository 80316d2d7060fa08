# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Shared component library of the TLK Model Zoo.

Subpackages are split by concern: ``data`` (dataset readers, demo generators, integrity checks),
``networks``, ``losses``, ``boxes``, ``adaptation``, ``engines`` (trainers, evaluators, handlers, inference),
``workflows`` (the kidney stages and the main job),
``zoo`` (bundle registry, verification, packaging, download) and ``utils`` (runtime, I/O, validation).
Subpackages are imported lazily so ``import tlk_components`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "adaptation", "boxes", "data", "engines", "losses", "networks", "utils", "workflows", "zoo"]


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
