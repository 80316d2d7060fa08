# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Where bundles live: a bundle is a folder ``<bundles>/<name>/`` with ``configs/metadata.json``.

Each bundle's data module (demo writer and dataset checker) is registered in
:data:`tlk_components.data.registry.DATA_MODULES`.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from tlk_components.utils.errors import ConfigError

__all__ = ["CHECKOUT_BUNDLES", "bundles_dir", "find_bundle", "infer_bundle_root", "list_bundles"]


#: The ``bundles/`` folder of the checkout this package was installed from (``pip install -e .``); the one place
#: the library knows the repository layout. Other installs point ``TLK_BUNDLES_DIR`` at a bundles folder or pass
#: bundle folders explicitly.
CHECKOUT_BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def bundles_dir() -> Path:
    """The folder holding the bundles: env ``TLK_BUNDLES_DIR``, else :data:`CHECKOUT_BUNDLES`."""
    env = os.environ.get("TLK_BUNDLES_DIR")
    return Path(env) if env else CHECKOUT_BUNDLES


def list_bundles(root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Map bundle name -> bundle folder for every ``<root>/*/configs/metadata.json``, sorted by name."""
    root = Path(root) if root is not None else bundles_dir()
    if not root.is_dir():
        return {}
    return {p.parent.parent.name: p.parent.parent for p in sorted(root.glob("*/configs/metadata.json"))}


def find_bundle(name_or_path: str | os.PathLike) -> Path:
    """Resolve a bundle name (``mnist_mlp_classification``) or a bundle folder path.

    Raises:
        ConfigError: unknown name, listing the known bundles.
    """
    p = Path(name_or_path)
    if (p / "configs" / "metadata.json").is_file():
        return p
    known = list_bundles()
    if str(name_or_path) in known:
        return known[str(name_or_path)]
    where = f" in {bundles_dir()}" if known else f"; no bundles found in {bundles_dir()} (set TLK_BUNDLES_DIR)"
    raise ConfigError(
        f"unknown bundle {str(name_or_path)!r}: expected one of {sorted(known)}{where} or a folder with "
        "configs/metadata.json"
    )


def _config_file_from_argv(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config_file="):
            return arg.split("=", 1)[1]
        if arg == "--config_file" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _config_root_from_stack() -> Path | None:
    """The folder of the config being parsed, when a MONAI ``ConfigWorkflow`` is on the call stack.

    ``monai.bundle.load``/``create_workflow`` build a ``ConfigWorkflow`` from ``<bundle>/configs/<x>.json`` without
    any command line; the workflow knows its ``config_root_path``.
    """
    import inspect

    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if owner is not None and type(owner).__name__.endswith("Workflow"):
                # instance dict, not getattr: a workflow's __getattr__ resolves unknown names as config properties
                root = getattr(owner, "__dict__", {}).get("config_root_path")
                if isinstance(root, Path):
                    return root
            frame = frame.f_back
    finally:
        del frame
    return None


def infer_bundle_root(default: str = ".") -> str:
    """Guess the bundle root from the config being run (``<root>/configs/x.json`` -> ``<root>``).

    Lets ``python -m monai.bundle run --config_file /any/where/bundle/configs/train.json`` and
    ``monai.bundle.load``/``create_workflow`` work from any working directory without ``bundle_root``, and keeps
    everything a bundle writes (demo data, outputs) inside the bundle instead of the caller's working directory.
    Sources, in order: a MONAI ``ConfigWorkflow`` on the call stack (its ``config_root_path``), then
    ``--config_file`` on the command line (lists ``"['a.json','b.json']"`` use their first file). Falls back to
    ``default`` when neither names a config (e.g. a bare ``ConfigParser``; pass ``bundle_root`` there).
    """
    from_stack = _config_root_from_stack()
    if from_stack is not None:
        cfg_dir = from_stack.resolve()
        return str(cfg_dir.parent if cfg_dir.name == "configs" else cfg_dir)
    value = _config_file_from_argv(sys.argv)
    if not value:
        return default
    value = value.strip()
    if value.startswith("["):
        try:
            value = json.loads(value.replace("'", '"'))[0]
        except (ValueError, IndexError):
            value = shlex.split(value.strip("[]").replace(",", " "))[0]
    cfg = Path(str(value).strip("'\"")).resolve()
    return str(cfg.parent.parent if cfg.parent.name == "configs" else cfg.parent)
