# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Where bundles live: a bundle is a folder ``<bundles>/<name>/`` with ``configs/metadata.json``.

The bundles folder is explicit: ``TLK_BUNDLES_DIR`` when set, else the ``bundles/`` folder of the checkout pip
installed this package from (:func:`install_source`, read from the install's own PEP 610 record, so
``pip install -e .`` in a clone finds that clone's bundles). Any function taking a bundle also takes its folder.

Each bundle's data module (demo writer and dataset checker) is registered in
:data:`tlk_components.data.registry.DATA_MODULES`.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from importlib.metadata import Distribution, distributions
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from tlk_components.utils.errors import ConfigError

__all__ = [
    "bundles_dir",
    "find_bundle",
    "infer_bundle_root",
    "install_source",
    "list_bundles",
    "no_bundles_hint",
    "source_bundles",
]

#: Environment variable naming a bundles folder; it takes precedence over :func:`source_bundles`.
BUNDLES_ENV = "TLK_BUNDLES_DIR"


@functools.cache
def install_source() -> Path | None:
    """The source folder this copy of ``tlk_components`` was installed from, as pip recorded it.

    pip writes ``direct_url.json`` (PEP 610) into the installed distribution's metadata for ``pip install -e
    <folder>`` and ``pip install <folder>``; its ``file://`` URL is the checkout. Nothing else is assumed about where
    the package sits on disk.

    Returns:
        The source folder, or ``None`` when the package was installed from an index or an archive, is not
        installed (imported through ``PYTHONPATH``), or the imported copy is not the one pip installed (another
        checkout on ``PYTHONPATH``: its bundles would not match its code).
    """
    import tlk_components  # noqa: PLC0415 - the package being asked about, already imported

    imported = Path(tlk_components.__file__).resolve().parent
    # every metadata folder of that name on sys.path: a build's egg-info in the checkout (found first when the
    # working directory is the checkout) has no PEP 610 record, the install's dist-info has
    for dist in distributions(name="tlk_components"):
        source = _recorded_source(dist, imported)
        if source is not None:
            return source
    return None


def _recorded_source(dist: Distribution, imported: Path) -> Path | None:
    """The ``file://`` source folder of ``dist``'s PEP 610 record when that install is the ``imported`` package."""
    try:
        info = json.loads(dist.read_text("direct_url.json") or "null")
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None
    parsed = urlparse(str(info.get("url", "")))
    if parsed.scheme != "file":
        return None
    source = Path(url2pathname(parsed.path))
    editable = bool((info.get("dir_info") or {}).get("editable", False))
    installed = source / "tlk_components" if editable else Path(str(dist.locate_file("tlk_components")))
    try:
        return source if installed.resolve() == imported else None
    except OSError:
        return None


def source_bundles() -> Path | None:
    """The ``bundles/`` folder of :func:`install_source` (the checkout's own bundles), or ``None`` without one."""
    source = install_source()
    if source is None or not (source / "bundles").is_dir():
        return None
    return source / "bundles"


def bundles_dir() -> Path | None:
    """The folder holding the bundles: env ``TLK_BUNDLES_DIR`` if set, else :func:`source_bundles` (may be None)."""
    env = os.environ.get(BUNDLES_ENV)
    return Path(env) if env else source_bundles()


def no_bundles_hint(root: str | os.PathLike | None = None) -> str:
    """Why no bundle was found and how to point at them (for error messages)."""
    root = Path(root) if root is not None else bundles_dir()
    if root is None:
        return (
            "no bundles folder is known: tlk_components was not installed from a checkout (pip install -e "
            f"<checkout>), so set {BUNDLES_ENV}=<folder holding <name>/configs/metadata.json> or pass a bundle folder"
        )
    return f"no bundles found in {root} (expected <name>/configs/metadata.json there; {BUNDLES_ENV} overrides it)"


def list_bundles(root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Map bundle name -> bundle folder for every ``<root>/*/configs/metadata.json``, sorted by name.

    ``root`` defaults to :func:`bundles_dir`; no known folder (or a missing one) gives ``{}``.
    """
    root = Path(root) if root is not None else bundles_dir()
    if root is None or not root.is_dir():
        return {}
    return {p.parent.parent.name: p.parent.parent for p in sorted(root.glob("*/configs/metadata.json"))}


def find_bundle(name_or_path: str | os.PathLike) -> Path:
    """Resolve a bundle name (``mnist_mlp_classification``) or a bundle folder path.

    Raises:
        ConfigError: unknown name, listing the known bundles; or no bundles folder is known (the package was not
            installed from a checkout and ``TLK_BUNDLES_DIR`` is unset), saying how to point at one.
    """
    p = Path(name_or_path)
    if (p / "configs" / "metadata.json").is_file():
        return p
    known = list_bundles()
    if str(name_or_path) in known:
        return known[str(name_or_path)]
    where = f" in {bundles_dir()}" if known else f"; {no_bundles_hint()}"
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
