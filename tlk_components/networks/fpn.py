# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""A feature pyramid network with RetinaNet heads, for slice-wise box localization.

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

Outputs: ``{"classification": [[B, A*K, gh, gw] per level], "box_regression": [[B, A*4, gh, gw] per level]}``
in increasing level order (MONAI ``RetinaNet`` format, ``Dict[str, List[Tensor]]``; in 3-D mode each map has a
slice axis: ``[B, C, Z, gh, gw]``). The same dict is returned in training and evaluation. Lists (version 0.1.1
of the bundle returned tuples, which TorchScript cannot annotate for a configurable number of levels) so that
``torch.jit.script`` compiles the network and ``ckpt_export(..., use_trace=False)`` exports it, as the MONAI
Model Zoo's CI does; every consumer (loss, decoder) takes any sequence of maps. Tracing remains possible as a
fallback: ``torch.jit.trace(net, x, strict=False)`` (``ckpt_export(..., use_trace=True,
converter_kwargs={"strict": False})``); while tracing, the per-level maps are returned as tuples, the only
container the tracer accepts inside a dict output.
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


@torch.jit.interface
class _SequentialModule(nn.Module):
    """TorchScript interface of an ``nn.Sequential`` (``forward(input)``), to index a ModuleDict by a variable."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # the argument name must match nn.Sequential's
        pass


def _shape_str(sizes: list[int]) -> str:
    """``str(tuple(sizes))`` (``"(1, 4, 64, 64)"``, ``"(5,)"``), written so that TorchScript can compile it."""
    if len(sizes) == 1:
        return f"({sizes[0]},)"
    return "(" + ", ".join([str(s) for s in sizes]) + ")"


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
        self.lowest_level = min(self.levels)
        self._image_shape = [int(s) for s in params.image_shape]  # for forward's check (TorchScript-typed)
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
        lowest = self.lowest_level
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

    def forward(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Run the backbone and heads (TorchScript-compatible: ``torch.jit.script`` compiles it).

        Args:
            x: ``[B, in_channels, H, W]`` (2-D) or ``[B, in_channels, Z, H, W]`` (3-D), ``(H, W) == image_shape``.

        Returns:
            ``{"classification": list of [B, A*K, ...] maps, "box_regression": list of [B, A*4, ...] maps}``, one
            map per level of ``params.levels`` in increasing order.

        Raises:
            ValueError: wrong number of dimensions or in-plane size.
        """
        expected = 2 + self.spatial_dims
        if x.dim() != expected:
            raise ValueError(
                f"input of shape {_shape_str([int(s) for s in x.shape])}: expected {expected}-D [B, C, ...] for "
                f"spatial_dims={self.spatial_dims}"
            )
        if int(x.shape[-2]) != self._image_shape[0] or int(x.shape[-1]) != self._image_shape[1]:
            raise ValueError(
                f"input slices are {_shape_str([int(s) for s in x.shape[-2:]])}, the BoxParams image_shape is "
                f"{_shape_str(self._image_shape)}; resize the slices (or change image_shape)"
            )
        feats: list[torch.Tensor] = []
        h = x
        for stage in self.contracting:
            h = stage(h)
            feats.append(h)
        maps: dict[int, torch.Tensor] = {}
        top = self.top_proj(feats[-1])
        maps[self.deepest_level] = top
        for c in range(self.deepest_level - 1, self.lowest_level - 1, -1):  # top-down pathway
            key = str(c)
            if torch.jit.is_scripting():
                # TorchScript indexes a ModuleDict with a variable key only through a module interface; this
                # branch is compiled, never run, in eager mode
                merge: _SequentialModule = self.merge[key]
                lateral: _SequentialModule = self.lateral[key]
                top = merge.forward(self.upsample(top) + lateral.forward(feats[c]))
            else:  # module calls (not .forward) so that forward hooks fire
                top = self.merge[key](self.upsample(top) + self.lateral[key](feats[c]))
            maps[c] = top
        # the head dicts hold one entry per level, inserted in the (increasing) order of self.levels
        classification: list[torch.Tensor] = []
        for key, head in self.cls_heads.items():
            classification.append(head(maps[int(key)]))
        box_regression: list[torch.Tensor] = []
        for key, head in self.reg_heads.items():
            box_regression.append(head(maps[int(key)]))
        if not torch.jit.is_scripting() and torch.jit.is_tracing():
            # the tracer accepts a dict output only of tuples (with strict=False); not compiled when scripting
            return {"classification": tuple(classification), "box_regression": tuple(box_regression)}
        return {"classification": classification, "box_regression": box_regression}
