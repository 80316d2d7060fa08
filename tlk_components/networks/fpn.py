# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The source document's feature pyramid network with RetinaNet heads, for slice-wise box localization.

Architecture (CS190 box-localization tutorial; Lin et al. 2017 FPN/RetinaNet):

* **contracting arm** — conv-norm-ReLU blocks (MONAI ``Convolution``; kernel 3x3 in 2-D, 1x3x3 on a stack of
  slices in 3-D): level 0 is one stride-1 block of ``channels[0]``; level ``i >= 1`` is a stride-2 block followed
  by a stride-1 block of ``channels[i]`` (default 8/16/24/32/48 -> deepest level c4);
* **expanding arm** — the deepest map is projected to ``fpn_channels`` by a 1x1 convolution; going up one level
  at a time, the map is upsampled without parameters (nearest, x2 in-plane), added to a 1x1 projection of the
  contracting map of that level and passed through a conv-norm-ReLU block (``l7 = conv1(up(l6) + proj(l4))``);
* **heads** — on every requested level, a classification branch and a regression branch of ``head_blocks``
  conv-norm-ReLU blocks (``head_channels`` wide; the document uses 2, RetinaNet 4) and a final convolution to
  ``A*K`` and ``A*4`` channels. Heads are per level, as in the document (RetinaNet shares them).

Deliberate addition: the classification bias is initialised to ``-log((1 - pi) / pi)`` (RetinaNet prior
``pi = 0.01``; the document does not), so training starts with every anchor at probability ``pi`` instead of
0.5, which keeps the first focal-loss steps from being dominated by the ~10^4 negatives.

Outputs: ``{"classification": ([B, A*K, gh, gw] per level), "box_regression": ([B, A*4, gh, gw] per level)}``
in increasing level order (MONAI ``RetinaNet`` format, with tuples instead of lists; in 3-D mode each map has a
slice axis: ``[B, C, Z, gh, gw]``). The same dict is returned in training and evaluation. Tuples, not lists, so
that ``torch.jit.trace`` accepts the output (a dict of str to tuples of tensors) and ``ckpt_export`` can export
the network; every consumer (loss, decoder) takes any sequence of maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from tlk_components.boxes.params import BoxParams
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, check_positive_int, look_up_option

__all__ = ["BoxFPN"]


class BoxFPN(nn.Module):
    """FPN backbone + RetinaNet heads whose levels, anchors and classes come from a :class:`BoxParams`.

    Args:
        params: the box parameterisation; its ``levels`` choose the head levels, ``num_anchors_per_location`` (A)
            and ``classes`` (K) the head widths.
        in_channels: input channels (4 MRI sequences for BraTS), >= 1. Default 4.
        channels: widths of the contracting levels 0..L (L = deepest level), each >= 1. Default (8, 16, 24, 32, 48).
        fpn_channels: common width of the expanding arm, >= 1. Default 64.
        head_blocks: conv-norm-ReLU blocks per head branch, >= 0. Default 2 (the document; RetinaNet: 4).
        head_channels: width of the head blocks, >= 1. Default 64.
        spatial_dims: 2 (slices ``[B, C, H, W]``) or 3 (slice stacks ``[B, C, Z, H, W]``, kernel 1x3x3). Default 2.
        norm: ``"batch"`` (the document) or ``"instance"``. Default ``"batch"``.
        prior_probability: initial foreground probability of the classification heads, in (0, 1). Default 0.01.

    Shape:
        input ``[B, in_channels, H, W]`` with ``(H, W) == params.image_shape`` (2-D) or ``[B, C, Z, H, W]`` (3-D).

    Raises:
        ConfigError: a level of ``params`` deeper than the network (``len(channels) - 1``), or any bad argument.

    Example:
        >>> p = BoxParams(image_shape=(64, 64), levels=(2, 3), anchor_shapes=(8, 16))
        >>> out = BoxFPN(p, in_channels=4, channels=(8, 16, 24, 32))(torch.zeros(1, 4, 64, 64))
        >>> [tuple(m.shape) for m in out["classification"]]
        [(1, 9, 16, 16), (1, 9, 8, 8)]
    """

    def __init__(
        self,
        params: BoxParams,
        in_channels: int = 4,
        channels: Sequence[int] = (8, 16, 24, 32, 48),
        fpn_channels: int = 64,
        head_blocks: int = 2,
        head_channels: int = 64,
        spatial_dims: int = 2,
        norm: str = "batch",
        prior_probability: float = 0.01,
    ) -> None:
        super().__init__()
        if not isinstance(params, BoxParams):
            raise ConfigError(f"params={params!r}: expected a tlk_components.boxes.params.BoxParams")
        self.params = params
        in_channels = check_positive_int("in_channels", in_channels)
        if isinstance(channels, int) or len(channels) < 2:
            raise ConfigError(f"channels={channels!r}: expected at least two widths (levels 0 and 1)")
        chans = [check_positive_int("channels", c) for c in channels]
        fpn_channels = check_positive_int("fpn_channels", fpn_channels)
        head_blocks = check_positive_int("head_blocks", head_blocks, minimum=0)
        head_channels = check_positive_int("head_channels", head_channels)
        self.spatial_dims = look_up_option("spatial_dims", spatial_dims, (2, 3))
        norm_name = look_up_option("norm", norm, ("batch", "instance")).upper()
        prior = check_in_range("prior_probability", prior_probability, 0.0, 1.0, low_inclusive=False)
        if prior >= 1.0:
            raise ConfigError(f"prior_probability={prior_probability}: expected a number in (0, 1)")
        self.deepest_level = len(chans) - 1
        params.check_network_depth(self.deepest_level, name=f"BoxFPN (channels={chans})")
        self.levels = list(params.levels)
        self.num_classes = params.classes
        self.num_anchors = params.num_anchors_per_location

        sd = self.spatial_dims
        k3 = 3 if sd == 2 else (1, 3, 3)
        s2 = 2 if sd == 2 else (1, 2, 2)

        def block(cin: int, cout: int, stride: int | tuple[int, ...] = 1) -> nn.Module:
            return Convolution(sd, cin, cout, strides=stride, kernel_size=k3, act="RELU", norm=norm_name)

        def proj(cin: int, cout: int) -> nn.Module:
            conv = Convolution(sd, cin, cout, kernel_size=1, conv_only=True)
            nn.init.kaiming_normal_(conv.conv.weight, nonlinearity="relu")  # 'he_normal' as in the document
            return conv

        self.contracting = nn.ModuleList([block(in_channels, chans[0])])
        for i in range(1, len(chans)):
            self.contracting.append(nn.Sequential(block(chans[i - 1], chans[i], s2), block(chans[i], chans[i])))
        self.upsample = nn.Upsample(scale_factor=2 if sd == 2 else (1, 2, 2), mode="nearest")
        lowest = min(self.levels)
        self.top_proj = proj(chans[-1], fpn_channels)
        self.lateral = nn.ModuleDict({str(c): proj(chans[c], fpn_channels) for c in range(lowest, self.deepest_level)})
        self.merge = nn.ModuleDict(
            {str(c): block(fpn_channels, fpn_channels) for c in range(lowest, self.deepest_level)}
        )

        def head(out_ch: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            cin = fpn_channels
            for _ in range(head_blocks):
                layers.append(block(cin, head_channels))
                cin = head_channels
            layers.append(Convolution(sd, cin, out_ch, kernel_size=k3, conv_only=True))
            return nn.Sequential(*layers)

        self.cls_heads = nn.ModuleDict({str(c): head(self.num_anchors * self.num_classes) for c in self.levels})
        self.reg_heads = nn.ModuleDict({str(c): head(self.num_anchors * 4) for c in self.levels})
        bias = -math.log((1.0 - prior) / prior)
        for h in self.cls_heads.values():
            final = h[-1].conv
            nn.init.normal_(final.weight, std=0.01)
            nn.init.constant_(final.bias, bias)
        for h in self.reg_heads.values():
            final = h[-1].conv
            nn.init.normal_(final.weight, std=0.01)
            nn.init.zeros_(final.bias)

    def forward(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
        """Run the backbone and heads.

        Args:
            x: ``[B, in_channels, H, W]`` (2-D) or ``[B, in_channels, Z, H, W]`` (3-D), ``(H, W) == image_shape``.

        Returns:
            ``{"classification": tuple of [B, A*K, ...] maps, "box_regression": tuple of [B, A*4, ...] maps}``, one
            map per level of ``params.levels`` in increasing order.

        Raises:
            ValueError: wrong number of dimensions or in-plane size.
        """
        expected = 2 + self.spatial_dims
        if x.ndim != expected:
            raise ValueError(
                f"input of shape {tuple(x.shape)}: expected {expected}-D [B, C, ...] for spatial_dims={self.spatial_dims}"
            )
        if tuple(x.shape[-2:]) != tuple(self.params.image_shape):
            raise ValueError(
                f"input slices are {tuple(x.shape[-2:])}, the BoxParams image_shape is {self.params.image_shape}; "
                "resize the slices (or change image_shape)"
            )
        feats = []
        h = x
        for stage in self.contracting:
            h = stage(h)
            feats.append(h)
        maps: dict[int, torch.Tensor] = {}
        top = self.top_proj(feats[-1])
        maps[self.deepest_level] = top
        for c in range(self.deepest_level - 1, min(self.levels) - 1, -1):
            top = self.merge[str(c)](self.upsample(top) + self.lateral[str(c)](feats[c]))
            maps[c] = top
        return {
            "classification": tuple(self.cls_heads[str(c)](maps[c]) for c in self.levels),
            "box_regression": tuple(self.reg_heads[str(c)](maps[c]) for c in self.levels),
        }
