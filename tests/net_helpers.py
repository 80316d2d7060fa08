# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Small networks for the unit tests."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import DynUNet


def dynunet(filters: Sequence[int] = (4, 8, 16), strides: Sequence[int] = (1, 2, 2), out_channels: int = 2) -> DynUNet:
    """An nnU-Net-style 3-D U-Net (MONAI ``DynUNet``, instance norm, no residual blocks) with one input channel."""
    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=out_channels,
        kernel_size=[3] * len(filters),
        strides=list(strides),
        upsample_kernel_size=list(strides)[1:],
        filters=list(filters),
        norm_name="instance",
        res_block=False,
    )
