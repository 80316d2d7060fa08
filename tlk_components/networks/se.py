# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Squeeze-and-excitation (SE) blocks for fully convolutional 3D (or 2D) segmentation networks.

Three recalibrations of a feature map ``U`` of shape ``(B, C, *spatial)``, as in Roy et al. (2018):

* ``cse`` (spatial squeeze, channel excitation; Hu et al. 2018): ``U * sigmoid(W2 relu(W1 avgpool(U)))`` — MONAI's
  :class:`monai.networks.blocks.ChannelSELayer`, reused as is;
* ``sse`` (channel squeeze, spatial excitation): ``U * sigmoid(conv1x1(U))``, one gate per voxel (MONAI has no
  spatial SE block, so it is defined here);
* ``scse``: both, combined by element-wise addition (the MICCAI 2018 paper) or maximum (``aggregation="max"``).

References:
    Hu, Shen, Sun. "Squeeze-and-Excitation Networks". CVPR 2018. https://arxiv.org/abs/1709.01507
    Roy, Navab, Wachinger. "Concurrent Spatial and Channel Squeeze & Excitation in Fully Convolutional Networks".
    MICCAI 2018. https://arxiv.org/abs/1803.02579
"""

from __future__ import annotations

import torch
from monai.networks.blocks import ChannelSELayer
from monai.networks.layers.factories import Conv
from torch import nn

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_positive_int, look_up_option

__all__ = ["SE_TYPES", "SpatialSELayer", "SqueezeExcitation", "make_se_block"]

#: the accepted ``se_type`` values (``None`` means no SE block).
SE_TYPES = ("cse", "sse", "scse")


class SpatialSELayer(nn.Module):
    """Channel squeeze and spatial excitation (sSE): one sigmoid gate per voxel from a 1x1 convolution.

    ``out = U * sigmoid(conv_1x1(U))`` (Roy et al. 2018, eq. 3).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels ``C`` of the feature map, >= 1.

    Shape:
        input and output ``(B, C, *spatial)``.

    Example:
        >>> SpatialSELayer(3, 8)(torch.rand(1, 8, 4, 4, 4)).shape
        torch.Size([1, 8, 4, 4, 4])
    """

    def __init__(self, spatial_dims: int, in_channels: int) -> None:
        super().__init__()
        look_up_option("spatial_dims", spatial_dims, (2, 3))
        check_positive_int("in_channels", in_channels)
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, 1, kernel_size=1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.conv(x))


class SqueezeExcitation(nn.Module):
    """cSE, sSE or scSE recalibration of a feature map.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels ``C`` of the feature map, >= 1.
        se_type: ``"cse"``, ``"sse"`` or ``"scse"``.
        reduction: channel reduction ``r`` of the cSE bottleneck (``C // r`` hidden units), 1 <= r <= C;
            default 2 (Roy et al.).
        aggregation: how scSE combines its two branches: ``"add"`` (default, as in the MICCAI paper) or ``"max"``.

    Shape:
        input and output ``(B, C, *spatial)``.

    Raises:
        ConfigError: unknown ``se_type``/``aggregation``, or ``reduction`` outside ``[1, in_channels]``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, se_type: str = "scse", reduction: int = 2, aggregation: str = "add"
    ) -> None:
        super().__init__()
        look_up_option("spatial_dims", spatial_dims, (2, 3))
        in_channels = check_positive_int("in_channels", in_channels)
        self.se_type = look_up_option("se_type", se_type, SE_TYPES)
        self.aggregation = look_up_option("se_aggregation", aggregation, ("add", "max"))
        reduction = check_positive_int("se_reduction", reduction)
        if reduction > in_channels:
            raise ConfigError(
                f"se_reduction={reduction} is larger than the {in_channels} channels of an SE block; "
                f"expected 1 <= se_reduction <= {in_channels} (use a smaller reduction or wider layers)"
            )
        self.cse = ChannelSELayer(spatial_dims, in_channels, r=reduction) if self.se_type in ("cse", "scse") else None
        self.sse = SpatialSELayer(spatial_dims, in_channels) if self.se_type in ("sse", "scse") else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cse is None:
            return self.sse(x)
        if self.sse is None:
            return self.cse(x)
        if self.aggregation == "max":
            return torch.maximum(self.cse(x), self.sse(x))
        return self.cse(x) + self.sse(x)


def make_se_block(
    spatial_dims: int, in_channels: int, se_type: str | None, reduction: int = 2, aggregation: str = "add"
) -> nn.Module:
    """An SE block of ``se_type``, or ``nn.Identity`` when ``se_type`` is None (no recalibration).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the feature map.
        se_type: one of :data:`SE_TYPES`, or None.
        reduction: cSE channel reduction (see :class:`SqueezeExcitation`).
        aggregation: scSE aggregation (see :class:`SqueezeExcitation`).

    Returns:
        The block; shape-preserving.
    """
    if se_type is None:
        return nn.Identity()
    # the reduction never exceeds the channel count, so narrow layers still get a (less reduced) block
    return SqueezeExcitation(spatial_dims, in_channels, se_type, min(reduction, in_channels), aggregation)
