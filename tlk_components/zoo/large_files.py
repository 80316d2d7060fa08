# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""``large_files.yml``: files a bundle downloads instead of carrying (trained weights), each checked by its hash.

The format is MONAI's (model-zoo ``CONTRIBUTING.md``; ``monai.bundle.download_large_files``), in
``large_files.yml``, ``large_files.yaml`` or ``large_files.json`` at the top of the bundle::

    large_files:
    - path: "models/model.pt"                       # relative to the bundle; must stay inside it
      url: "https://zoo.example.org/mnist_v0.1.0.pt"  # http(s)://, file://, or a path relative to this file
      hash_val: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
      hash_type: "sha256"                           # md5, sha1, sha256 or sha512

``large_files: []`` means "nothing to download". What this module does that MONAI does not:

* every problem of the file (YAML syntax, missing or unknown key, unknown ``hash_type``, a ``hash_val`` of the
  wrong length, a path that leaves the bundle, the same path twice) is one error naming the file and the entry;
* an entry without ``hash_val`` is refused unless asked for (``allow_unverified=True``; MONAI downloads it
  unchecked);
* a file is downloaded into a temporary file next to its target and checked **before** it is renamed into place,
  so a corrupt or replaced download leaves nothing behind and the previous file stays as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tlk_components.zoo.transport import DEFAULT_TIMEOUT, DownloadError, copy_url

__all__ = [
    "HASH_TYPES",
    "LARGE_FILES_NAMES",
    "LargeFile",
    "LargeFilesError",
    "check_large_files",
    "fetch_large_files",
    "fetch_large_files_cmd",
    "file_hash",
    "find_large_files_list",
    "read_large_files",
]

#: File names looked for at the top of a bundle, in MONAI's order.
LARGE_FILES_NAMES: tuple[str, ...] = ("large_files.yml", "large_files.yaml", "large_files.json")
#: Accepted ``hash_type`` values -> length of their hex digest.
HASH_TYPES: dict[str, int] = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
_KEYS = ("path", "url", "hash_val", "hash_type")
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class LargeFilesError(DownloadError):
    """A ``large_files.yml`` is malformed, or a file it lists could not be fetched or does not match its hash."""


@dataclass(frozen=True)
class LargeFile:
    """One entry of a ``large_files.yml``.

    Attributes:
        path: where the file goes, relative to the bundle (POSIX separators, normalised: ``models/model.pt``).
        url: where it comes from; a relative URL is already resolved against the list file (``file://...``).
        hash_val: lower-case hex digest, or None when the entry gives none.
        hash_type: ``md5``/``sha1``/``sha256``/``sha512`` (inferred from the digest's length when not given), or
            None without ``hash_val``.
        source: the list file.
        position: index of the entry in the list (for messages).
    """

    path: str
    url: str
    hash_val: str | None
    hash_type: str | None
    source: Path
    position: int

    @property
    def where(self) -> str:
        """``"<list file>: large_files[<i>] (<path>)"``, how messages name the entry."""
        return f"{self.source}: large_files[{self.position}] ({self.path})"


def find_large_files_list(bundle_dir: str | os.PathLike) -> Path | None:
    """The bundle's ``large_files.{yml,yaml,json}``, or None when it has none.

    Raises:
        LargeFilesError: more than one of them exists (which one counts would be a guess).
    """
    root = Path(bundle_dir)
    found = [root / n for n in LARGE_FILES_NAMES if (root / n).is_file()]
    if len(found) > 1:
        raise LargeFilesError(
            f"{root}: found {', '.join(p.name for p in found)}; keep one list of large files and delete the others"
        )
    return found[0] if found else None


def _load(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LargeFilesError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise LargeFilesError(
                f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); expected "
                '{"large_files": [{"path": ..., "url": ..., "hash_val": ..., "hash_type": ...}]}'
            ) from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise LargeFilesError(
            f"{path}: not valid YAML ({problem}{where}); expected 'large_files:' followed by a list of entries "
            "'- path: ...', '  url: ...', '  hash_val: ...', '  hash_type: ...'"
        ) from None


def _check_path(root: Path, rel: Any, at: str) -> str:
    """The normalised relative path of an entry; raises when it is not a path inside the bundle."""
    if not isinstance(rel, str) or not rel.strip():
        raise LargeFilesError(f"{at}: 'path' must be a non-empty string relative to the bundle, e.g. models/model.pt")
    if "\\" in rel:
        raise LargeFilesError(f"{at}: path {rel!r} uses '\\'; write it with '/' (models/model.pt)")
    if PurePosixPath(rel).is_absolute() or re.match(r"^[A-Za-z]:", rel):
        raise LargeFilesError(f"{at}: path {rel!r} is absolute; give it relative to the bundle (models/model.pt)")
    if rel.endswith("/"):
        raise LargeFilesError(f"{at}: path {rel!r} names a folder; name the file (models/model.pt)")
    norm = posixpath.normpath(rel)
    if norm in (".", "..") or norm.startswith("../"):
        raise LargeFilesError(f"{at}: path {rel!r} leaves the bundle folder; files must stay inside it")
    resolved_root = root.resolve()
    if not (root / norm).resolve().is_relative_to(resolved_root):
        raise LargeFilesError(
            f"{at}: path {rel!r} leads outside the bundle folder (through a symbolic link); files must stay inside it"
        )
    return norm


def _check_url(source: Path, url: Any, at: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise LargeFilesError(f"{at}: 'url' must be a non-empty string (http(s)://, file:// or a relative path)")
    url = url.strip()
    m = _URL_SCHEME.match(url)
    if m is None:  # a path, relative to the list file
        return (source.parent / urllib.parse.unquote(url)).resolve().as_uri()
    if m.group(1).lower() not in ("http", "https", "file"):
        raise LargeFilesError(
            f"{at}: url {url!r} has the unsupported scheme {m.group(1)!r}; use http(s)://, file:// or a path "
            "relative to the list file"
        )
    return url


def _check_hash(hash_val: Any, hash_type: Any, at: str) -> tuple[str | None, str | None]:
    if hash_val is not None and not isinstance(hash_val, str):
        raise LargeFilesError(
            f"{at}: hash_val {hash_val!r} is a {type(hash_val).__name__}; quote it so it stays a string of hex digits"
        )
    if hash_type is not None and not isinstance(hash_type, str):
        raise LargeFilesError(f"{at}: hash_type must be one of {', '.join(HASH_TYPES)}, got {hash_type!r}")
    value = (hash_val or "").strip().lower() or None
    kind = (hash_type or "").strip().lower() or None
    if kind is not None and kind not in HASH_TYPES:
        raise LargeFilesError(f"{at}: unknown hash_type {hash_type!r}; expected one of {', '.join(HASH_TYPES)}")
    if value is None:
        return None, kind
    if not re.fullmatch(r"[0-9a-f]+", value):
        raise LargeFilesError(f"{at}: hash_val {hash_val!r} is not a hex digest (0-9, a-f)")
    if kind is None:
        kind = next((k for k, n in HASH_TYPES.items() if n == len(value)), None)
        if kind is None:
            raise LargeFilesError(
                f"{at}: hash_val has {len(value)} hex digits, which matches no hash type; add hash_type "
                f"({', '.join(f'{k}: {n} digits' for k, n in HASH_TYPES.items())})"
            )
    elif len(value) != HASH_TYPES[kind]:
        raise LargeFilesError(
            f"{at}: hash_val has {len(value)} hex digits but a {kind} digest has {HASH_TYPES[kind]}; fix hash_val "
            "or hash_type"
        )
    return value, kind


def read_large_files(bundle_dir: str | os.PathLike) -> list[LargeFile]:
    """The entries of a bundle's ``large_files.{yml,yaml,json}`` (``[]`` when it has none or lists nothing).

    Args:
        bundle_dir: the bundle folder.

    Returns:
        One :class:`LargeFile` per entry, in file order.

    Raises:
        LargeFilesError: naming the file and the entry: invalid YAML/JSON, no top-level ``large_files`` list,
            an entry without ``path`` or ``url`` or with an unknown key, an unsupported URL scheme, an unknown
            ``hash_type`` or a ``hash_val`` of the wrong length, a path that is absolute or leaves the bundle, or
            the same path listed twice.
    """
    root = Path(bundle_dir)
    source = find_large_files_list(root)
    if source is None:
        return []
    data = _load(source)
    expected = "a top-level key 'large_files' holding a list of entries with path, url, hash_val, hash_type"
    if not isinstance(data, dict) or "large_files" not in data:
        got = "an empty file" if data is None else f"{type(data).__name__}"
        if isinstance(data, dict):
            got = f"keys {sorted(map(str, data))}"
        raise LargeFilesError(f"{source}: expected {expected} ('large_files: []' when there are none); got {got}")
    extra = sorted(str(k) for k in data if k != "large_files")
    if extra:
        raise LargeFilesError(f"{source}: unexpected top-level key(s) {extra}; the file holds only 'large_files'")
    items = data["large_files"]
    if items is None:
        items = []
    if not isinstance(items, list):
        raise LargeFilesError(f"{source}: 'large_files' must be a list of entries, got {type(items).__name__}")
    out: list[LargeFile] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        at = f"{source}: large_files[{i}]"
        if not isinstance(item, dict):
            raise LargeFilesError(f"{at}: expected a mapping with 'path' and 'url', got {type(item).__name__}")
        unknown = sorted(str(k) for k in item if k not in _KEYS)
        if unknown:
            raise LargeFilesError(f"{at}: unknown key(s) {unknown}; an entry has {', '.join(_KEYS)}")
        for key in ("path", "url"):
            if key not in item:
                raise LargeFilesError(f"{at}: missing key '{key}' (every entry needs path and url)")
        path = _check_path(root, item["path"], at)
        if path in seen:
            raise LargeFilesError(
                f"{at}: path {path!r} is already listed at large_files[{seen[path]}]; list each file once"
            )
        seen[path] = i
        url = _check_url(source, item["url"], f"{at} ({path})")
        hash_val, hash_type = _check_hash(item.get("hash_val"), item.get("hash_type"), f"{at} ({path})")
        out.append(LargeFile(path, url, hash_val, hash_type, source, i))
    return out


def file_hash(path: str | os.PathLike, hash_type: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file (``hash_type``: one of :data:`HASH_TYPES`), read in 1 MiB chunks."""
    h = hashlib.new(hash_type)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_large_files(bundle_dir: str | os.PathLike, require_present: bool = True) -> list[str]:
    """Problems with a bundle's large files, one line each (empty when all is well); never raises for them.

    For ``tlk verify``: a malformed list (the error of :func:`read_large_files`), a listed file that is absent
    (when ``require_present``), and a present file whose hash differs from ``hash_val``. An entry without
    ``hash_val`` is not a problem here (``fetch_large_files`` refuses to download it without
    ``allow_unverified``).

    Args:
        bundle_dir: the bundle folder.
        require_present: report listed files that are not there yet (False: only check the ones present, e.g.
            before packaging a bundle whose weights are downloaded on install).

    Returns:
        One line per problem, naming the file and the fix.
    """
    try:
        entries = read_large_files(bundle_dir)
    except LargeFilesError as e:
        return [str(e)]
    root = Path(bundle_dir)
    problems = []
    for lf in entries:
        target = root / lf.path
        if not target.is_file():
            if require_present:
                problems.append(
                    f"{lf.path}: listed in {lf.source.name} but absent; fetch it with `tlk download_large_files {root}`"
                )
            continue
        if lf.hash_val is not None and lf.hash_type is not None:
            got = file_hash(target, lf.hash_type)
            if got != lf.hash_val:
                problems.append(
                    f"{lf.path}: {lf.hash_type} is {got} but {lf.source.name} says {lf.hash_val}; fetch it again "
                    f"(`tlk download_large_files {root} --force`) or, if this file is the new release, update hash_val"
                )
    return problems


def _fetch_one(root: Path, lf: LargeFile, timeout: float) -> Path:
    """Download one entry into a temporary file next to its target; check the hash; then rename into place."""
    target = root / lf.path
    if target.exists() and not target.is_file():
        raise LargeFilesError(f"{lf.where}: {target} exists and is not a file; remove it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        h = hashlib.new(lf.hash_type) if lf.hash_val is not None and lf.hash_type is not None else None
        with os.fdopen(fd, "wb") as f:
            copy_url(lf.url, f, timeout, f"large file {lf.path} of {root.name}", hashes=[h] if h else [])
            f.flush()
            os.fsync(f.fileno())
        if h is not None and h.hexdigest() != lf.hash_val:
            kept = f"; the existing {lf.path} was kept" if target.is_file() else ""
            raise LargeFilesError(
                f"{lf.where}: {lf.url} has {lf.hash_type} {h.hexdigest()}, expected {lf.hash_val} (hash_val): the "
                f"download is corrupt or the file was replaced. Nothing was written{kept}. Fix the url or hash_val "
                f"in {lf.source.name}."
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def fetch_large_files(
    bundle_dir: str | os.PathLike,
    timeout: float = DEFAULT_TIMEOUT,
    force: bool = False,
    allow_unverified: bool = False,
) -> list[Path]:
    """Download the files a bundle's ``large_files.yml`` lists that are missing or do not match their hash.

    Each file is streamed into a temporary file in its target folder, its hash is checked, and only then it is
    renamed into place: a failed or mismatched download leaves nothing behind and keeps the previous file.

    Args:
        bundle_dir: the bundle folder.
        timeout: seconds to wait for a server to answer (default 30).
        force: download every listed file again, even those present with the right hash.
        allow_unverified: download entries that have no ``hash_val`` (default: refused, since nothing could tell
            a corrupt or replaced file from the real one). A present file without ``hash_val`` is kept unless
            ``force``.

    Returns:
        The files written (absolute paths inside ``bundle_dir``), in list order; ``[]`` when all were present.

    Raises:
        LargeFilesError: malformed list (see :func:`read_large_files`), entries to download without ``hash_val``
            (all listed; nothing is downloaded), a hash mismatch (names the url, the expected and the computed
            digest), or a download failure (missing file, unreachable or silent server, HTTP error).
    """
    root = Path(bundle_dir)
    todo = []
    for lf in read_large_files(root):
        target = root / lf.path
        if force or not target.is_file():
            todo.append(lf)
        elif lf.hash_val is not None and lf.hash_type is not None and file_hash(target, lf.hash_type) != lf.hash_val:
            todo.append(lf)
    unverified = [lf for lf in todo if lf.hash_val is None]
    if unverified and not allow_unverified:
        names = ", ".join(f"large_files[{lf.position}] ({lf.path})" for lf in unverified)
        raise LargeFilesError(
            f"{unverified[0].source}: {names} {'have' if len(unverified) > 1 else 'has'} no hash_val, so a corrupt or replaced download would go unnoticed; "
            "add hash_val and hash_type (e.g. the output of `sha256sum <file>` and 'sha256'), or pass "
            "allow_unverified=True (--allow_unverified) to download without a check. Nothing was downloaded."
        )
    return [_fetch_one(root, lf, timeout) for lf in todo]


def fetch_large_files_cmd(
    bundle: str,
    force: bool = False,
    allow_unverified: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Download the files BUNDLE's large_files.yml lists (missing or hash-mismatched ones), hash-checked.

    Args:
        bundle: bundle name (see ``tlk list``) or bundle folder.
        force: download every listed file again.
        allow_unverified: also download entries that have no hash_val.
        timeout: seconds to wait for a server (default 30).
    """
    from tlk_components.zoo.registry import find_bundle  # noqa: PLC0415 - keeps this module free of the registry

    path = find_bundle(bundle)
    entries = read_large_files(path)
    if not entries:
        listed = find_large_files_list(path)
        return f"{path.name}: {listed.name if listed else 'no large_files.yml'} lists no files; nothing to download"
    got = fetch_large_files(path, timeout=float(timeout), force=bool(force), allow_unverified=bool(allow_unverified))
    lines = [f"{path.name}: {len(entries)} large file(s) listed, {len(got)} downloaded"]
    lines += [f"  {p.relative_to(path)}" for p in got]
    return "\n".join(lines)
