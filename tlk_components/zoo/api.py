# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Python API next to the command line, MONAI style: ``tlk_components.zoo.load`` and ``list_bundles_info``.

::

    import tlk_components.zoo as zoo

    zoo.list_bundles_info("https://zoo.example.org/models/model_info.json")   # what an index offers
    net = zoo.load("mnist_mlp_classification", index="https://zoo.example.org/models/model_info.json")
    net(x)                                                                     # trained, eval mode, on CPU

Unlike ``monai.bundle.load`` (reference model_zoo.md §3.2), :func:`load` builds only the ``network_def`` of the
bundle's config: nothing of ``initialize`` runs, no demo data is written and no training starts, and the weights are
read with ``torch.load(weights_only=True)``. Bundles are cached under :func:`default_bundle_dir` (``$TLK_HOME``,
else ``~/.cache/tlk_components``), never in the current working directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tlk_components.data.registry import DATA_MODULES
from tlk_components.utils.errors import TLKError
from tlk_components.zoo.download import (
    DEFAULT_TIMEOUT,
    format_index_info,
    index_info,
    install_bundle,
    installed_versions,
    requirement_problems,
)
from tlk_components.zoo.package import weight_files
from tlk_components.zoo.registry import list_bundles, no_bundles_hint

__all__ = [
    "BundleLoadError",
    "default_bundle_dir",
    "format_bundles_info",
    "list_bundles_info",
    "load",
]

#: ``workflow_type`` -> config file (MONAI's spellings accepted).
WORKFLOW_CONFIGS: dict[str, str] = {
    "inference": "inference.json",
    "infer": "inference.json",
    "train": "train.json",
    "training": "train.json",
}


class BundleLoadError(TLKError):
    """A bundle's network cannot be loaded (not found, untrained, config or weights do not fit)."""


def default_bundle_dir() -> Path:
    """Where :func:`load` keeps downloaded bundles: ``$TLK_HOME/bundles``, else ``~/.cache/tlk_components/bundles``.

    Raises:
        BundleLoadError: ``TLK_HOME`` is a relative path (it would depend on the working directory).
    """
    home = os.environ.get("TLK_HOME")
    if home:
        p = Path(home).expanduser()
        if not p.is_absolute():
            raise BundleLoadError(f"TLK_HOME={home!r} is a relative path; set it to an absolute folder")
        return p / "bundles"
    return Path.home() / ".cache" / "tlk_components" / "bundles"


def _local_version(path: Path) -> str | None:
    try:
        return str(json.loads((path / "configs" / "metadata.json").read_text(encoding="utf-8")).get("version"))
    except (OSError, ValueError, AttributeError):
        return None


def _config_file(path: Path, workflow_type: str) -> Path:
    name = WORKFLOW_CONFIGS.get(workflow_type, f"{workflow_type}.json")
    cfg = path / "configs" / name
    if not cfg.is_file():
        have = sorted(p.stem for p in (path / "configs").glob("*.json") if p.name != "metadata.json")
        raise BundleLoadError(
            f"{path.name}: no configs/{name} for workflow_type={workflow_type!r}; use one of {sorted(WORKFLOW_CONFIGS)} "
            f"or a config name of this bundle ({have})"
        )
    return cfg


def _require_net_id(cfg: Path, net_id: str) -> None:
    """Raise unless ``cfg`` is a JSON object that defines ``net_id`` (names the ids it does define)."""
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleLoadError(f"{cfg}: not readable JSON ({e})") from None
    if not isinstance(raw, dict) or net_id not in raw:
        ids = sorted(k for k in raw if str(k).startswith("network_def")) if isinstance(raw, dict) else []
        raise BundleLoadError(f"{cfg}: no {net_id!r}; this config defines {ids or 'no network_def'} (pass net_id=)")


def _build_network(path: Path, cfg: Path, net_id: str) -> Any:
    """Instantiate only ``net_id`` of ``cfg`` (its dependencies, nothing else) with ``bundle_root`` = ``path``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(cfg))
    meta = path / "configs" / "metadata.json"
    if meta.is_file():
        parser.read_meta(str(meta))
    parser["bundle_root"] = str(path)
    try:
        return parser.get_parsed_content(net_id, instantiate=True)
    except Exception as e:  # noqa: BLE001 - any failure of the user's config is reported with its cause
        root = e
        while root.__cause__ is not None and root.__cause__ is not root:
            root = root.__cause__
        raise BundleLoadError(
            f"{cfg}: cannot build {net_id} ({type(root).__name__}: {str(root).splitlines()[0] if str(root) else ''})"
        ) from e


def load(
    name: str | os.PathLike,
    index: str | os.PathLike | None = None,
    dir: str | os.PathLike | None = None,
    version: str | None = None,
    device: str = "cpu",
    workflow_type: str = "inference",
    net_id: str = "network_def",
    timeout: float = DEFAULT_TIMEOUT,
    allow_unverified: bool = False,
) -> Any:
    """The trained network of a bundle, ready for inference: built from its config, weights loaded, eval mode.

    Only ``net_id`` of ``configs/<workflow_type>.json`` is parsed with ``monai.bundle.ConfigParser`` (its
    dependencies and nothing else: no ``initialize``, no data, no training); the weights come from
    ``models/model.pt`` (``models/model_<name>.pt`` for ``network_def_<name>``) through ``torch.load(...,
    weights_only=True)``. Nothing is written into the current working directory.

    Args:
        name: bundle name (looked up in ``dir``), or the path of a bundle folder (used as it is).
        index: zoo index (``model_info.json`` URL or path). When given and ``dir/name`` lacks the weights (or has
            another ``version``), the bundle is downloaded first, sha256- and hash-checked (see
            :func:`~tlk_components.zoo.download.install_bundle`).
        dir: folder holding the bundles; default :func:`default_bundle_dir` (never the working directory).
        version: the version wanted; default: the copy in ``dir`` if there is one, else the newest compatible.
        device: where the network and its weights go (``"cpu"``, ``"cuda:0"``).
        workflow_type: ``"inference"`` (default) or ``"train"`` (MONAI's names), or any config name of the bundle.
        net_id: the network id of a multi-network bundle (``network_def_<name>``).
        timeout: seconds to wait for a server when downloading.
        allow_unverified: when downloading, also fetch ``large_files.yml`` entries without ``hash_val``.

    Returns:
        The ``torch.nn.Module`` in eval mode on ``device``.

    Raises:
        BundleLoadError: bundle not found (says how to download it), untrained (no weights file), config without
            ``net_id``, or weights that do not fit the network.
        DownloadError: the download failed (see :func:`~tlk_components.zoo.download.install_bundle`).

    Example:
        >>> net = load("mnist_mlp_classification", index="/srv/zoo")  # doctest: +SKIP
        >>> net(torch.rand(1, 1, 28, 28)).shape  # doctest: +SKIP
        torch.Size([1, 10])
    """
    from tlk_components.utils.io import load_weights

    given = Path(name)
    is_path = isinstance(name, os.PathLike) or os.sep in str(name) or given.is_absolute()
    if is_path:
        path = given.expanduser().resolve()
        if not (path / "configs" / "metadata.json").is_file():
            raise BundleLoadError(f"{path}: not a bundle folder (no configs/metadata.json)")
    else:
        root = Path(dir).expanduser().resolve() if dir is not None else default_bundle_dir()
        path = root / str(name)
    weights_rel = f"models/model{net_id[len('network_def') :]}.pt"
    have_version = _local_version(path) if path.is_dir() else None
    wrong_version = version is not None and have_version is not None and have_version != str(version)
    if index is not None and not is_path and (not (path / weights_rel).is_file() or wrong_version):
        path = install_bundle(
            str(name), index, path.parent, version=version, timeout=timeout, allow_unverified=allow_unverified
        ).path
    elif not (path / "configs" / "metadata.json").is_file():
        raise BundleLoadError(
            f"bundle {name!r} is not in {path.parent}; pass index= (a model_info.json URL or path) to download it, "
            "or dir= the folder that holds it"
        )
    elif wrong_version:
        raise BundleLoadError(
            f"{path} holds {name} {have_version}, not {version}; pass index= to download {version}, or leave out "
            "version= to use this copy"
        )
    cfg = _config_file(path, workflow_type)
    _require_net_id(cfg, net_id)
    weights = path / weights_rel
    if not weights.is_file():
        raise BundleLoadError(
            f"{path.name} is untrained: {weights} does not exist (the bundle needs "
            f"{sorted(weight_files(path).values())}). Train it (python -m monai.bundle run --config_file "
            f"{path / 'configs' / 'train.json'}), download a trained release, or fetch its weights "
            "(tlk download_large_files)"
        )
    net = _build_network(path, cfg, net_id)
    state = load_weights(weights, map_location=device)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise BundleLoadError(
            f"{weights} does not fit {net_id} of configs/{cfg.name}: {str(e).splitlines()[0][:300]}; retrain the "
            "bundle or fix the config"
        ) from None
    return net.to(device).eval()


def _local_rows(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    installed = installed_versions()
    rows = []
    for name, path in list_bundles(root).items():
        try:
            meta = json.loads((path / "configs" / "metadata.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
        recorded = {k: str(meta.get(k) or "") for k in ("monai_version", "pytorch_version")}
        rows.append(
            {
                "name": name,
                "version": str(meta.get("version", "?")),
                **recorded,
                "untrained": not all((path / rel).is_file() for rel in weight_files(path).values()),
                "compatible": not requirement_problems(recorded, installed),
                "task": str(meta.get("task", "")),
                "demo_data": name in DATA_MODULES,
                "path": str(path),
            }
        )
    return rows


def list_bundles_info(
    index: str | os.PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    root: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """The bundles an index offers, or the local bundles when ``index`` is None; one dict per bundle version.

    Args:
        index: zoo index (``model_info.json`` URL or path, or its folder); None: the bundles of this checkout.
        timeout: seconds to wait for a server (default 30).
        root: with ``index=None``, the folder to list (default :func:`~tlk_components.zoo.registry.bundles_dir`).

    Returns:
        Dicts with at least ``name, version, monai_version, pytorch_version, untrained, compatible``. Index rows
        (newest version first) add ``prerelease, default`` (what ``download`` picks), ``sha256, weights_sha256,
        source, index`` and have ``untrained`` None when the index does not say; local rows add ``task,
        demo_data, path``.

    Raises:
        DownloadError: the index cannot be read.
    """
    if index is not None:
        return index_info(index, timeout)
    return _local_rows(root)


def format_bundles_info(rows: list[dict[str, Any]]) -> str:
    """The text ``tlk list`` prints for :func:`list_bundles_info` rows (index rows or local rows)."""
    if rows and "index" in rows[0]:
        return format_index_info(rows, rows[0]["index"])
    if not rows:
        return no_bundles_hint()
    lines = []
    for r in rows:
        state = "untrained" if r["untrained"] else "trained"
        demo = "demo data" if r["demo_data"] else "no demo"
        req = f"MONAI {r['monai_version'] or '?'}, torch {r['pytorch_version'] or '?'}"
        lines.append(f"{r['name']:40s} {r['version']:8s} {state:9s} {demo:9s} {req:26s} {r['task']}")
    return "\n".join(lines)
