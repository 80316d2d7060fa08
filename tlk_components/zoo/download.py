# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""``tlk download`` and ``tlk list --index``: fetch a bundle from a zoo index, verified and extracted atomically.

An index is a JSON file (``model_info.json``, written by ``tlk package``) mapping ``"<name>_v<version>"`` to an
entry with at least ``source`` (URL, or a path relative to the index) and ``sha256``; ``monai_version`` is used to
pick a compatible version. It can be read over ``http(s)://``, ``file://`` or as a plain path (a folder means
``<folder>/model_info.json``).

What MONAI's ``monai.bundle download`` does not do and this module does (reference: model_zoo.md §3.3):

* the zip's sha256 is checked against the index **before anything is extracted**; a mismatch leaves the target
  folder untouched;
* versions are ordered numerically (``0.5.10 > 0.5.9``), and without ``--version`` the newest version whose
  ``monai_version`` is not newer than the installed MONAI is chosen;
* plain local paths work, and a server that does not answer fails after ``timeout`` seconds with a clear message;
* the archive is checked before extraction (one top folder named after the bundle; no absolute paths, no ``..``,
  no symbolic links leaving the folder), extracted into a temporary folder next to the target and renamed into
  place; an existing copy is replaced only after the new one is complete.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import http.client
import json
import os
import posixpath
import re
import secrets
import shutil
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from tlk_components.utils.errors import TLKError
from tlk_components.zoo.metadata import parse_version

__all__ = [
    "DEFAULT_TIMEOUT",
    "DownloadError",
    "check_archive",
    "download_bundle",
    "download_cmd",
    "extract_bundle",
    "index_entries",
    "list_index",
    "read_index",
    "select_entry",
]

DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 20
_KEY = re.compile(r"^(.+)_v(\d.*)$")


class DownloadError(TLKError):
    """An index or bundle archive could not be read, verified or extracted; the message says what to do."""


# --------------------------------------------------------------------------------------------------------------
# reading URLs and paths


def _to_url(location: str | os.PathLike) -> str:
    """``http(s)://`` and ``file://`` stay; anything else is a local path (a folder means its model_info.json)."""
    text = str(location)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        return text
    p = Path(text).expanduser()
    if p.is_dir():
        p = p / "model_info.json"
    return p.resolve().as_uri()


def _local_path(url: str) -> Path:
    parsed = urllib.parse.urlparse(url)
    return Path(urllib.request.url2pathname(parsed.path))


@contextlib.contextmanager
def _open(url: str, timeout: float, what: str) -> Iterator[IO[bytes]]:
    """Open ``url`` for reading; every failure becomes a :class:`DownloadError` naming the URL and the fix."""
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme == "file":
        path = _local_path(url)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise DownloadError(f"{what} {path} does not exist; check the path (or the index's 'source')") from None
        except (IsADirectoryError, PermissionError) as e:
            raise DownloadError(f"{what} {path} cannot be read ({e.strerror})") from None
        with f:
            yield f
        return
    if scheme not in ("http", "https"):
        raise DownloadError(f"{what} {url}: unsupported URL scheme {scheme!r}; use http(s)://, file:// or a plain path")
    try:
        resp = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - scheme checked above
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{what} {url}: HTTP {e.code} {e.reason}; check the address") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise DownloadError(_timeout_message(what, url, timeout)) from None
        raise DownloadError(f"{what} {url}: cannot connect ({e.reason}); check the address and your network") from None
    except TimeoutError:
        raise DownloadError(_timeout_message(what, url, timeout)) from None
    except (http.client.HTTPException, ConnectionError) as e:
        raise DownloadError(f"{what} {url}: the server broke the connection ({type(e).__name__}: {e})") from None
    with resp:
        yield resp


def _timeout_message(what: str, url: str, timeout: float) -> str:
    return (
        f"{what} {url}: the server did not answer within {timeout:g} s; check that it is running and reachable, "
        "or pass a longer --timeout"
    )


def _read_all(url: str, timeout: float, what: str) -> bytes:
    with _open(url, timeout, what) as f:
        try:
            return f.read()
        except TimeoutError:
            raise DownloadError(_timeout_message(what, url, timeout)) from None
        except (http.client.HTTPException, ConnectionError) as e:
            raise DownloadError(f"{what} {url}: the transfer was cut off ({type(e).__name__}); try again") from None


# --------------------------------------------------------------------------------------------------------------
# the index


def read_index(index: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT) -> tuple[dict[str, Any], str]:
    """Fetch and parse an index; returns ``(index, index_url)`` (the URL resolves relative sources).

    Raises:
        DownloadError: unreachable, time-out, not JSON, or not a JSON object.
    """
    url = _to_url(index)
    data = _read_all(url, timeout, "index")
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


def _version_key(v: str) -> tuple[int, ...]:
    try:
        return parse_version(v)
    except ValueError:
        return (-1,)


def _installed_monai() -> str:
    import monai

    return str(monai.__version__)


def _release(v: str) -> tuple[int, ...]:
    """Leading numeric part of a version (``1.6.1rc1+abc`` -> (1, 6, 1))."""
    m = re.match(r"^\d+(\.\d+)*", str(v).strip())
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()


def _compatible(entry: dict[str, Any], monai_version: str) -> bool:
    need = _release(entry.get("monai_version", ""))
    return not need or need <= _release(monai_version)


def select_entry(
    entries: dict[str, dict[str, dict[str, Any]]],
    name: str,
    version: str | None = None,
    monai_version: str | None = None,
) -> dict[str, Any]:
    """Pick the entry to download: ``version`` when given, else the newest compatible with ``monai_version``.

    Args:
        entries: output of :func:`index_entries`.
        name: bundle name.
        version: exact version, or None for the newest compatible one (numeric ordering: 0.5.10 > 0.5.9).
        monai_version: MONAI version to be compatible with (default: the installed one).

    Raises:
        DownloadError: unknown name (lists the known ones, and the closest spelling), unknown version (lists the
            existing ones), or no version compatible with this MONAI.
    """
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DownloadError(f"bundle {name!r} is not in the index; it offers {sorted(entries)}.{hint}")
    versions = entries[name]
    ordered = sorted(versions, key=_version_key, reverse=True)
    if version is not None:
        version = str(version)
        if version not in versions:
            raise DownloadError(f"{name} has no version {version!r} in the index; existing versions: {ordered}")
        return {"name": name, "version": version, **versions[version]}
    monai_version = monai_version or _installed_monai()
    for v in ordered:
        if _version_key(v) != (-1,) and _compatible(versions[v], monai_version):
            return {"name": name, "version": v, **versions[v]}
    needs = ", ".join(f"{v} (MONAI {versions[v].get('monai_version', '?')})" for v in ordered)
    raise DownloadError(
        f"no version of {name} works with the installed MONAI {monai_version}: {needs}; upgrade MONAI or pass "
        "--version to take one anyway"
    )


def list_index(index: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT) -> str:
    """The bundles and versions an index offers, newest first; ``*`` marks the version ``download`` would pick.

    Args:
        index: URL (``http(s)://``, ``file://``) or path of a ``model_info.json`` (or of its folder).
        timeout: seconds to wait for a server (default 30).
    """
    data, url = read_index(index, timeout)
    entries = index_entries(data)
    if not entries:
        return f"index {url} lists no bundles"
    monai_version = _installed_monai()
    lines = [f"index {url} (installed MONAI {monai_version}; * = what `download` picks)"]
    for name in sorted(entries):
        try:
            pick = select_entry(entries, name, monai_version=monai_version)["version"]
        except DownloadError:
            pick = None
        parts = []
        for v in sorted(entries[name], key=_version_key, reverse=True):
            need = entries[name][v].get("monai_version", "?")
            parts.append(f"{v}{'*' if v == pick else ''} (MONAI {need})")
        lines.append(f"{name:40s} {', '.join(parts)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# archives


def check_archive(zf: zipfile.ZipFile, name: str) -> None:
    """Refuse an archive that would write outside ``<target>/<name>``.

    Every member must be a relative path below the single top folder ``name/`` without ``..``; a symbolic link
    must be relative and point inside that folder.

    Raises:
        DownloadError: listing every offending member.
    """
    problems = []
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
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "replace")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(norm), target))
            if (
                target.startswith("/")
                or resolved == ".."
                or resolved.startswith("../")
                or resolved.split("/")[0] != name
            ):
                problems.append(f"{n!r}: symbolic link to {target!r} leaves the bundle folder")
    if problems:
        raise DownloadError(
            f"refusing to extract the archive of {name}: {len(problems)} unsafe member(s) (a bundle zip holds "
            f"regular files under one folder {name + '/'!r})\n" + "\n".join(f"  - {p}" for p in problems)
        )


def _extract_members(zf: zipfile.ZipFile, dest: Path) -> None:
    """Write the (already checked) members under ``dest``; files get the default permissions (+x if archived so)."""
    links, made = [], set()
    for info in zf.infolist():
        target = dest / info.filename.replace("\\", "/")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            links.append((target, zf.read(info).decode("utf-8")))
            continue
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
    for path, link_target in links:  # last, so no file is ever written through a link
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(link_target, path)


def extract_bundle(
    archive: str | os.PathLike | IO[bytes],
    dir: str | os.PathLike,
    name: str,
    expected_version: str | None = None,
    label: str | None = None,
) -> Path:
    """Extract a bundle zip into ``dir/name`` atomically (checks first; temp folder in ``dir``, then rename).

    Args:
        archive: zip path or open binary file.
        dir: parent folder of the bundle (created).
        name: bundle name = the archive's top folder.
        expected_version: when given, ``configs/metadata.json``'s version must equal it.
        label: how the archive is named in messages (default: its path).

    Returns:
        ``dir/name``.

    Raises:
        DownloadError: not a zip / truncated / damaged, unsafe members, or not the expected bundle. The previous
            ``dir/name`` (if any) is left as it was.
    """
    dir_ = Path(dir)
    dir_.mkdir(parents=True, exist_ok=True)
    final = dir_ / name
    label = label or str(getattr(archive, "name", archive))
    tmp = Path(tempfile.mkdtemp(dir=dir_, prefix=f".{name}.extract-"))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                check_archive(zf, name)
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
            try:
                got = json.loads(meta_p.read_text(encoding="utf-8")).get("version")
            except (json.JSONDecodeError, UnicodeDecodeError):
                got = None
            if got != expected_version:
                raise DownloadError(
                    f"archive {label}: metadata.json says version {got!r} but the index says {expected_version!r}; "
                    "the index is inconsistent, re-publish with `tlk package`"
                )
        old = None
        if final.exists() or final.is_symlink():
            old = dir_ / f".{name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(final, old)
        try:
            os.rename(tmp / name, final)
        except BaseException:
            if old is not None:
                os.rename(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------------------------------
# download


def _fetch_verified(url: str, dest_dir: Path, timeout: float, label: str) -> tuple[IO[bytes], str]:
    """Open the archive at ``url`` and check its sha256; returns an open file positioned at 0, and the digest.

    Local files are hashed where they are (no copy); remote ones are streamed into a temporary file in ``dest_dir``
    (deleted when the returned file is closed).
    """
    h = hashlib.sha256()
    if urllib.parse.urlparse(url).scheme.lower() == "file":
        path = _local_path(url)
        try:
            f = open(path, "rb")  # noqa: SIM115 - returned to the caller
        except FileNotFoundError:
            raise DownloadError(f"archive of {label} {path} does not exist; the index's 'source' is wrong") from None
        while block := f.read(_CHUNK):
            h.update(block)
    else:
        f = tempfile.TemporaryFile(dir=dest_dir)  # noqa: SIM115 - returned to the caller
        try:
            with _open(url, timeout, f"archive of {label}") as src:
                while block := src.read(_CHUNK):
                    h.update(block)
                    f.write(block)
        except TimeoutError:
            f.close()
            raise DownloadError(_timeout_message(f"archive of {label}", url, timeout)) from None
        except (http.client.HTTPException, ConnectionError) as e:
            f.close()
            raise DownloadError(
                f"archive of {label} {url}: the transfer was cut off ({type(e).__name__}); try again"
            ) from None
        except BaseException:
            f.close()
            raise
    f.seek(0)
    return f, h.hexdigest()


def download_bundle(
    name: str,
    index: str | os.PathLike,
    dir: str | os.PathLike,
    version: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download bundle ``name`` listed in ``index`` into ``dir/name``: verify sha256, then extract atomically.

    Args:
        name: bundle name (as in the index).
        index: URL (``http(s)://``, ``file://``) or path of the index (or of its folder).
        dir: parent folder for the bundle (created); an existing ``dir/name`` is replaced only after success.
        version: exact version; default the newest compatible with the installed MONAI (numeric ordering).
        timeout: seconds to wait for a server to answer (default 30).

    Returns:
        The bundle folder ``dir/name``, ready for ``python -m monai.bundle run`` from any directory.

    Raises:
        DownloadError: unknown name/version (lists what exists), unreachable/silent server, index not JSON,
            entry without sha256, checksum mismatch (nothing extracted), damaged or unsafe archive.
    """
    data, index_url = read_index(index, timeout)
    entry = select_entry(index_entries(data), str(name), None if version is None else str(version))
    label = f"{entry['name']} {entry['version']}"
    expected = str(entry.get("sha256") or "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise DownloadError(
            f"index entry {label} has no valid 'sha256' (got {entry.get('sha256')!r}); refusing to install an "
            "unverified archive. Re-publish it with `tlk package`."
        )
    source = entry.get("source")
    if not source:
        raise DownloadError(f"index entry {label} has no 'source' URL")
    url = urllib.parse.urljoin(index_url, str(source))
    dest = Path(dir)
    dest.mkdir(parents=True, exist_ok=True)
    f, digest = _fetch_verified(url, dest, timeout, label)
    with f:
        if digest != expected:
            raise DownloadError(
                f"sha256 of {url} is {digest}, but the index says {expected}: the file is corrupt or was replaced. "
                f"Nothing was extracted{' and the existing copy was kept' if (dest / entry['name']).exists() else ''}."
            )
        return extract_bundle(f, dest, entry["name"], expected_version=entry["version"], label=url)


def download_cmd(name: str, index: str, dir: str, version: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Download bundle NAME from the zoo index INDEX into DIR/NAME (sha256-verified, extracted atomically).

    Args:
        name: bundle name (``tlk list --index INDEX`` shows them).
        index: http(s)://, file:// URL or plain path of model_info.json (or its folder).
        dir: parent folder of the bundle.
        version: exact version (quote it: --version 0.1.0); default the newest compatible with the installed MONAI.
        timeout: seconds to wait for a server (default 30).
    """
    path = download_bundle(name, index, dir, version=None if version is None else str(version), timeout=float(timeout))
    meta = json.loads((path / "configs" / "metadata.json").read_text(encoding="utf-8"))
    return (
        f"downloaded {name} {meta.get('version')} (sha256 verified) into {path}\n"
        f"run it: python -m monai.bundle run --config_file {path / 'configs' / 'inference.json'} "
        "--input_dir DIR --output_dir OUT"
    )
