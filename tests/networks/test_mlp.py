# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The fixed MLP, the list-built MLP and the nn.Sequential twin are the same network (source document 002)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlk_components.networks.mlp import MLP, FixedMLP, check_dims, mlp_sequential
from tlk_components.utils.errors import ConfigError

DIMS = [784, 32, 32, 32, 10]


def _three() -> list[nn.Module]:
    torch.manual_seed(0)
    return [FixedMLP(), MLP(dims=DIMS), mlp_sequential(DIMS)]


def test_parameter_shapes_are_identical():
    shapes = [[tuple(p.shape) for p in m.parameters()] for m in _three()]
    expected = [(32, 784), (32,), (32, 32), (32,), (32, 32), (32,), (10, 32), (10,)]
    assert shapes[0] == expected
    assert shapes[1] == expected and shapes[2] == expected


def test_same_weights_give_identical_outputs():
    fixed, listed, seq = _three()
    x = torch.rand(7, 1, 28, 28)
    before = [m(x) for m in (fixed, listed, seq)]
    assert not torch.allclose(before[0], before[1]), "different random init must differ before copying weights"
    with torch.no_grad():
        for other in (listed, seq):
            for dst, src in zip(other.parameters(), fixed.parameters(), strict=True):
                dst.copy_(src)
    out = [m(x) for m in (fixed, listed, seq)]
    assert out[0].shape == (7, 10)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def test_relu_between_layers_only():
    seq = mlp_sequential([4, 3, 2])
    assert [type(m) for m in seq] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    # no activation after the last layer: negative logits are possible
    net = MLP(dims=[4, 2])
    with torch.no_grad():
        net.layers[0].weight.fill_(-1.0)
        net.layers[0].bias.zero_()
    assert (net(torch.ones(1, 4)) < 0).all()


@pytest.mark.parametrize("dims", [[784, 10], [784, 64, 10], [3, 5, 5, 5, 2]])
def test_list_built_sizes(dims):
    net = MLP(dims=dims)
    assert net.in_features == dims[0] and net.num_classes == dims[-1]
    assert net(torch.zeros(2, dims[0])).shape == (2, dims[-1])
    assert sum(isinstance(m, nn.Linear) for m in net.modules()) == len(dims) - 1


def test_torchscript_matches_eager():
    net = MLP(dims=DIMS).eval()
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(torch.jit.script(net)(x), net(x))
    fixed = FixedMLP().eval()
    assert torch.equal(torch.jit.script(fixed)(x), fixed(x))


@pytest.mark.parametrize(
    "dims, match",
    [
        ([784], "at least two sizes"),
        ([], "at least two sizes"),
        ([784, 0, 10], r"dims\[1\]=0"),
        ([784, -32, 10], r"dims\[1\]=-32"),
        ([784, 3.5, 10], r"dims\[1\]=3.5"),
        ([784, True, 10], r"dims\[1\]=True"),
        ("784,10", "expected a list"),
        (784, "expected a list"),
    ],
)
def test_ill_dims(dims, match):
    with pytest.raises(ConfigError, match=match):
        MLP(dims=dims)
    with pytest.raises(ConfigError, match=match):
        mlp_sequential(dims)


def test_check_dims_names_the_key():
    with pytest.raises(ConfigError, match=r"network_def#dims\[0\]=0"):
        check_dims([0, 10], name="network_def#dims")
    assert check_dims((784.0, 10)) == [784, 10]
