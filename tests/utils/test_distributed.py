# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""tlk_components.utils.distributed: SyncBatchNorm conversion only where PyTorch supports it (CUDA)."""

from __future__ import annotations

import torch

from tlk_components.utils.distributed import is_rank0, rank, sync_batchnorm


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2), torch.nn.ReLU())


def test_sync_batchnorm_is_a_no_op_on_cpu() -> None:
    net = _net()
    assert sync_batchnorm(net, "cpu") is net
    assert isinstance(net[1], torch.nn.BatchNorm3d)


def test_sync_batchnorm_converts_for_cuda_and_keeps_weights() -> None:
    net = _net()
    with torch.no_grad():
        net[1].weight.fill_(3.0)
    converted = sync_batchnorm(net, torch.device("cuda"))  # conversion itself needs no GPU
    assert isinstance(converted[1], torch.nn.SyncBatchNorm)
    assert torch.equal(converted[1].weight, torch.full((2,), 3.0))


def test_rank_outside_torchrun() -> None:
    assert rank() == 0 and is_rank0()
