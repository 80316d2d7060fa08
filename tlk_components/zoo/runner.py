# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Build the ``python -m monai.bundle run`` command line for a bundle's configs and overrides.

Used by the main job (``kidney-demo``), the benchmarks and the bundle tests, so that every one of them runs the
bundles through MONAI's real entry point with the same quoting rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["bundle_command", "format_override", "run_bundle"]


def format_override(value: Any) -> str:
    """One override value as python-fire parses it back: ``True``/``False``, JSON for lists and dicts, else ``str``."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def bundle_command(config_files: Sequence[str | os.PathLike], overrides: Mapping[str, Any] | None = None) -> list[str]:
    """``[python, -m, monai.bundle, run, --config_file, ..., --key, value, ...]``.

    Args:
        config_files: one or more config paths; several are merged left to right by MONAI.
        overrides: ``key -> value``; ``a__b`` in a key becomes the nested id ``a#b``.

    Raises:
        ValueError: no config file given.
    """
    files = [str(f) for f in config_files]
    if not files:
        raise ValueError("bundle_command needs at least one config file")
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        files[0] if len(files) == 1 else json.dumps(files),
    ]
    for key, value in (overrides or {}).items():
        cmd += [f"--{key.replace('__', '#')}", format_override(value)]
    return cmd


def run_bundle(
    config_files: Sequence[str | os.PathLike],
    log: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    cwd: str | os.PathLike | None = None,
) -> float:
    """Run ``python -m monai.bundle run`` in a subprocess, its output into ``log``; return the wall time in seconds.

    Args:
        config_files, overrides: see :func:`bundle_command`.
        log: file that receives stdout and stderr (its folder is created).
        cwd: working folder of the run; default the log's folder (a bundle runs from any folder).

    Raises:
        RuntimeError: the run exited non-zero; the message holds the command and the last 4000 characters of the log.
    """
    log = os.fspath(log)
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    cmd = bundle_command(config_files, overrides)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(
            cmd,
            cwd=os.fspath(cwd) if cwd is not None else os.path.dirname(os.path.abspath(log)),
            stdout=f,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"bundle run failed (exit {proc.returncode}): {' '.join(cmd)}\nlog {log}:\n{tail}")
    return elapsed
