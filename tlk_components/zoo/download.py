# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""``tlk download`` and ``tlk list --index``: fetch a bundle from a zoo index, verified and extracted atomically.

An index is a JSON file (``model_info.json``, written by ``tlk package``) mapping ``"<name>_v<version>"`` to an
entry with at least ``source`` (URL, or a path relative to the index) and ``sha256``; ``monai_version`` and
``pytorch_version`` are used to pick a compatible version. It can be read over ``http(s)://``, ``file://`` or as a
plain path (a folder means ``<folder>/model_info.json``).

What MONAI's ``monai.bundle download`` does not do and this module does (reference: model_zoo.md §3.3):

* the zip's sha256 is checked against the index **before anything is extracted**; a mismatch leaves the target
  folder untouched;
* versions are ordered by semantic versioning (``0.5.10 > 0.5.9``, ``1.0.0-rc1 < 1.0.0-rc2 < 1.0.0``, PEP 440
  ``1.0.0rc1`` too), and without ``--version`` the newest version whose recorded ``monai_version`` and
  ``pytorch_version`` are compatible with the installed ones (same major version, not newer; MONAI issue 7930) is
  chosen, a stable release before any pre-release; the choice and the versions skipped are reported;
* plain local paths work, and a server that does not answer fails after ``timeout`` seconds with a clear message;
* the archive is checked before extraction (one top folder named after the bundle; no absolute paths, no ``..``,
  no symbolic links, no duplicate names; at most 10,000 members and 20 GiB, no zip bomb), extracted into a
  temporary folder next to the target, completed with the files its ``large_files.yml`` lists (hash-checked) and
  renamed into place; an existing copy is moved aside to ``<name>_v<old version>_backup``, never deleted.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from tlk_components.zoo.large_files import fetch_large_files
from tlk_components.zoo.metadata import is_prerelease, parse_version
from tlk_components.zoo.transport import (
    CHUNK,
    DEFAULT_TIMEOUT,
    DownloadError,
    copy_url,
    local_path,
    read_all,
    to_url,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_BYTES",
    "MAX_MEMBERS",
    "MAX_RATIO",
    "REQUIREMENT_KEYS",
    "DownloadError",
    "DownloadResult",
    "VersionChoice",
    "check_archive",
    "choose_version",
    "download_bundle",
    "download_cmd",
    "extract_bundle",
    "format_index_info",
    "index_entries",
    "index_info",
    "install_bundle",
    "installed_versions",
    "list_index",
    "read_index",
    "release_tuple",
    "requirement_problems",
    "select_entry",
    "version_compatible",
]

logger = logging.getLogger("tlk_components.zoo")
_KEY = re.compile(r"^(.+)_v(\d.*)$")


# --------------------------------------------------------------------------------------------------------------
# the index


def read_index(index: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT) -> tuple[dict[str, Any], str]:
    """Fetch and parse an index; returns ``(index, index_url)`` (the URL resolves relative sources).

    Raises:
        DownloadError: unreachable, time-out, not JSON, or not a JSON object.
    """
    url = to_url(index)
    data = read_all(url, timeout, "index")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        head = data[:60].decode("utf-8", "replace").replace("\n", " ")
        raise DownloadError(
            f"index {url} is not JSON ({e}; it starts with {head!r}); point --index at a model_info.json written by "
            "`tlk package`"
        ) from None
    if not isinstance(obj, dict):
        raise DownloadError(
            f"index {url}: expected a JSON object '<name>_v<version>' -> entry, got {type(obj).__name__}"
        )
    return obj, url


def index_entries(index: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Group an index by bundle name: ``{name: {version: entry}}`` (name/version from the entry or its key).

    Raises:
        DownloadError: an entry is not an object or has no name/version.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, entry in index.items():
        if not isinstance(entry, dict):
            raise DownloadError(f"index entry {key!r}: expected an object with 'source' and 'sha256'")
        m = _KEY.match(key)
        name = entry.get("name") or (m.group(1) if m else None)
        version = entry.get("version") or (m.group(2) if m else None)
        if not name or not version:
            raise DownloadError(f"index entry {key!r}: no 'name'/'version' and the key is not '<name>_v<version>'")
        out.setdefault(str(name), {})[str(version)] = entry
    return out


_INVALID_KEY: tuple[Any, ...] = ((-1,), -1, ())
#: Requirements recorded per version (index entry, else the zip's metadata.json): key -> how messages name it.
REQUIREMENT_KEYS: dict[str, str] = {"monai_version": "MONAI", "pytorch_version": "torch"}


def _version_key(v: str) -> tuple[Any, ...]:
    """Semantic-version sort key; text that is not a version sorts below every version."""
    try:
        return parse_version(v)
    except ValueError:
        return _INVALID_KEY


def _installed_monai() -> str:
    import monai

    return str(monai.__version__)


def _installed_torch() -> str:
    import torch

    return str(torch.__version__)


def installed_versions() -> dict[str, str]:
    """The installed MONAI and PyTorch versions, keyed like the index: ``{"monai_version", "pytorch_version"}``."""
    return {"monai_version": _installed_monai(), "pytorch_version": _installed_torch()}


def release_tuple(version: str) -> tuple[int, int, int] | None:
    """``major.minor.patch`` of a version, ignoring pre-release and local tags (``2.13.0+cpu`` -> (2, 13, 0)).

    Missing parts count as 0 (``1.6`` -> (1, 6, 0)). Returns None for text that is not a version.
    """
    m = re.match(r"^\s*v?(\d+(?:\.\d+)*)", str(version))
    if m is None:
        return None
    major, minor, patch = ([int(p) for p in m.group(1).split(".")] + [0, 0])[:3]
    return (major, minor, patch)


def version_compatible(recorded: str, installed: str) -> bool | None:
    """Whether a bundle recorded with ``recorded`` runs with ``installed`` (MONAI or PyTorch).

    Rule: same major version and ``recorded <= installed``, compared on major.minor.patch (pre-release and local
    tags such as ``rc1`` or ``+cpu`` ignored). A newer minor/patch installed is fine; a newer major is not.

    Returns:
        True or False; None when either version is empty or not a version (nothing to decide on).
    """
    need, have = release_tuple(recorded), release_tuple(installed)
    if need is None or have is None:
        return None
    return need[0] == have[0] and need <= have


def _plain(version: str) -> str:
    """A version without its local tag, for messages (``2.13.0+cpu`` -> ``2.13.0``)."""
    return str(version).split("+")[0].strip()


def requirement_problems(entry: dict[str, Any], installed: dict[str, str] | None = None) -> list[str]:
    """What ``entry`` needs that is not installed, one phrase each (``"needs MONAI 1.7.0"``).

    Args:
        entry: index entry (or metadata) with ``monai_version`` / ``pytorch_version``; a missing or unreadable
            requirement is not a problem (nothing to check).
        installed: ``{"monai_version": ..., "pytorch_version": ...}``; default :func:`installed_versions`.
    """
    installed = installed or installed_versions()
    out = []
    for key, label in REQUIREMENT_KEYS.items():
        need = str(entry.get(key) or "").strip()
        have = str(installed.get(key) or "")
        if not need or version_compatible(need, have) is not False:
            continue
        need_t, have_t = release_tuple(need), release_tuple(have)
        if need_t is not None and have_t is not None and need_t[0] != have_t[0]:
            out.append(f"needs {label} {need}, another major version")
        else:
            out.append(f"needs {label} {need}")
    return out


@dataclass
class VersionChoice:
    """The version ``download`` takes, and why.

    Attributes:
        name: bundle name.
        version: the chosen version.
        entry: its index entry, with ``name``/``version`` set and requirements filled in from the zip's
            metadata where the index lacks them.
        message: one line for the user (``"picked 0.2.0 (newest compatible with MONAI 1.6.1, torch 2.13.0);
            skipped 0.3.0 (needs MONAI 1.7.0)"``).
        warnings: problems the user should know (an explicitly asked version that needs a newer MONAI).
        skipped: newer versions passed over -> why.
    """

    name: str
    version: str
    entry: dict[str, Any]
    message: str
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _unknown_bundle(entries: dict[str, dict[str, dict[str, Any]]], name: str) -> DownloadError:
    close = difflib.get_close_matches(name, list(entries), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return DownloadError(f"bundle {name!r} is not in the index; it offers {sorted(entries)}.{hint}")


def choose_version(
    entries: dict[str, dict[str, dict[str, Any]]],
    name: str,
    version: str | None = None,
    monai_version: str | None = None,
    pytorch_version: str | None = None,
    requirements: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
) -> VersionChoice:
    """Pick the version to download and say why.

    Without ``version``: the newest version (semantic-version order, ``0.5.10 > 0.5.9``, ``1.0.0-rc1 < 1.0.0``)
    whose recorded ``monai_version`` and ``pytorch_version`` are compatible with the installed ones
    (:func:`version_compatible`); a stable release is preferred over any pre-release, which is taken only when no
    stable release is compatible. With ``version``: that version, with a warning when it is not compatible.

    Args:
        entries: output of :func:`index_entries`.
        name: bundle name.
        version: exact version, or None for the newest compatible one.
        monai_version: MONAI version to be compatible with (default: the installed one).
        pytorch_version: PyTorch version to be compatible with (default: the installed one).
        requirements: called as ``requirements(version, entry)`` for a version whose entry lacks
            ``monai_version`` or ``pytorch_version``; returns the missing values (``download`` reads them from the
            verified zip's ``metadata.json``). Default: a missing requirement counts as met.

    Returns:
        :class:`VersionChoice`.

    Raises:
        DownloadError: unknown name (lists the known ones, and the closest spelling), unknown version (lists the
            existing ones), or no compatible version (lists each version and what it needs).
    """
    if name not in entries:
        raise _unknown_bundle(entries, name)
    versions = entries[name]
    installed = installed_versions()
    installed["monai_version"] = monai_version or installed["monai_version"]
    installed["pytorch_version"] = pytorch_version or installed["pytorch_version"]
    have = f"MONAI {_plain(installed['monai_version'])}, torch {_plain(installed['pytorch_version'])}"
    ordered = sorted(versions, key=_version_key, reverse=True)
    filled: dict[str, dict[str, Any]] = {}

    def info(v: str) -> dict[str, Any]:
        if v not in filled:
            entry = {**versions[v], "name": name, "version": v}
            missing = [k for k in REQUIREMENT_KEYS if not str(entry.get(k) or "").strip()]
            if missing and requirements is not None:
                extra = requirements(v, entry) or {}
                entry.update({k: str(extra[k]) for k in missing if str(extra.get(k) or "").strip()})
            filled[v] = entry
        return filled[v]

    if version is not None:
        version = str(version)
        if version not in versions:
            raise DownloadError(f"{name} has no version {version!r} in the index; existing versions: {ordered}")
        entry = info(version)
        problems = requirement_problems(entry, installed)
        warns = []
        if problems:
            warns.append(
                f"{name} {version} {' and '.join(problems)}, but {have} is installed: it may fail to load or run. "
                "Upgrade, or leave out --version to get the newest compatible version."
            )
        note = f"; not compatible: {'; '.join(problems)}" if problems else ""
        return VersionChoice(name, version, entry, f"picked {version} (asked for{note})", warns)

    valid = [v for v in ordered if _version_key(v) != _INVALID_KEY]
    if not valid:
        raise DownloadError(f"{name}: no entry has a valid version ({ordered}); re-publish it with `tlk package`")
    stable = [v for v in valid if not is_prerelease(v)]
    pre = [v for v in valid if is_prerelease(v)]
    reasons: dict[str, str] = {}
    pick = None
    for v in [*stable, *pre]:
        problems = requirement_problems(info(v), installed)
        if not problems:
            pick = v
            break
        reasons[v] = "; ".join(problems)
    if pick is None:
        needs = "; ".join(f"{v} ({reasons[v]})" for v in [*stable, *pre])
        raise DownloadError(
            f"no version of {name} works with the installed {have}: {needs}. Upgrade MONAI/PyTorch, or pass "
            "--version VERSION to take one anyway"
        )
    pick_key = _version_key(pick)
    skipped = {}
    for v in valid:  # newest first: only versions newer than the pick were passed over
        if _version_key(v) <= pick_key:
            break
        skipped[v] = reasons.get(v) or f"pre-release; pass --version {v} to take it"
    why = f"newest compatible with {have}"
    if is_prerelease(pick):
        why += "; no compatible stable release, so a pre-release"
    message = f"picked {pick} ({why})"
    if skipped:
        message += "; skipped " + ", ".join(f"{v} ({r})" for v, r in skipped.items())
    return VersionChoice(name, pick, info(pick), message, [], skipped)


def select_entry(
    entries: dict[str, dict[str, dict[str, Any]]],
    name: str,
    version: str | None = None,
    monai_version: str | None = None,
    pytorch_version: str | None = None,
) -> dict[str, Any]:
    """The index entry :func:`choose_version` picks (with ``name`` and ``version`` set); see there.

    Raises:
        DownloadError: unknown name or version, or no compatible version.
    """
    return choose_version(entries, name, version, monai_version, pytorch_version).entry


def index_info(index: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    """One row per bundle version an index offers: bundles by name, versions newest first.

    Args:
        index: URL (``http(s)://``, ``file://``) or path of a ``model_info.json`` (or of its folder).
        timeout: seconds to wait for a server (default 30).

    Returns:
        Dicts with ``name, version, monai_version, pytorch_version`` (``""`` when not recorded), ``untrained``
        (bool, None when the index does not say), ``prerelease``, ``compatible`` (with the installed MONAI and
        PyTorch; None when nothing is recorded to decide on), ``default`` (what ``download`` without --version
        picks), ``sha256``, ``weights_sha256``, ``source`` (absolute URL) and ``index`` (the index URL).

    Raises:
        DownloadError: the index cannot be read (see :func:`read_index`).
    """
    data, url = read_index(index, timeout)
    return _index_rows(data, url)


def _index_rows(data: dict[str, Any], url: str) -> list[dict[str, Any]]:
    entries = index_entries(data)
    installed = installed_versions()
    rows = []
    for name in sorted(entries):
        try:
            pick = choose_version(entries, name).version
        except DownloadError:
            pick = None
        for v in sorted(entries[name], key=_version_key, reverse=True):
            e = entries[name][v]
            recorded = {k: str(e.get(k) or "") for k in REQUIREMENT_KEYS}
            verdicts = [version_compatible(recorded[k], installed[k]) for k in REQUIREMENT_KEYS if recorded[k]]
            untrained = e.get("untrained")
            rows.append(
                {
                    "name": name,
                    "version": v,
                    **recorded,
                    "untrained": untrained if isinstance(untrained, bool) else None,
                    "prerelease": _version_key(v) != _INVALID_KEY and is_prerelease(v),
                    "compatible": None if not verdicts or None in verdicts else all(verdicts),
                    "default": v == pick,
                    "sha256": str(e.get("sha256") or ""),
                    "weights_sha256": e.get("weights_sha256"),
                    "source": urllib.parse.urljoin(url, str(e.get("source") or "")),
                    "index": url,
                }
            )
    return rows


def format_index_info(rows: list[dict[str, Any]], url: str) -> str:
    """Text of :func:`index_info` rows: one line per bundle, versions newest first, ``*`` on the default pick.

    ``?`` marks a requirement the index does not record; the ``*`` then assumes it is met (``download`` reads it
    from the zip and may skip that version).
    """
    if not rows:
        return f"index {url} lists no bundles"
    inst = installed_versions()
    lines = [
        f"index {url} (installed MONAI {_plain(inst['monai_version'])}, torch {_plain(inst['pytorch_version'])}; "
        "* = what `download` picks)"
    ]
    by_name: dict[str, list[str]] = {}
    for r in rows:
        notes = [f"MONAI {r['monai_version'] or '?'}", f"torch {r['pytorch_version'] or '?'}"]
        if r["untrained"]:
            notes.append("untrained")
        if r["compatible"] is False:
            notes.append("incompatible")
        by_name.setdefault(r["name"], []).append(f"{r['version']}{'*' if r['default'] else ''} ({', '.join(notes)})")
    lines += [f"{name:40s} {', '.join(parts)}" for name, parts in by_name.items()]
    return "\n".join(lines)


def list_index(index: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT) -> str:
    """The bundles and versions an index offers, newest first; ``*`` marks the version ``download`` would pick.

    Each version shows the MONAI and PyTorch versions it was released with, and ``untrained`` /
    ``incompatible`` where that applies.

    Args:
        index: URL (``http(s)://``, ``file://``) or path of a ``model_info.json`` (or of its folder).
        timeout: seconds to wait for a server (default 30).

    Raises:
        DownloadError: the index cannot be read (see :func:`read_index`).
    """
    data, url = read_index(index, timeout)
    return format_index_info(_index_rows(data, url), url)


# --------------------------------------------------------------------------------------------------------------
# archives


#: Default limits on a bundle archive, checked from its central directory before anything is extracted (a zip
#: bomb or an archive of thousands of files is refused before it fills the disk). Raise them by keyword
#: (``max_members=``, ``max_bytes=``, ``max_ratio=``; on the command line ``--max_members`` etc.) for a real
#: bundle that exceeds them.
MAX_MEMBERS = 10_000
MAX_BYTES = 20 * 1024**3
#: Largest uncompressed/compressed size ratio of the whole archive, enforced once it holds more than
#: :data:`RATIO_MIN_BYTES` uncompressed (weights compress about 1.1x, JSON about 5x; a zip bomb about 1000x).
MAX_RATIO = 200.0
RATIO_MIN_BYTES = 64 * 1024**2
_MAX_LISTED = 20


def _gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def _limit_problems(zf: zipfile.ZipFile, max_members: int, max_bytes: int, max_ratio: float) -> str | None:
    """Why the archive exceeds a limit (count, total size, compression ratio), or None; central directory only."""
    infos = zf.infolist()
    if len(infos) > max_members:
        return (
            f"it holds {len(infos)} members, more than the limit of {max_members}; a bundle release holds a few "
            f"configs, docs and weights. If this is a real bundle, raise the limit (max_members={len(infos)}, "
            f"--max_members {len(infos)})"
        )
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        return (
            f"its members unpack to {_gib(total)} ({total} bytes), more than the limit of {_gib(max_bytes)}; if this "
            f"is a real bundle, raise the limit (max_bytes={total}, --max_bytes {total})"
        )
    packed = sum(i.compress_size for i in infos)
    ratio = total / max(packed, 1)
    if total > RATIO_MIN_BYTES and ratio > max_ratio:
        return (
            f"its {_gib(packed)} of compressed data unpack to {_gib(total)} (ratio {ratio:.0f}, limit {max_ratio:g}): "
            f"a zip bomb, or data no bundle release holds; if this is a real bundle, raise the limit "
            f"(max_ratio={math.ceil(ratio)}, --max_ratio {math.ceil(ratio)})"
        )
    return None


def check_archive(
    zf: zipfile.ZipFile,
    name: str,
    max_members: int = MAX_MEMBERS,
    max_bytes: int = MAX_BYTES,
    max_ratio: float = MAX_RATIO,
) -> None:
    """Refuse an archive that would write outside ``<target>/<name>``, or anything but plain files and folders.

    Checked from the zip's central directory, before anything is extracted or decompressed:

    * limits: at most ``max_members`` members, at most ``max_bytes`` uncompressed in total, and (above 64 MiB) an
      uncompressed/compressed ratio of at most ``max_ratio`` (zip bombs). ``zipfile`` never unpacks more than
      a member's recorded size, so these bounds hold during extraction too;
    * every member is a relative path below the single top folder ``name/`` without ``..``;
    * every member is a regular file or a folder: a release written by ``tlk package`` holds no symbolic links,
      so every link is refused (links chained through other links can leave the folder even when each one looks
      inside it), as are devices and pipes;
    * no member name appears twice, and no file is also the folder of another member.

    Args:
        zf: the open archive.
        name: bundle name = the archive's top folder.
        max_members: most members accepted (default :data:`MAX_MEMBERS`).
        max_bytes: most uncompressed bytes accepted in total (default :data:`MAX_BYTES`, 20 GiB).
        max_ratio: largest total compression ratio accepted above 64 MiB (default :data:`MAX_RATIO`).

    Raises:
        DownloadError: a limit exceeded (says by how much and how to raise it), or listing the offending members.
    """
    too_big = _limit_problems(zf, int(max_members), int(max_bytes), float(max_ratio))
    if too_big is not None:
        raise DownloadError(f"refusing to extract the archive of {name}: {too_big}")
    problems = []
    seen: dict[str, int] = {}
    files: set[str] = set()
    folders: set[str] = set()
    for info in zf.infolist():
        n = info.filename
        norm = n.replace("\\", "/")
        parts = PurePosixPath(norm).parts
        if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
            problems.append(f"{n!r}: absolute path")
            continue
        if ".." in parts:
            problems.append(f"{n!r}: contains '..'")
            continue
        if not parts or parts[0] != name:
            problems.append(f"{n!r}: outside the top folder {name + '/'!r}")
            continue
        key = "/".join(parts)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 2:
            problems.append(f"{n!r}: appears more than once in the archive (duplicate member name)")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            with zf.open(info) as f:
                target = f.read(4096).decode("utf-8", "replace")
            problems.append(
                f"{n!r}: symbolic link (to {target!r}); a bundle release holds regular files only, re-publish it "
                "with `tlk package`"
            )
        elif kind and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            problems.append(f"{n!r}: not a regular file or folder (mode {oct(mode)})")
        elif info.is_dir():
            folders.add(key)
        else:
            files.add(key)
    problems += [f"{f!r}: is a file and also the folder of other members" for f in sorted(files & folders)]
    if problems:
        listed = problems[:_MAX_LISTED]
        if len(problems) > _MAX_LISTED:
            listed.append(f"... and {len(problems) - _MAX_LISTED} more")
        raise DownloadError(
            f"refusing to extract the archive of {name}: {len(problems)} unsafe member(s) (a bundle zip holds "
            f"regular files under one folder {name + '/'!r})\n" + "\n".join(f"  - {p}" for p in listed)
        )


def _extract_members(zf: zipfile.ZipFile, dest: Path) -> None:
    """Write the (already checked: files and folders only) members under ``dest``; +x kept where archived so."""
    made = set()
    for info in zf.infolist():
        target = dest / info.filename.replace("\\", "/")
        mode = info.external_attr >> 16
        folder = target if info.is_dir() else target.parent
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        if info.is_dir():
            continue
        with zf.open(info) as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst)
        if mode & 0o111:
            os.chmod(target, 0o755)


def _read_version(bundle: Path) -> str | None:
    """``version`` of ``bundle/configs/metadata.json``, or None when it cannot be read."""
    try:
        got = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return str(got) if got is not None else None


def _backup_path(dir_: Path, name: str, old_version: str | None) -> Path:
    """A free ``dir/<name>_v<old version>_backup`` (with ``_2``, ``_3``... when taken)."""
    safe = re.sub(r"[^\w.+-]", "_", old_version) if old_version else "unknown"
    base = dir_ / f"{name}_v{safe}_backup"
    candidate, i = base, 1
    while candidate.exists() or candidate.is_symlink():
        i += 1
        candidate = base.with_name(f"{base.name}_{i}")
    return candidate


def extract_bundle(
    archive: str | os.PathLike | IO[bytes],
    dir: str | os.PathLike,
    name: str,
    expected_version: str | None = None,
    label: str | None = None,
    prepare: Callable[[Path], object] | None = None,
    max_members: int = MAX_MEMBERS,
    max_bytes: int = MAX_BYTES,
    max_ratio: float = MAX_RATIO,
) -> Path:
    """Extract a bundle zip into ``dir/name`` atomically (checks first; temp folder in ``dir``, then rename).

    An existing ``dir/name`` is never deleted: it is renamed to ``dir/<name>_v<its version>_backup`` (see
    :func:`install_bundle`, which reports where).

    Args:
        archive: zip path or open binary file.
        dir: parent folder of the bundle (created).
        name: bundle name = the archive's top folder.
        expected_version: when given, ``configs/metadata.json``'s version must equal it.
        label: how the archive is named in messages (default: its path).
        prepare: called with the extracted bundle folder (still in the temporary folder) before it is renamed
            into place, e.g. to fetch its large files; an exception aborts the install.
        max_members: most members accepted (see :func:`check_archive`).
        max_bytes: most uncompressed bytes accepted in total.
        max_ratio: largest compression ratio accepted (zip bombs).

    Returns:
        ``dir/name``.

    Raises:
        DownloadError: not a zip / truncated / damaged, unsafe members, a limit exceeded, or not the expected
            bundle. The previous ``dir/name`` (if any) is left as it was (also when ``prepare`` raises).
    """
    return _extract(archive, dir, name, expected_version, label, prepare, max_members, max_bytes, max_ratio)[0]


def _extract(
    archive: str | os.PathLike | IO[bytes],
    dir: str | os.PathLike,
    name: str,
    expected_version: str | None,
    label: str | None,
    prepare: Callable[[Path], object] | None,
    max_members: int,
    max_bytes: int,
    max_ratio: float,
) -> tuple[Path, Path | None]:
    """:func:`extract_bundle`; also returns where the previous copy was moved (None when there was none)."""
    dir_ = Path(dir)
    dir_.mkdir(parents=True, exist_ok=True)
    final = dir_ / name
    label = label or str(getattr(archive, "name", archive))
    tmp = Path(tempfile.mkdtemp(dir=dir_, prefix=f".{name}.extract-"))
    backup = None
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                check_archive(zf, name, max_members=max_members, max_bytes=max_bytes, max_ratio=max_ratio)
                _extract_members(zf, tmp)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise DownloadError(
                f"archive {label} of {name} is damaged or truncated ({type(e).__name__}: {e}); download it again, "
                "or re-publish it with `tlk package`"
            ) from None
        meta_p = tmp / name / "configs" / "metadata.json"
        if not meta_p.is_file():
            raise DownloadError(f"archive {label} holds no {name}/configs/metadata.json: not a bundle")
        if expected_version is not None:
            got = _read_version(tmp / name)
            if got != expected_version:
                raise DownloadError(
                    f"archive {label}: metadata.json says version {got!r} but the index says {expected_version!r}; "
                    "the index is inconsistent, re-publish with `tlk package`"
                )
        if prepare is not None:
            prepare(tmp / name)
        if final.exists() or final.is_symlink():
            # never delete the old copy: it may hold the user's trained models/ and eval/
            backup = _backup_path(dir_, name, _read_version(final))
            os.rename(final, backup)
        try:
            os.rename(tmp / name, final)
        except BaseException:
            if backup is not None:
                os.rename(backup, final)
                backup = None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, backup


# --------------------------------------------------------------------------------------------------------------
# download


def _fetch_verified(url: str, dest_dir: Path, timeout: float, label: str) -> tuple[IO[bytes], str]:
    """Open the archive at ``url`` and check its sha256; returns an open file positioned at 0, and the digest.

    Local files are hashed where they are (no copy); remote ones are streamed into a temporary file in ``dest_dir``
    (deleted when the returned file is closed).
    """
    h = hashlib.sha256()
    if urllib.parse.urlparse(url).scheme.lower() == "file":
        path = local_path(url)
        try:
            f = open(path, "rb")  # noqa: SIM115 - returned to the caller
        except FileNotFoundError:
            raise DownloadError(f"archive of {label} {path} does not exist; the index's 'source' is wrong") from None
        while block := f.read(CHUNK):
            h.update(block)
    else:
        f = tempfile.TemporaryFile(dir=dest_dir)  # noqa: SIM115 - returned to the caller
        try:
            copy_url(url, f, timeout, f"archive of {label}", hashes=[h])
        except BaseException:
            f.close()
            raise
    f.seek(0)
    return f, h.hexdigest()


def _entry_url(entry: dict[str, Any], index_url: str) -> tuple[str, str]:
    """The archive URL and the expected sha256 of an index entry (refused when it has no valid sha256)."""
    label = f"{entry['name']} {entry['version']}"
    expected = str(entry.get("sha256") or "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise DownloadError(
            f"index entry {label} has no valid 'sha256' (got {entry.get('sha256')!r}); refusing to install an "
            "unverified archive. Re-publish it with `tlk package`."
        )
    source = entry.get("source")
    if not source:
        raise DownloadError(f"index entry {label} has no 'source' URL; re-publish it with `tlk package`")
    return urllib.parse.urljoin(index_url, str(source)), expected


def _zip_requirements(f: IO[bytes], name: str) -> dict[str, Any]:
    """``monai_version``/``pytorch_version`` from ``<name>/configs/metadata.json`` in an open zip ({} if unreadable).

    An unreadable archive is not reported here: extraction reports it with the full reason.
    """
    try:
        with zipfile.ZipFile(f) as zf:
            info = zf.getinfo(f"{name}/configs/metadata.json")
            if info.file_size > CHUNK:  # a metadata.json is a few kB; a huge one is refused by check_archive
                return {}
            meta = json.loads(zf.read(info).decode("utf-8"))
    except (KeyError, zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError):
        return {}
    finally:
        f.seek(0)
    return {k: meta.get(k) for k in REQUIREMENT_KEYS} if isinstance(meta, dict) else {}


@dataclass
class DownloadResult:
    """What :func:`install_bundle` did.

    Attributes:
        path: the bundle folder ``dir/name``.
        name: bundle name.
        version: the version installed.
        message: which version was picked and why (see :class:`VersionChoice`).
        warnings: e.g. an explicitly asked version that is not compatible with the installed MONAI/PyTorch.
        large_files: the files fetched from the bundle's ``large_files.yml`` (absolute paths in ``path``).
        backup: where the copy that was in ``path`` before was moved (``dir/<name>_v<old version>_backup``, with
            its trained ``models/``, ``eval/`` and anything else you added), or None when there was none.
    """

    path: Path
    name: str
    version: str
    message: str
    warnings: list[str] = field(default_factory=list)
    large_files: list[Path] = field(default_factory=list)
    backup: Path | None = None


def install_bundle(
    name: str,
    index: str | os.PathLike,
    dir: str | os.PathLike,
    version: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    allow_unverified: bool = False,
    max_members: int = MAX_MEMBERS,
    max_bytes: int = MAX_BYTES,
    max_ratio: float = MAX_RATIO,
) -> DownloadResult:
    """Download bundle ``name`` listed in ``index`` into ``dir/name`` and report which version and why.

    Steps: pick the version (:func:`choose_version`; requirements missing from the index are read from the
    verified zip's ``metadata.json``), check the zip's sha256 **before** extracting anything, check the archive's
    member names, extract into a temporary folder in ``dir``, fetch the files its ``large_files.yml`` lists into
    that folder (hash-checked, see :func:`~tlk_components.zoo.large_files.fetch_large_files`), and only then
    rename it into place. Any failure leaves an existing ``dir/name`` as it was. After success the previous copy
    is not deleted: it is moved to ``dir/<name>_v<old version>_backup`` (``_2``, ``_3``... when taken), so trained
    ``models/`` and ``eval/`` are never lost; :attr:`DownloadResult.backup` says where.

    Args:
        name: bundle name (as in the index).
        index: URL (``http(s)://``, ``file://``) or path of the index (or of its folder).
        dir: parent folder for the bundle (created); an existing ``dir/name`` is moved aside only after success.
        version: exact version (a warning when it is incompatible); default the newest version compatible with
            the installed MONAI and PyTorch, stable releases before pre-releases.
        timeout: seconds to wait for a server to answer (default 30).
        allow_unverified: also fetch ``large_files.yml`` entries that have no ``hash_val`` (default: refused).
        max_members: most archive members accepted (default 10,000; see :func:`check_archive`).
        max_bytes: most uncompressed bytes accepted (default 20 GiB).
        max_ratio: largest compression ratio accepted above 64 MiB (default 200; zip bombs).

    Returns:
        :class:`DownloadResult`.

    Raises:
        DownloadError: unknown name/version (lists what exists), no compatible version (lists what each needs),
            unreachable/silent server, index not JSON, entry without sha256, checksum mismatch (nothing
            extracted), damaged or unsafe archive (symbolic links, duplicate names, over a limit), bad
            ``large_files.yml`` or a large file whose hash differs.
    """
    data, index_url = read_index(index, timeout)
    entries = index_entries(data)
    dest = Path(dir)
    fetched: dict[str, tuple[IO[bytes], str]] = {}
    with contextlib.ExitStack() as stack:

        def fetch(entry: dict[str, Any]) -> tuple[IO[bytes], str]:
            v = entry["version"]
            if v not in fetched:
                url, expected = _entry_url(entry, index_url)
                dest.mkdir(parents=True, exist_ok=True)
                f, digest = _fetch_verified(url, dest, timeout, f"{entry['name']} {v}")
                stack.enter_context(f)
                if digest != expected:
                    kept = " and the existing copy was kept" if (dest / entry["name"]).exists() else ""
                    raise DownloadError(
                        f"sha256 of {url} is {digest}, but the index says {expected}: the file is corrupt or was "
                        f"replaced. Nothing was extracted{kept}."
                    )
                fetched[v] = (f, url)
            return fetched[v]

        def requirements(v: str, entry: dict[str, Any]) -> dict[str, Any]:
            return _zip_requirements(fetch(entry)[0], entry["name"])

        choice = choose_version(
            entries, str(name), None if version is None else str(version), requirements=requirements
        )
        f, url = fetch(choice.entry)
        f.seek(0)
        fetched_large: list[Path] = []  # relative to the bundle folder

        def prepare(folder: Path) -> None:
            got = fetch_large_files(folder, timeout=timeout, allow_unverified=allow_unverified)
            fetched_large.extend(p.relative_to(folder) for p in got)

        path, backup = _extract(f, dest, choice.name, choice.version, url, prepare, max_members, max_bytes, max_ratio)
    return DownloadResult(
        path=path,
        name=choice.name,
        version=choice.version,
        message=choice.message,
        warnings=list(choice.warnings),
        large_files=[path / rel for rel in fetched_large],
        backup=backup,
    )


def download_bundle(
    name: str,
    index: str | os.PathLike,
    dir: str | os.PathLike,
    version: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    allow_unverified: bool = False,
    max_members: int = MAX_MEMBERS,
    max_bytes: int = MAX_BYTES,
    max_ratio: float = MAX_RATIO,
) -> Path:
    """Download bundle ``name`` listed in ``index`` into ``dir/name``: verify sha256, then extract atomically.

    :func:`install_bundle` returning only the folder; which version was picked and why is logged (logger
    ``tlk_components.zoo``), and an incompatible explicit ``version`` gives a ``UserWarning``. Where the previous
    copy of ``dir/name`` was moved (``dir/<name>_v<old version>_backup``) is logged as a warning.

    Args:
        name: bundle name (as in the index).
        index: URL (``http(s)://``, ``file://``) or path of the index (or of its folder).
        dir: parent folder for the bundle (created); an existing ``dir/name`` is moved aside only after success.
        version: exact version; default the newest compatible with the installed MONAI and PyTorch.
        timeout: seconds to wait for a server to answer (default 30).
        allow_unverified: also fetch ``large_files.yml`` entries without ``hash_val`` (default: refused).
        max_members: most archive members accepted (default 10,000).
        max_bytes: most uncompressed bytes accepted (default 20 GiB).
        max_ratio: largest compression ratio accepted above 64 MiB (default 200).

    Returns:
        The bundle folder ``dir/name``, ready for ``python -m monai.bundle run`` from any directory.

    Raises:
        DownloadError: see :func:`install_bundle`.
    """
    result = install_bundle(
        name,
        index,
        dir,
        version=version,
        timeout=timeout,
        allow_unverified=allow_unverified,
        max_members=max_members,
        max_bytes=max_bytes,
        max_ratio=max_ratio,
    )
    logger.info("%s: %s", result.name, result.message)
    if result.backup is not None:
        logger.warning("%s: the previous copy of %s was moved to %s", result.name, result.path, result.backup)
    for w in result.warnings:
        warnings.warn(w, UserWarning, stacklevel=2)
    return result.path


def download_cmd(
    name: str,
    index: str,
    dir: str,
    version: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    allow_unverified: bool = False,
    max_members: int = MAX_MEMBERS,
    max_bytes: int = MAX_BYTES,
    max_ratio: float = MAX_RATIO,
) -> str:
    """Download bundle NAME from the zoo index INDEX into DIR/NAME (sha256-verified, extracted atomically).

    A copy already in DIR/NAME is kept: it is moved to DIR/NAME_v<its version>_backup (the output says where).

    Args:
        name: bundle name (``tlk list --index INDEX`` shows them).
        index: http(s)://, file:// URL or plain path of model_info.json (or its folder).
        dir: parent folder of the bundle.
        version: exact version (quote it: --version 0.1.0); default the newest compatible with the installed
            MONAI and PyTorch (stable releases first).
        timeout: seconds to wait for a server (default 30).
        allow_unverified: also fetch large_files.yml entries that have no hash_val.
        max_members: most archive members accepted (default 10000).
        max_bytes: most uncompressed bytes accepted (default 20 GiB).
        max_ratio: largest compression ratio accepted above 64 MiB (default 200).
    """
    r = install_bundle(
        name,
        index,
        dir,
        version=None if version is None else str(version),
        timeout=float(timeout),
        allow_unverified=bool(allow_unverified),
        max_members=int(max_members),
        max_bytes=int(max_bytes),
        max_ratio=float(max_ratio),
    )
    for w in r.warnings:
        print(f"warning: {w}", file=sys.stderr)
    lines = [f"downloaded {r.name} {r.version} (sha256 verified) into {r.path}", f"  {r.message}"]
    lines += [f"  fetched {p.relative_to(r.path)} (large_files.yml, hash verified)" for p in r.large_files]
    if r.backup is not None:
        lines.append(f"  the previous copy (with its models/ and eval/) was moved to {r.backup}, not deleted")
    lines.append(
        f"run it: python -m monai.bundle run --config_file {r.path / 'configs' / 'inference.json'} "
        "--input_dir DIR --output_dir OUT"
    )
    return "\n".join(lines)
