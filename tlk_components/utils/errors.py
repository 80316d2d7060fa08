# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Typed errors. Every message names the file or key, what was expected, and how to fix it."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ConfigError", "DatasetError", "TLKError"]


class TLKError(Exception):
    """Base class of the zoo's own errors (caught by the CLI and printed without a traceback)."""


class ConfigError(TLKError, ValueError):
    """A hyperparameter or config key has a value that cannot work.

    Example:
        >>> raise ConfigError("epochs=-1: expected an integer >= 1; pass --epochs 10")
    """


class DatasetError(TLKError, ValueError):
    """A dataset (file or folder) is missing, unreadable or not in the expected layout.

    Args:
        message: one-line summary.
        problems: every bad case, one line each (``"case_00003: label missing (expected ...)"``).
    """

    def __init__(self, message: str, problems: Iterable[str] = ()) -> None:
        self.problems = list(problems)
        text = message
        if self.problems:
            text += "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text)
