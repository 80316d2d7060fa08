# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Runtime, I/O, error and argument-validation helpers shared by every bundle."""

from tlk_components.utils.errors import ConfigError, DatasetError, TLKError
from tlk_components.utils.io import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_weights,
)
from tlk_components.utils.runtime import configure_threads, resolve_device
from tlk_components.utils.validation import (
    check_in_range,
    check_positive_int,
    check_probability,
    look_up_option,
    parse_flag,
)

__all__ = [
    "ConfigError",
    "DatasetError",
    "TLKError",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_in_range",
    "check_positive_int",
    "check_probability",
    "configure_threads",
    "load_weights",
    "look_up_option",
    "parse_flag",
    "resolve_device",
]
