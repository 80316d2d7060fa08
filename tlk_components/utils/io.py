# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Atomic writes (temporary file in the same folder, then ``os.replace``) and safe weight loading.

A crash or Ctrl-C while writing never leaves a half-written file under the final name, and never
destroys the previous version of that file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from tlk_components.utils.errors import ConfigError, DatasetError

__all__ = [
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "ensure_output_dir",
    "load_state_dict_checked",
    "load_weights",
    "move_aside",
    "sha256_file",
]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-byte blocks (default 1 MiB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def ensure_output_dir(path: str | os.PathLike) -> str:
    """Create the output folder ``path`` (and its parents) and check that files can be written into it.

    Called first in each bundle's ``initialize`` so that a bad ``--output_dir`` fails at once with a clear
    message, not after training with a raw ``OSError``.

    Args:
        path: the output folder.

    Returns:
        ``path`` as a string (unchanged).

    Raises:
        ConfigError: ``path`` (or a parent) is a file, cannot be created, or is not writable; the message names the
            path and the fix.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"output_dir {p} is a file, not a folder; pass --output_dir with a folder path")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(
            f"output_dir {p} cannot be created: a parent of it is a file; pass --output_dir with a folder path"
        ) from None
    except OSError as e:
        raise ConfigError(
            f"output_dir {p} cannot be created ({type(e).__name__}: {e.strerror or e}); pass --output_dir with a "
            "folder you can write to"
        ) from None
    try:
        fd, tmp = tempfile.mkstemp(dir=p, prefix=".tlk_write_test.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ConfigError(
            f"output_dir {p} is not writable ({type(e).__name__}: {e.strerror or e}); pass --output_dir with a "
            "folder you can write to, or fix its permissions"
        ) from None
    return str(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; parent folders are created. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 4) -> Path:
    """Write ``obj`` as pretty JSON (keys in insertion order, trailing newline) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` into memory, then write the bytes atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``torch.load(..., weights_only=True)``.

    Raises:
        DatasetError: when the file is missing, truncated or not a torch checkpoint, naming the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{path}: checkpoint not found; train the bundle first (training writes it), or pass --ckpt_dir with "
            f"the folder that holds {path.name}"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, pickle.UnpicklingError) as e:
        raise DatasetError(
            f"{path}: not a readable torch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it may be truncated or was saved with pickled objects. Re-export it with torch.save(state_dict)."
        ) from None


def load_state_dict_checked(obj: Any, state: Any, path: str | os.PathLike, name: str = "model", fix: str = "") -> Any:
    """``obj.load_state_dict(state)``, with a clear error when the saved state does not fit ``obj``.

    A network whose architecture changed since ``path`` was written raises a long size-mismatch traceback from
    deep in torch; this names the file, the first mismatched or missing keys, and the fix.

    Args:
        obj: a module, optimizer or scheduler.
        state: its saved ``state_dict``.
        path: the checkpoint file (for the message).
        name: what ``obj`` is (``model``, ``optimizer``...), for the message.
        fix: what to do about it; default: check the configs match the ones that wrote the file.

    Returns:
        What ``load_state_dict`` returns.

    Raises:
        ConfigError: the state does not fit ``obj``.
    """
    try:
        return obj.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        details: list[str] = []
        for ln in lines[1:] or lines:
            details.extend(part.strip().rstrip(".") for part in ln.split("\t") if part.strip())
        shown = "; ".join(details[:4]) + (f"; ... ({len(details) - 4} more)" if len(details) > 4 else "")
        fix = fix or "Use the configs (network settings) the file was written with, or another checkpoint (--ckpt_dir)"
        raise ConfigError(
            f"{path}: the saved {name} does not fit the {name} this config builds (the architecture or "
            f"settings changed since it was written): {shown}. {fix}"
        ) from None


def move_aside(path: str | os.PathLike) -> Path | None:
    """Rename an existing file to ``<name>.bak-<UTC timestamp>`` (never overwriting another backup).

    Args:
        path: the file to keep.

    Returns:
        The new path, or None when ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.bak-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    return target
