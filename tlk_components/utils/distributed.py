# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Process groups for ``multi_gpu_train.json`` under ``torchrun`` (NCCL on GPUs, gloo on CPU), and this process's rank
(:func:`is_rank0`: the one answer to "does this process write files and print?")."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["distributed_device", "init_distributed", "is_rank0", "rank", "sync_batchnorm", "unwrap_model"]


def init_distributed(backend: str = "auto") -> torch.device:
    """Initialise the default process group from torchrun's environment and return this rank's device.

    Args:
        backend: ``"auto"`` (NCCL when CUDA is available, else gloo), ``"nccl"`` or ``"gloo"``.

    Raises:
        RuntimeError: not launched by torchrun (``LOCAL_RANK``/``WORLD_SIZE`` unset), with the command to use.
    """
    if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "multi_gpu_train.json must be launched with torchrun, e.g. `torchrun --standalone --nproc_per_node=2 "
            "-m monai.bundle run --config_file \"['configs/train.json','configs/multi_gpu_train.json']\"`"
        )
    device = distributed_device()
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def distributed_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_rank0() -> bool:
    """True on rank 0, and in a process that is not distributed."""
    return rank() == 0


def sync_batchnorm(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``module`` with its BatchNorm layers converted to ``SyncBatchNorm`` when training on CUDA.

    With several processes, SyncBatchNorm computes the batch statistics over all ranks' samples (the small
    per-GPU batches of 3D segmentation make per-rank statistics noisy). PyTorch implements it for CUDA only, so on
    CPU (gloo) the module is returned unchanged and each rank normalises with its own batch.
    """
    if torch.device(device).type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def unwrap_model(obj: Any) -> Any:
    """The network inside ``DistributedDataParallel`` / ``DataParallel`` wrappers (nested ones too), else ``obj``.

    Saved state dicts then carry no ``module.`` prefix, and code that looks for a network's own attributes or layers
    finds them whether or not ``multi_gpu_train.json`` wrapped it.
    """
    while isinstance(obj, torch.nn.DataParallel | torch.nn.parallel.DistributedDataParallel):
        obj = obj.module
    return obj
