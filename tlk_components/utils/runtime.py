# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Thread count, device selection and command-line checks, called from every bundle's ``initialize``.

On small machines torch's default intra-op thread count oversubscribes the cores (observed: a small MLP
epoch 13x slower on a 2-core machine). We set it deliberately.

:func:`configure_threads` (the first item of every bundle's ``initialize``) also

* checks the ``--key value`` overrides of ``python -m monai.bundle run`` against the configs' keys
  (:func:`check_overrides`: a typo such as ``--epochz 3`` is an error naming the closest key, and ``--device`` goes
  through :func:`resolve_device`), and
* installs :func:`install_error_hook`, so that a clear :class:`~tlk_components.utils.errors.TLKError` raised inside a
  config expression is printed last, not in the middle of MONAI's "Failed to evaluate ConfigExpression" traceback.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from tlk_components.utils.errors import ConfigError, TLKError

__all__ = [
    "check_overrides",
    "command_line_overrides",
    "configure_threads",
    "install_error_hook",
    "resolve_device",
    "run_fingerprint",
]

# arguments of ``monai.bundle.run`` / ``ConfigWorkflow`` that are not config keys
MONAI_RUN_ARGS = frozenset(
    {
        "config_file",
        "meta_file",
        "logging_file",
        "args_file",
        "tracking",
        "run_id",
        "init_id",
        "final_id",
        "workflow_type",
        "workflow_name",
        "properties_path",
    }
)


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``num_threads``.

    The default is env ``TLK_NUM_THREADS``, else the usable cores divided by the processes torchrun started on this
    machine (``LOCAL_WORLD_SIZE``).

    Inter-op threads are set to 1 once (torch forbids changing them after the first parallel op).

    Args:
        num_threads: >= 1, or None (the bundles' ``"num_threads": null``) / 0 for the default. This is the one
            place the default is decided.

    Returns:
        The thread count now in effect.

    Raises:
        ConfigError: a bad ``num_threads``; an unknown ``--key`` or a bad ``--device`` on the command line.
    """
    install_error_hook()
    check_overrides()
    if num_threads in (None, 0):
        env = os.environ.get("TLK_NUM_THREADS")
        # several processes on one machine (torchrun) share its cores
        local_procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        num_threads = int(env) if env else max(1, _available_cores() // local_procs)
    if int(num_threads) < 1:
        raise ConfigError(f"num_threads={num_threads}: expected an integer >= 1 (or 0 for the number of cores)")
    torch.set_num_threads(int(num_threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set, or parallel work already started
    return torch.get_num_threads()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a device.

    Raises:
        ConfigError: for an unknown string, or CUDA requested on a machine without it.
    """
    if isinstance(device, torch.device):
        return device
    d = str(device).strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(d)
    except RuntimeError:
        raise ConfigError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: CUDA is not available on this machine; use --device cpu (or auto)")
    return dev


def command_line_overrides(argv: Sequence[str] | None = None) -> dict[str, str] | None:
    """The ``--key value`` pairs of a ``python -m monai.bundle run ...`` command line (values as strings).

    Args:
        argv: default ``sys.argv``.

    Returns:
        ``{key: value}`` (``--flag`` without a value maps to ``"True"``), or None when ``argv`` is not a
        ``monai.bundle run`` command line with ``--config_file`` (e.g. a bundle run from Python code).
    """
    argv = list(sys.argv if argv is None else argv)
    if "run" not in argv[1:3]:
        return None
    out: dict[str, str] = {}
    i = 1
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--") and len(tok) > 2:
            if "=" in tok:
                key, value = tok[2:].split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                key, value = tok[2:], argv[i + 1]
                i += 1
            else:
                key, value = tok[2:], "True"
            out[key] = value
        i += 1
    return out if "config_file" in out else None


def _config_files(value: str) -> list[Path]:
    text = value.strip()
    if text.startswith(("[", "(")):
        try:
            files = ast.literal_eval(text)  # JSON and python-style lists (as fire passes them) alike
        except (ValueError, SyntaxError):
            return []
        return [Path(str(f)) for f in files] if isinstance(files, list | tuple) else []
    return [Path(text)]


def _config_keys(files: Sequence[Path]) -> set[str] | None:
    if not files:
        return None
    keys: set[str] = set()
    for f in files:
        if f.suffix.lower() != ".json" or not f.is_file():
            return None  # YAML or a missing file: MONAI reports it; nothing to check against
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(obj, dict):
            return None
        keys.update(str(k).split("#", 1)[0] for k in obj)
    return keys


def check_overrides(argv: Sequence[str] | None = None) -> None:
    """Refuse command-line overrides that name no key of the configs, and check ``--device``.

    MONAI's ``run`` adds every ``--key value`` to the config, so a typo (``--epochz 3``) is silently ignored and
    the run uses the default. The known keys are the top-level keys of the ``--config_file`` files (nested ids
    ``a#b`` are checked by ``a``), ``_meta_``, and ``monai.bundle.run``'s own arguments.
    Does nothing when the process is not a ``python -m monai.bundle run`` command line.

    Args:
        argv: default ``sys.argv``.

    Raises:
        ConfigError: naming the unknown key and the closest known one; or ``--device`` naming a device this
            machine does not have (see :func:`resolve_device`).
    """
    overrides = command_line_overrides(argv)
    if overrides is None:
        return
    keys = _config_keys(_config_files(overrides["config_file"]))
    if keys is None:
        return
    known = keys | MONAI_RUN_ARGS | {"_meta_"}
    for key in overrides:
        top = key.split("#", 1)[0]
        if top in known:
            continue
        close = difflib.get_close_matches(top, sorted(known), n=1, cutoff=0.6)
        hint = f" Did you mean --{close[0]}?" if close else ""
        raise ConfigError(
            f"--{key}: no such key in {overrides['config_file']}; the override would be ignored.{hint} "
            "The keys you can set are the top-level keys of the config files (see the bundle README)."
        )
    if "device" in overrides:
        resolve_device(overrides["device"].strip("'\""))


# overrides that may change between a run and its resumption (item: resume with new --epochs/--learning_rate)
RESUMABLE_OVERRIDES = frozenset(
    {
        "epochs",
        "iterations",
        "resume",
        "learning_rate",
        "device",
        "num_threads",
        "num_workers",
        "val_interval",
        "amp",
        "ckpt_dir",
        "cache",
        "cache_dir",
        "cache_rate",
        "sw_batch_size",
    }
)


# top-level config keys that do not define the run: the workflow's code lists (a bundle update may add a check)
NON_RUN_KEYS = frozenset({"imports", "initialize", "run", "finalize", "_meta_"})


def _key_hashes(path: Path) -> dict[str, str]:
    """``{"<file>#<top-level key>": short hash}`` of a JSON config, leaving out keys that may change on resume."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        obj = None
    if not isinstance(obj, dict):  # YAML or unreadable: the whole file
        try:
            return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]}
        except OSError:
            return {path.name: "unreadable"}
    out = {}
    for key, value in obj.items():
        top = str(key).split("#", 1)[0]
        if top in RESUMABLE_OVERRIDES or top in NON_RUN_KEYS:
            continue
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
        out[f"{path.name}#{key}"] = hashlib.sha256(text.encode()).hexdigest()[:12]
    return out


def run_fingerprint(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """What makes a training run "the same run" for resuming: its config settings and its overrides.

    Recorded in the last checkpoint by :class:`~tlk_components.engines.handlers.checkpoint.AtomicCheckpointSaver` and compared
    by :class:`~tlk_components.engines.handlers.checkpoint.ResumeFromLast`. Left out, because changing them continues the
    same run: the keys in :data:`RESUMABLE_OVERRIDES` (``epochs``, ``learning_rate``, ``device``, ``ckpt_dir`` (a
    moved checkpoint folder) ...), whether given on the command line or edited in the config file; the code lists
    ``imports``/``initialize``/``run``/``finalize``; and ``multi_gpu*`` config files. Paths given as overrides
    (``--dataset_dir``) are made absolute.

    Args:
        argv: default ``sys.argv``.

    Returns:
        ``{"configs": {"<file>#<key>": hash}, "overrides": {key: value}}``, or None when the process is not a
        ``python -m monai.bundle run`` command line.
    """
    overrides = command_line_overrides(argv)
    if overrides is None:
        return None
    configs: dict[str, str] = {}
    for f in _config_files(overrides["config_file"]):
        if not f.name.startswith("multi_gpu"):
            configs.update(_key_hashes(f))
    kept: dict[str, str] = {}
    for key, value in sorted(overrides.items()):
        if key in MONAI_RUN_ARGS or key.split("#", 1)[0] in RESUMABLE_OVERRIDES:
            continue
        if (key.endswith("_dir") or key.endswith("_path")) and value and not value.startswith("$"):
            value = str(Path(value).expanduser().resolve())
        kept[key] = value
    return {"configs": configs, "overrides": kept}


def _tlk_error_in_chain(exc: BaseException | None) -> TLKError | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TLKError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _tlk_excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, *, previous: Any = None
) -> None:
    err = _tlk_error_in_chain(exc)
    if err is None:
        (previous or sys.__excepthook__)(exc_type, exc, tb)
        return
    if os.environ.get("TLK_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"):
        traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
    else:
        print("(set TLK_DEBUG=1 to see the full traceback)", file=sys.stderr)
    print(f"ERROR: {type(err).__name__}: {err}", file=sys.stderr)
    sys.stderr.flush()


def install_error_hook() -> None:
    """Print a :class:`TLKError` raised anywhere in an uncaught exception's chain as the last thing on stderr.

    MONAI wraps an error raised inside a config expression in ``RuntimeError("Failed to evaluate
    ConfigExpression ...")``; the clear message then sits mid-traceback. With this hook the process prints only
    the message (last line: ``ERROR: ConfigError: ...``); with env ``TLK_DEBUG=1`` the full traceback comes first.
    Other exceptions go to the previous hook unchanged. Installing twice is harmless.
    """
    current = sys.excepthook
    if getattr(current, "_tlk_hook", False):
        return

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        _tlk_excepthook(exc_type, exc, tb, previous=current)

    hook._tlk_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook
