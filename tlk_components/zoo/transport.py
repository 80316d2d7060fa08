# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Reading URLs and paths for the zoo's downloads: ``http(s)://``, ``file://`` or a plain path, with a time-out,
every failure a :class:`DownloadError` that names the URL and the fix. Used by :mod:`.download` (indexes, bundle
archives) and :mod:`.large_files` (weights listed in ``large_files.yml``).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from tlk_components.utils.errors import TLKError

__all__ = ["CHUNK", "DEFAULT_TIMEOUT", "DownloadError", "copy_url", "local_path", "read_all", "to_url"]

DEFAULT_TIMEOUT = 30.0
CHUNK = 1 << 20


class DownloadError(TLKError):
    """An index or bundle archive could not be read, verified or extracted; the message says what to do."""


# --------------------------------------------------------------------------------------------------------------
# reading URLs and paths


def to_url(location: str | os.PathLike) -> str:
    """``http(s)://`` and ``file://`` stay; anything else is a local path (a folder means its model_info.json)."""
    text = str(location)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        return text
    p = Path(text).expanduser()
    if p.is_dir():
        p = p / "model_info.json"
    return p.resolve().as_uri()


def local_path(url: str) -> Path:
    """The local path of a ``file://`` URL."""
    parsed = urllib.parse.urlparse(url)
    return Path(urllib.request.url2pathname(parsed.path))


@contextlib.contextmanager
def _open(url: str, timeout: float, what: str) -> Iterator[IO[bytes]]:
    """Open ``url`` for reading; every failure becomes a :class:`DownloadError` naming the URL and the fix."""
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme == "file":
        path = local_path(url)
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


def read_all(url: str, timeout: float, what: str) -> bytes:
    """The whole content of ``url``; every failure a :class:`DownloadError` naming ``what``, the URL and the fix."""
    with _open(url, timeout, what) as f:
        try:
            return f.read()
        except TimeoutError:
            raise DownloadError(_timeout_message(what, url, timeout)) from None
        except (http.client.HTTPException, ConnectionError) as e:
            raise DownloadError(f"{what} {url}: the transfer was cut off ({type(e).__name__}); try again") from None


def copy_url(url: str, dst: IO[bytes], timeout: float, what: str, hashes: Sequence[Any] = ()) -> int:
    """Stream ``url`` into the open file ``dst`` (feeding every hash object in ``hashes``); returns the byte count.

    Raises:
        DownloadError: missing file, unreachable or silent server (after ``timeout`` s), HTTP error, or a transfer
            cut off; the message names ``what`` and the URL.
    """
    n = 0
    with _open(url, timeout, what) as src:
        try:
            while block := src.read(CHUNK):
                for h in hashes:
                    h.update(block)
                dst.write(block)
                n += len(block)
        except TimeoutError:
            raise DownloadError(_timeout_message(what, url, timeout)) from None
        except (http.client.HTTPException, ConnectionError) as e:
            raise DownloadError(f"{what} {url}: the transfer was cut off ({type(e).__name__}); try again") from None
    return n
