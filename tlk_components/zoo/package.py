# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""``tlk package``: a deterministic release zip of a bundle plus its entry in the zoo index.

Layout of a release (any static file server can host it; see docs/zoo.md)::

    OUT/
    ├── model_info.json                      the index: "<name>_v<version>" -> entry (below)
    └── <name>_v<version>.zip                everything under one top folder "<name>/"

Index entry (MONAI's ``model_info.json`` keys ``source``/``checksum`` kept, with sha256 instead of sha1)::

    "mnist_mlp_classification_v0.1.0": {
        "name": "mnist_mlp_classification", "version": "0.1.0",
        "sha256": "<hex digest of the zip>", "checksum": "<same>", "hash_type": "sha256",
        "source": "file:///.../mnist_mlp_classification_v0.1.0.zip",  (or <base_url>/<zip name>)
        "size": 12345, "monai_version": "1.6.1", "pytorch_version": "2.13.0",
        "untrained": false, "weights_sha256": "<hex digest of models/model.pt>",
        "weights": {"models/model.pt": "<same>"}
    }

Weights are first-class: a bundle without its trained weights (``models/model.pt``, or ``models/model_<name>.pt``
for each ``network_def_<name>`` of a multi-network bundle) is refused unless ``allow_untrained=True``
(``--allow-untrained``), and then its entry says ``"untrained": true`` (``weights_sha256`` null; ``weights`` lists
the weight files that are there). Weights kept out of git are fetched first with ``tlk download_large_files``
(``large_files.yml``); verification (the ``weights`` check) refuses a listed file that is absent or differs from
its ``hash_val``.

Determinism: entries sorted by path, fixed timestamp (1980-01-01 00:00:00), fixed permissions (0644 files, 0755
folders), Unix "created by" system, DEFLATE at a fixed level, no extra fields — the same inputs give the same
bytes, so the sha256 identifies the contents. ``demo_data/``, ``eval/``, ``runs/``, caches, hidden files and
``models/checkpoint_last.pt`` are left out; ``models/model.pt`` and ``models/model.ts`` go in when present.

A released version is immutable: packaging a bundle whose zip differs from the one the index records for the same
version is refused (bump ``version`` in metadata.json and add a changelog line).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tlk_components.utils.errors import TLKError
from tlk_components.utils.io import atomic_write_json, sha256_file
from tlk_components.zoo.registry import find_bundle
from tlk_components.zoo.verify import STATIC_CHECKS, verify_bundle

__all__ = [
    "EXCLUDED_DIRS",
    "EXCLUDED_FILES",
    "INDEX_NAME",
    "PackageError",
    "bundle_files",
    "package_bundle",
    "package_cmd",
    "weight_files",
    "write_bundle_zip",
]

INDEX_NAME = "model_info.json"
#: Folders (at any depth) never packaged: run-time data, outputs and caches.
EXCLUDED_DIRS = frozenset(
    {"demo_data", "eval", "runs", "__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints", ".git"}
)
#: File names never packaged (the resumable training state is not a release artefact).
EXCLUDED_FILES = frozenset({"checkpoint_last.pt", ".DS_Store"})
_EXCLUDED_SUFFIXES = (".pyc", ".tmp", ".part", ".swp")
#: Marks an earlier run's model kept aside by a new training run (``model.pt.bak-<time>``): not part of a release.
_BACKUP_MARK = ".bak-"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_LEVEL = 6
_ZIP64_AT = 1 << 30  # files above 1 GiB get zip64 headers (zipfile refuses to grow past 2 GiB without them)


class PackageError(TLKError):
    """A bundle cannot be packaged (failed verification, or a released version would change)."""


def bundle_files(bundle_dir: str | os.PathLike) -> list[Path]:
    """The files a release of ``bundle_dir`` contains, as sorted paths relative to it.

    Symbolic links are not followed or packaged (a release holds regular files only); nor are run-time folders
    (:data:`EXCLUDED_DIRS`), dotfiles (the training lock ``models/.lock``), the resumable checkpoint, temporary files
    and earlier runs' models kept aside as ``<name>.bak-<time>``.
    """
    root = Path(bundle_dir)
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith("."))
        for fn in filenames:
            p = Path(dirpath) / fn
            if (
                fn in EXCLUDED_FILES
                or fn.startswith(".")
                or fn.endswith(_EXCLUDED_SUFFIXES)
                or _BACKUP_MARK in fn
                or p.is_symlink()
            ):
                continue
            if p.is_file():
                out.append(p.relative_to(root))
    return sorted(out, key=lambda p: p.as_posix())


def weight_files(bundle_dir: str | os.PathLike) -> dict[str, str]:
    """The trained-weight files a bundle needs: network id -> path relative to the bundle.

    ``network_def`` -> ``models/model.pt``; each ``network_def_<name>`` of a multi-network bundle ->
    ``models/model_<name>.pt`` (the convention ``verify`` uses). Read from ``configs/inference.json``; when that
    file is missing or not JSON, ``{"network_def": "models/model.pt"}``.
    """
    try:
        config = json.loads((Path(bundle_dir) / "configs" / "inference.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        config = {}
    ids = (
        sorted(k for k in config if k == "network_def" or k.startswith("network_def_"))
        if isinstance(config, dict)
        else []
    )
    return {i: f"models/model{i[len('network_def') :]}.pt" for i in ids or ["network_def"]}


def _zip_info(name: str, is_dir: bool = False) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.create_system = 3  # Unix, so the permission bits below are honoured
    if is_dir:
        info.external_attr = (0o40755 << 16) | 0x10
        info.compress_type = zipfile.ZIP_STORED
    else:
        info.external_attr = 0o100644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
    return info


def write_bundle_zip(bundle_dir: str | os.PathLike, zip_path: str | os.PathLike, top: str | None = None) -> list[str]:
    """Write the deterministic release zip of ``bundle_dir`` to ``zip_path`` (not atomic; see :func:`package_bundle`).

    Args:
        bundle_dir: the bundle folder.
        zip_path: output file.
        top: the single top folder inside the zip (default: the bundle folder's name).

    Returns:
        The archive member names, in order.
    """
    root = Path(bundle_dir)
    top = top or root.name
    files = bundle_files(root)
    folders = {q.as_posix() for p in files for q in p.parents} - {"."}
    entries = {f"{top}/": None} | {f"{top}/{d}/": None for d in folders} | {f"{top}/{p.as_posix()}": p for p in files}
    members = sorted(entries)  # a folder entry sorts before its contents (it is their prefix)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=_LEVEL) as zf:
        for name in members:
            rel = entries[name]
            if rel is None:
                zf.writestr(_zip_info(name, is_dir=True), b"")
                continue
            info = _zip_info(name)
            info.file_size = (root / rel).stat().st_size
            with open(root / rel, "rb") as src, zf.open(info, "w", force_zip64=info.file_size > _ZIP64_AT) as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
    return members


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of the index between concurrent ``package`` runs into the same folder."""
    with open(out_dir / f".{INDEX_NAME}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    """Read a local index file (``{}`` when it does not exist yet).

    Raises:
        PackageError: the file is not a JSON object (names the file and the fix).
    """
    p = Path(path)
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{p}: not a JSON zoo index ({e}); repair or remove it before packaging") from None
    if not isinstance(data, dict):
        raise PackageError(
            f"{p}: expected a JSON object mapping '<name>_v<version>' to entries, got {type(data).__name__}"
        )
    return data


def package_bundle(
    bundle: str | os.PathLike,
    out_dir: str | os.PathLike,
    base_url: str | None = None,
    full_verify: bool = False,
    allow_untrained: bool = False,
) -> dict[str, Any]:
    """Package ``bundle`` into ``out_dir/<name>_v<version>.zip`` and record it in ``out_dir/model_info.json``.

    Nothing is half-written: the zip is built in a temporary file in ``out_dir`` and renamed into place, and the
    index is rewritten atomically, both only after every check passed. Re-packaging unchanged contents is a no-op.

    Args:
        bundle: bundle name or folder.
        out_dir: release folder (created).
        base_url: URL prefix the zips will be served from (``https://host/zoo``); the entry's ``source`` becomes
            ``<base_url>/<zip name>``. Default: the zip's ``file://`` URL. A relative prefix (``"."``) makes the
            source relative to the index, so the folder can be moved to any server as is.
        full_verify: also build the network and check TorchScript export (default: file checks only:
            metadata schema, required files, config keys, overrides, portability, README figures). This runs code
            from the bundle's configs (``verify``'s ``trust=True``): pass it for a bundle you trust.
        allow_untrained: package a bundle without trained weights (a config-only release, recorded as
            ``"untrained": true``); default: refused.

    Returns:
        The index entry written (``name, version, sha256, source, size, monai_version, pytorch_version,
        untrained, weights_sha256, weights``, plus ``zip``: the local path).

    Raises:
        PackageError: verification failed (lists the fixes), no trained weights (says how to train, or to pass
            ``--allow-untrained``), or the version was released with other contents.
        ConfigError: unknown bundle (lists the known ones).
    """
    path = find_bundle(bundle)
    # full_verify: the packager asks to build their own bundle, so its config code may run (trust=True)
    report = verify_bundle(path, checks=None if full_verify else STATIC_CHECKS, trust=True if full_verify else None)
    problems = [] if report.ok else [f"verification failed\n{report.summary()}"]
    weights = weight_files(path)
    missing = [rel for rel in weights.values() if not (path / rel).is_file()]
    if missing and not allow_untrained:
        problems.append(
            f"no trained weights: {', '.join(str(path / rel) for rel in missing)} missing. Train it first "
            f"(python -m monai.bundle run --config_file {path / 'configs' / 'train.json'}; its docs/README.md says "
            "which data) or fetch them (tlk download_large_files), or pass --allow-untrained (allow_untrained=True) "
            "for a config-only release"
        )
    if problems:
        raise PackageError(f"refusing to package {path.name}: " + "\n".join(problems))
    untrained = bool(missing)
    digests = {rel: sha256_file(path / rel) for rel in weights.values() if (path / rel).is_file()}
    meta = json.loads((path / "configs" / "metadata.json").read_text(encoding="utf-8"))
    name, version = path.name, meta["version"]
    key = f"{name}_v{version}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    zip_path = out / f"{key}.zip"
    index_path = out / INDEX_NAME
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{key}.", suffix=".zip.tmp")
    os.close(fd)
    try:
        write_bundle_zip(path, tmp, top=name)
        digest = sha256_file(tmp)
        with _locked(out):
            index = read_index(index_path)
            old = index.get(key)
            if old is not None and old.get("sha256") != digest:
                changelog = meta.get("changelog", {})
                raise PackageError(
                    f"{key} is already released in {index_path} with sha256 {old.get('sha256')} and the bundle's "
                    f"contents changed (new sha256 {digest}). A released version is immutable: bump 'version' in "
                    f"{path / 'configs' / 'metadata.json'} (now {version}; changelog has {sorted(changelog)}) and add "
                    "a changelog line saying what changed."
                )
            os.chmod(tmp, 0o644)
            os.replace(tmp, zip_path)
            if base_url is None:
                source = zip_path.resolve().as_uri()
            else:
                source = f"{base_url.rstrip('/')}/{zip_path.name}" if base_url not in ("", ".") else zip_path.name
            entry = {
                "name": name,
                "version": version,
                "sha256": digest,
                "checksum": digest,
                "hash_type": "sha256",
                "source": source,
                "size": zip_path.stat().st_size,
                "monai_version": str(meta.get("monai_version", "")),
                "pytorch_version": str(meta.get("pytorch_version", "")),
                "untrained": untrained,
                "weights_sha256": None if untrained else digests.get("models/model.pt"),
                "weights": digests,
            }
            index[key] = entry
            atomic_write_json(index_path, dict(sorted(index.items())))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {**entry, "zip": str(zip_path)}


def package_cmd(
    bundle: str,
    out: str,
    base_url: str | None = None,
    full_verify: bool = False,
    allow_untrained: bool = False,
) -> str:
    """Package BUNDLE into OUT/<name>_v<version>.zip and add it to OUT/model_info.json.

    Args:
        bundle: bundle name or folder.
        out: release folder (created); serve it from any static server to share the bundles.
        base_url: where OUT will be served (``https://host/zoo``); default the file:// URL of the zip.
        full_verify: also build and export the network before packaging (runs the config code of your bundle).
        allow_untrained: release a bundle without trained weights (config only; recorded as untrained).
    """
    e = package_bundle(
        bundle, out, base_url=base_url, full_verify=bool(full_verify), allow_untrained=bool(allow_untrained)
    )
    weights = "untrained (no weights)" if e["untrained"] else f"weights sha256 {e['weights_sha256'] or e['weights']}"
    return f"packaged {e['name']} {e['version']} -> {e['zip']}\n  sha256 {e['sha256']}\n  {weights}\n  source {e['source']}"
