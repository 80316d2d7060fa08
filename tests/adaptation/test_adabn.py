# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""AdaBN: BatchNorm statistics re-estimated on target images, weights untouched, mode restored."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from tlk_components.adaptation.adabn import BatchNormRecalibration, count_batchnorm, recalibrate_batchnorm


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.BatchNorm3d(1), torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))


def _target(n: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"image": 5.0 + 2.0 * torch.randn(2, 1, 4, 4, 4, generator=g)} for _ in range(n)]


def test_running_stats_become_the_target_statistics_and_weights_stay() -> None:
    net = _net().eval()
    conv_before = net[1].weight.clone()
    data = _target()
    assert recalibrate_batchnorm(net, data) == 2
    allx = torch.cat([d["image"] for d in data])
    # cumulative average of the per-batch means / unbiased variances (update_bn with momentum None)
    mean = torch.stack([d["image"].mean() for d in data]).mean()
    var = torch.stack([d["image"].var() for d in data]).mean()
    assert torch.allclose(net[0].running_mean, mean.reshape(1), atol=1e-5)
    assert torch.allclose(net[0].running_var, var.reshape(1), atol=1e-4)
    assert abs(float(net[0].running_mean) - float(allx.mean())) < 1e-4
    assert torch.equal(net[1].weight, conv_before)
    assert not net.training  # mode restored


def test_network_without_batchnorm_is_left_alone() -> None:
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.InstanceNorm3d(2))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert count_batchnorm(net) == 0
    assert recalibrate_batchnorm(net, _target()) == 0
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_tensor_batches_and_missing_key() -> None:
    net = _net()
    assert recalibrate_batchnorm(net, [d["image"] for d in _target()]) == 2
    with pytest.raises(KeyError):
        recalibrate_batchnorm(net, [{"img": torch.zeros(2, 1, 4, 4, 4)}])


@pytest.mark.parametrize("enabled", [True, False])
def test_handler_runs_at_completion_only_when_enabled(enabled: bool) -> None:
    net = _net()
    before = net[0].running_mean.clone()
    engine = Engine(lambda e, b: None)
    BatchNormRecalibration(_target(), net, enabled=enabled).attach(engine)
    engine.run([0], max_epochs=1)
    changed = not torch.equal(net[0].running_mean, before)
    assert changed is enabled
