# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""A small CNN for small images, and a factory that picks a classifier per co-training view.

``build_view_network(name=...)`` returns :class:`SmallCNN` (``"small_cnn"``) or MONAI's ``resnet18`` /
``resnet50`` (``spatial_dims=2``, randomly initialised: nothing is downloaded). Each co-training view gets its own
network, so the two views can use different architectures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import resnet18, resnet50
from torch import nn

from tlk_components.utils.validation import check_in_range, check_positive_int, look_up_option

__all__ = ["NETWORKS", "SmallCNN", "build_view_network"]

NETWORKS = ("small_cnn", "resnet18", "resnet50")


class SmallCNN(nn.Module):
    """Stacked conv-BN-ReLU stages (MONAI ``Convolution`` blocks) with 2x2 max pooling, global average pooling,
    dropout and a linear classifier.

    Each stage is two 3x3 convolutions followed by a 2x2 max pool except the last stage (no pool), so an input of
    at least ``2 ** (len(channels) - 1)`` pixels per side works; global average pooling makes the head independent
    of the input size.

    Args:
        in_channels: image channels, >= 1 (default 1).
        num_classes: output logits, >= 2 (default 10).
        channels: output channels of each stage, each >= 1 (default ``(32, 64)``).
        dropout: dropout probability before the classifier, in [0, 1) (default 0.25).
        spatial_dims: 2 (images) or 3 (volumes); default 2.

    Shape:
        input ``B, in_channels, H, W[, D]`` -> logits ``B, num_classes``.

    Example:
        >>> net = SmallCNN(in_channels=1, num_classes=10)
        >>> net(torch.zeros(4, 1, 16, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64),
        dropout: float = 0.25,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        in_channels = check_positive_int("in_channels", in_channels)
        num_classes = check_positive_int("num_classes", num_classes, minimum=2)
        channels = [check_positive_int("channels", c) for c in channels]
        if not channels:
            raise ValueError("channels=(): expected at least one stage, e.g. (32, 64)")
        dropout = check_in_range("dropout", dropout, 0.0, 1.0)
        spatial_dims = int(look_up_option("spatial_dims", spatial_dims, (2, 3)))
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            for _ in range(2):
                layers.append(Convolution(spatial_dims, c_in, c, kernel_size=3, act="RELU", norm="BATCH"))
                c_in = c
            if i < len(channels) - 1:
                layers.append(pool(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``B, num_classes`` for images ``B, C, H, W[, D]``."""
        return self.head(self.pool(self.features(x)))


def build_view_network(
    name: str = "small_cnn",
    in_channels: int = 1,
    num_classes: int = 10,
    channels: Sequence[int] = (32, 64),
    dropout: float = 0.25,
    small_input: bool = True,
) -> nn.Module:
    """The classifier of one co-training view.

    Args:
        name: ``"small_cnn"`` (:class:`SmallCNN`), ``"resnet18"`` or ``"resnet50"`` (MONAI, 2-D, random init,
            ``pretrained=False``: nothing is downloaded).
        in_channels: image channels, >= 1 (default 1).
        num_classes: number of classes, >= 2 (default 10).
        channels: stage widths of the small CNN (ignored by the ResNets).
        dropout: dropout of the small CNN (ignored by the ResNets).
        small_input: ResNets only: a 3x3 stride-1 stem without max pooling, for images of a few dozen pixels
            (default True); False keeps MONAI's 7x7 stem with max pooling, for images of 100+ pixels.

    Returns:
        A module mapping ``B, in_channels, H, W`` to logits ``B, num_classes``.

    Raises:
        ConfigError: unknown ``name`` (with the closest valid spelling) or a bad size.
    """
    name = look_up_option("name", name, NETWORKS)
    if name == "small_cnn":
        return SmallCNN(in_channels=in_channels, num_classes=num_classes, channels=channels, dropout=dropout)
    in_channels = check_positive_int("in_channels", in_channels)
    num_classes = check_positive_int("num_classes", num_classes, minimum=2)
    factory = resnet18 if name == "resnet18" else resnet50
    stem = {"conv1_t_size": 3, "conv1_t_stride": 1, "no_max_pool": True} if small_input else {}
    return factory(pretrained=False, spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes, **stem)
