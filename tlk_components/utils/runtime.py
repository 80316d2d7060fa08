# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Thread count and device selection, called from every bundle's ``initialize``.

On small machines torch's default intra-op thread count oversubscribes the cores (observed: a small MLP
epoch 13x slower on a 2-core machine). We set it deliberately.
"""

from __future__ import annotations

import os

import torch

from tlk_components.utils.errors import ConfigError

__all__ = ["configure_threads", "resolve_device"]


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
        num_threads: >= 1, or None / 0 for the default.

    Returns:
        The thread count now in effect.
    """
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
