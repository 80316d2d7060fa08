# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Multi-layer perceptrons for 28x28 digit classification (the MNIST bundle's networks).

Three ways to build the same network, which the tests prove equivalent (same parameter shapes; same outputs
given the same weights):

* :class:`FixedMLP` — the fixed 784-32-32-32-10 network, one named attribute per layer;
* :class:`MLP` — the same network built from a list of layer sizes, ``MLP(dims=[784, 32, 32, 32, 10])``;
* :func:`mlp_sequential` — a plain ``nn.Sequential`` twin.

Convention: the input is ``B x C x H x W`` (or any ``B x ...``) and is flattened to ``B x (C*H*W)``; the output
is ``B x num_classes`` logits (no softmax). Layers are ``Linear`` with bias, ReLU between them, none after the
last one. Parameters are ordered ``input weight, input bias, hidden weights/biases..., output weight, bias``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tlk_components.utils.errors import ConfigError

__all__ = ["FixedMLP", "MLP", "check_dims", "mlp_sequential"]


def check_dims(dims: Sequence[int], name: str = "dims") -> list[int]:
    """Validate a list of layer sizes and return it as a list of ints.

    Args:
        dims: layer sizes ``[in_features, hidden..., num_classes]``; at least two entries, each an integer >= 1.
        name: the config key named in the error message.

    Returns:
        ``dims`` as a list of Python ints.

    Raises:
        ConfigError: fewer than two sizes, or a size that is not an integer >= 1.
    """
    if isinstance(dims, str | bytes) or not isinstance(dims, Sequence):
        raise ConfigError(f"{name}={dims!r}: expected a list of layer sizes such as [784, 32, 32, 32, 10]")
    if len(dims) < 2:
        raise ConfigError(
            f"{name}={list(dims)!r}: expected at least two sizes (inputs and classes), e.g. [784, 32, 32, 32, 10]"
        )
    out = []
    for i, d in enumerate(dims):
        if isinstance(d, bool) or not isinstance(d, int | float) or int(d) != d or d < 1:
            raise ConfigError(
                f"{name}[{i}]={d!r}: every layer size must be an integer >= 1; got {name}={list(dims)!r}, "
                "e.g. [784, 32, 32, 32, 10] (784 = 28*28 input pixels, 10 classes)"
            )
        out.append(int(d))
    return out


class FixedMLP(nn.Module):
    """The fixed 784-32-32-32-10 MLP of the MNIST tutorial the bundle reproduces: input layer, two hidden layers, output layer.

    ``y = W4 relu(W3 relu(W2 relu(W1 flatten(x) + b1) + b2) + b3) + b4``

    Shape:
        - Input: ``(B, 1, 28, 28)`` (any ``(B, ...)`` with 784 values per sample).
        - Output: ``(B, 10)`` logits.

    Example:
        >>> FixedMLP()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.input_layer = nn.Linear(28 * 28, 32)
        self.hidden_layer1 = nn.Linear(32, 32)
        self.hidden_layer2 = nn.Linear(32, 32)
        self.output_layer = nn.Linear(32, 10)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        out = self.activation(self.input_layer(self.flatten(x)))
        out = self.activation(self.hidden_layer1(out))
        out = self.activation(self.hidden_layer2(out))
        return self.output_layer(out)


def _layers(dims: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return layers


class MLP(nn.Module):
    """An MLP built from a list of layer sizes: ``Linear`` + ReLU between every pair, no activation at the end.

    ``MLP(dims=[784, 32, 32, 32, 10])`` is the same network as :class:`FixedMLP`.

    Args:
        dims: ``[in_features, hidden_1, ..., num_classes]``; at least two sizes, each an integer >= 1.
            Default ``[784, 32, 32, 32, 10]``.

    Shape:
        - Input: ``(B, ...)`` with ``dims[0]`` values per sample (e.g. ``(B, 1, 28, 28)`` for 784).
        - Output: ``(B, dims[-1])`` logits.

    Raises:
        ConfigError: ``dims`` is not a list of at least two integers >= 1.

    Example:
        >>> MLP(dims=[784, 32, 10])(torch.zeros(3, 1, 28, 28)).shape
        torch.Size([3, 10])
    """

    def __init__(self, dims: Sequence[int] = (784, 32, 32, 32, 10)) -> None:
        super().__init__()
        self.dims = check_dims(dims)
        self.flatten = nn.Flatten()
        self.layers = nn.Sequential(*_layers(self.dims))

    @property
    def in_features(self) -> int:
        """Number of input values per sample (``dims[0]``)."""
        return self.dims[0]

    @property
    def num_classes(self) -> int:
        """Number of output logits (``dims[-1]``)."""
        return self.dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of inputs."""
        return self.layers(self.flatten(x))


def mlp_sequential(dims: Sequence[int] = (784, 32, 32, 32, 10)) -> nn.Sequential:
    """The ``nn.Sequential`` twin of :class:`MLP`: ``Flatten, Linear, ReLU, ..., Linear``.

    Args:
        dims: as for :class:`MLP`.

    Returns:
        An ``nn.Sequential`` whose parameters have the same shapes and order as ``MLP(dims)``.

    Raises:
        ConfigError: invalid ``dims``.
    """
    return nn.Sequential(nn.Flatten(), *_layers(check_dims(dims)))
