# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Helpers for bundle tests: run a bundle through the real ``python -m monai.bundle run`` entry point."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from tlk_components.zoo.runner import bundle_command

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"


def run_bundle(
    bundle: str,
    configs: str | list[str],
    cwd: str | os.PathLike | None = None,
    timeout: float = 600,
    check: bool = True,
    **overrides: Any,
) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle run --config_file ... --key value ...`` for ``bundles/<bundle>``.

    Args:
        bundle: bundle folder name.
        configs: config file name(s) inside ``configs/`` (``"train.json"`` or ``["train.json", "evaluate.json"]``).
        cwd: working directory (default: a folder outside the bundle, to prove it runs from anywhere).
        check: raise with the full output when the run fails.
        overrides: ``--key value`` pairs; ``a__b`` in a name becomes ``a#b``.

    Returns:
        The completed process (stdout and stderr merged in ``.stdout``).
    """
    names = [configs] if isinstance(configs, str) else list(configs)
    cmd = bundle_command([BUNDLES / bundle / "configs" / c for c in names], overrides)
    env = dict(os.environ, TLK_NUM_THREADS=os.environ.get("TLK_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=str(cwd or REPO / "tests"), env=env, capture_output=True, text=True, timeout=timeout)
    proc.stdout = (proc.stdout or "") + (proc.stderr or "")
    if check and proc.returncode != 0:
        raise AssertionError(f"bundle run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-6000:]}")
    return proc
