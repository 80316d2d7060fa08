# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Argument checks for ``__init__`` methods: fail when a config is parsed, not at iteration 1,000."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from tlk_components.utils.errors import ConfigError

__all__ = ["check_in_range", "check_positive_int", "check_probability", "look_up_option", "parse_flag"]


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as int if it is an integer ``>= minimum``.

    Raises:
        ConfigError: naming ``name``, the value received and the expected range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ConfigError(f"{name}={value!r}: expected an integer >= {minimum}; set e.g. --{name} {max(minimum, 1)}")
    if value < minimum:
        raise ConfigError(f"{name}={value!r}: expected an integer >= {minimum}; set e.g. --{name} {max(minimum, 1)}")
    return int(value)


def check_in_range(
    name: str, value: Any, low: float | None = None, high: float | None = None, *, low_inclusive: bool = True
) -> float:
    """Return ``value`` as float if ``low <= value <= high`` (``low < value`` when ``low_inclusive`` is False).

    Raises:
        ConfigError: naming ``name``, the value and the range.
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}: expected a number") from None
    bad = v != v  # NaN
    if low is not None:
        bad |= v < low if low_inclusive else v <= low
    if high is not None:
        bad |= v > high
    if bad:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        bracket = "[" if low_inclusive else "("
        raise ConfigError(f"{name}={value!r}: expected a number in {bracket}{lo}, {hi}]")
    return v


def check_probability(name: str, value: Any) -> float:
    """Return ``value`` if it lies in [0, 1]; raise :class:`ConfigError` otherwise."""
    return check_in_range(name, value, 0.0, 1.0)


def look_up_option(name: str, value: Any, options: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``options``; otherwise raise with the closest valid spelling.

    Example:
        >>> look_up_option("norm", "batch", ["batch", "instance"])
        'batch'
    """
    opts = list(options)
    if value in opts:
        return value
    close = difflib.get_close_matches(str(value), [str(o) for o in opts], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{name}={value!r} is not supported; expected one of {opts}.{hint}")


def parse_flag(name: str, value: bool | str | int) -> bool:
    """A boolean from a config or command-line value (``--saliency true`` arrives as the string ``"true"``).

    Raises:
        ConfigError: anything but true/false/1/0/yes/no/on/off (any case).
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none", ""):
        return False
    raise ConfigError(f"{name}={value!r}: expected true or false (e.g. --{name} true)")
