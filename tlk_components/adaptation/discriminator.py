# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The multi-scale domain discriminator for U-Net feature maps.

:class:`MultiScaleDomainDiscriminator` follows TLK's ``SegDiscriminator`` (``network_architecture/DA/
discriminator.py`` of the ``kits19.patch``): it receives every encoder skip map and fuses them stage by stage.
Stage ``d`` concatenates the previous stage's output with skip map ``d`` (channels), then applies two 3x3x3
convolutions, the first with stride ``strides[d]`` so that its output has the resolution of skip ``d + 1``.
Output channels are ``base_channels · (d + 1)`` (TLK: 50). The last map is average-pooled to one value per channel.

Deliberate differences from TLK: the discriminator returns logits (no Sigmoid; the loss uses BCE-with-logits, as
at TLK's HEAD) and by default ends in a linear layer to ONE logit per sample (``head=True``); ``head=False``
reproduces TLK, where every pooled channel is its own domain logit.

Shape:
    inputs ``[(N, C_d, *S_d) for d]`` → ``(N, 1)`` (``head=True``) or ``(N, C_last)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, check_positive_int, look_up_option

__all__ = ["MultiScaleDomainDiscriminator"]


class MultiScaleDomainDiscriminator(nn.Module):
    """Fuse a list of encoder feature maps (finest first) into a domain logit.

    Args:
        in_channels: channels of each tapped map, finest first (TLK: ``[30, 60, 120, 240, 320]``); >= 1 map.
        strides: stride of each stage's first convolution: the resolution ratio between map ``d`` and map
            ``d + 1`` (the last entry reduces the last map further; TLK: ``[2, 2, 2, 2, (1, 2, 2)]``).
            An int or a per-axis sequence per stage. Default: 2 for every stage.
        spatial_dims: 2 or 3 (default 3).
        base_channels: output channels of stage ``d`` are ``base_channels · (d + 1)``, >= 1 (TLK: 50; default 16).
        norm: ``"instance"`` (default), ``"batch"`` or ``"none"``.
        head: True (default): a linear layer maps the pooled channels to one logit; False: TLK's form.
        dropout: dropout before the head, in [0, 1) (default 0).

    The weights are initialised from a fork of torch's global RNG (seeded by it, not advancing it), so building a
    discriminator that is then left unused does not change the rest of a seeded run.

    Raises:
        ConfigError: empty ``in_channels``, a ``strides`` list of another length, or bad ranges.
        ValueError: at ``forward``, when the maps' count, channels or resolutions do not fit the strides.

    Example:
        >>> d = MultiScaleDomainDiscriminator([8, 16], strides=[2, 2])
        >>> d([torch.zeros(2, 8, 16, 16, 16), torch.zeros(2, 16, 8, 8, 8)]).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int | Sequence[int]] | None = None,
        spatial_dims: int = 3,
        base_channels: int = 16,
        norm: str = "instance",
        head: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = [check_positive_int("in_channels[i]", c) for c in in_channels]
        if not self.in_channels:
            raise ConfigError("in_channels=[]: expected the channel count of at least one tapped feature map")
        strides = [2] * len(self.in_channels) if strides is None else list(strides)
        if len(strides) != len(self.in_channels):
            raise ConfigError(
                f"strides has {len(strides)} entries but in_channels has {len(self.in_channels)}; give one stride "
                "per tapped map (the resolution ratio to the next map)"
            )
        self.spatial_dims = look_up_option("spatial_dims", spatial_dims, [2, 3])
        base_channels = check_positive_int("base_channels", base_channels)
        norm = look_up_option("norm", norm, ["instance", "batch", "none"])
        dropout = check_in_range("dropout", dropout, 0.0, 0.999)
        norm_arg = None if norm == "none" else (norm, {"affine": True}) if norm == "instance" else norm
        self.strides = strides
        # weights drawn from a fork of the global RNG: building a discriminator that the loss weights then leave
        # out (TransferrableModel drops it) must not shift the data order or augmentation of the run
        with torch.random.fork_rng(devices=[]):
            self._build(spatial_dims, base_channels, norm_arg, head, dropout)

    def _build(self, spatial_dims: int, base_channels: int, norm_arg: object, head: bool, dropout: float) -> None:
        stages = []
        prev = 0
        for d, (c_in, s) in enumerate(zip(self.in_channels, self.strides, strict=True)):
            c_out = base_channels * (d + 1)
            stages.append(
                nn.Sequential(
                    Convolution(
                        spatial_dims,
                        prev + c_in,
                        c_out,
                        strides=s,
                        kernel_size=3,
                        norm=norm_arg,
                        act=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                    ),
                    Convolution(
                        spatial_dims,
                        c_out,
                        c_out,
                        strides=1,
                        kernel_size=3,
                        norm=norm_arg,
                        act=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                    ),
                )
            )
            prev = c_out
        self.stages = nn.ModuleList(stages)
        self.out_channels = prev
        self.pool = nn.AdaptiveAvgPool3d(1) if spatial_dims == 3 else nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(prev, 1) if head else None

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Domain logits of a batch.

        Args:
            features: one tensor per tapped map, finest first, all with the same batch size.

        Returns:
            ``(N, 1)`` logits (``head=True``) or ``(N, C_last)``; positive = "source".
        """
        if len(features) != len(self.stages):
            raise ValueError(
                f"expected {len(self.stages)} feature maps (in_channels={self.in_channels}), got {len(features)}"
            )
        x = None
        for d, (stage, f) in enumerate(zip(self.stages, features, strict=True)):
            if f.shape[1] != self.in_channels[d]:
                raise ValueError(f"feature map {d} has {f.shape[1]} channels; in_channels[{d}]={self.in_channels[d]}")
            if x is not None:
                if x.shape[2:] != f.shape[2:]:
                    raise ValueError(
                        f"stage {d}: the fused map has spatial shape {tuple(x.shape[2:])} but feature map {d} has "
                        f"{tuple(f.shape[2:])}; set strides[{d - 1}] to the resolution ratio between maps {d - 1} and {d}"
                    )
                f = torch.cat([x, f], dim=1)
            x = stage(f)
        x = self.dropout(torch.flatten(self.pool(x), 1))
        return self.head(x) if self.head is not None else x
