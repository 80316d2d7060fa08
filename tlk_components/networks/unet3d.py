# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""3D U-Net for multi-organ segmentation (Çiçek et al. 2016), with optional squeeze-and-excitation, and a
validated wrapper of MONAI's Attention U-Net (Oktay et al. 2018).

:class:`UNet3D` follows the 3D U-Net of the source lecture (document 004): each resolution level has two
3x3x3 convolutions, the first with half the level's width ("double the channels before pooling", as in Çiçek
et al.), 2x2x2 max pooling down, 2x2x2 transposed convolutions up (keeping the channel count), skip
concatenation, and a final 1x1x1 convolution to the class logits. With ``channels=(64, 128, 256, 512)`` it has the
lecture's layer widths exactly (32/64, 64/128, 128/256, 256/512 in the encoder; 256, 128, 64 in the decoder).
The lecture uses neither bias nor normalisation (``bias=False, batchnorm=False``); both are options here.
Deviation: the lecture's last layer (``dc0``) is built with its ``decoder`` helper and so ends in a ReLU; here the
1x1x1 head outputs raw logits (a ReLU would clip every negative class score to 0 before the softmax).

Module names (used to pick a Grad-CAM layer, see :mod:`tlk_components.engines.inference.saliency`)::

    encoders.<i>      i = 0 (full resolution) .. L-2: the two convolutions (+ SE) of level i, before pooling
    bottleneck        the two convolutions (+ SE) of the coarsest level
    upsamples.<i>     transposed convolution from level i+1 up to level i
    decoders.<i>      the two convolutions (+ SE) of level i after the skip concatenation
    head              1x1x1 convolution to the logits

:class:`AttentionUNet3D` is :class:`monai.networks.nets.AttentionUnet` with its arguments checked when the config
is parsed (MONAI fails later, inside ``forward``, with a shape error). Its gate coefficients are the outputs of
the ``*.attention.psi`` modules, recorded by :class:`tlk_components.engines.inference.saliency.AttentionGateRecorder`.

References:
    Çiçek et al. "3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation". MICCAI 2016.
    https://arxiv.org/abs/1606.06650
    Oktay et al. "Attention U-Net: Learning Where to Look for the Pancreas". MIDL 2018.
    https://arxiv.org/abs/1804.03999
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from monai.networks.nets import AttentionUnet
from torch import nn

from tlk_components.networks.se import SE_TYPES, make_se_block
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, check_positive_int, look_up_option

__all__ = ["NORMS", "AttentionUNet3D", "UNet3D", "check_divisible"]

#: the accepted ``norm`` values (``None``: no normalisation, as in the source lecture).
NORMS = ("batch", "instance")


def _shape_str(sizes: list[int]) -> str:
    """``str(tuple(sizes))`` (``"(48, 48, 32)"``, ``"(5,)"``), written so that TorchScript can compile it."""
    if len(sizes) == 1:
        return f"({sizes[0]},)"
    return "(" + ", ".join([str(s) for s in sizes]) + ")"


def check_divisible(x: torch.Tensor, factor: int, name: str) -> None:
    """Raise a clear ``ValueError`` unless every spatial size of ``x`` (``B, C, *spatial``) is a multiple of ``factor``.

    TorchScript-compatible: the networks call it from ``forward``, which ``torch.jit.script`` compiles (a scripted
    module raises the same message as a ``torch.jit.Error``).

    Args:
        x: a ``(B, C, *spatial)`` tensor.
        factor: the required divisor of every spatial size, >= 1.
        name: the network named in the message.

    Raises:
        ValueError: a spatial size of ``x`` that is not a multiple of ``factor``.
    """
    spatial: list[int] = [int(s) for s in x.shape[2:]]
    for s in spatial:
        if s % factor != 0:
            raise ValueError(
                f"{name}: input spatial shape {_shape_str(spatial)} must be a multiple of {factor} in every axis (one "
                f"halving per level); pad the input (monai.transforms.DivisiblePad(k={factor})) or pick a patch_size "
                f"divisible by {factor}"
            )


def _check_channels(channels: Sequence[int], minimum_len: int, even: bool) -> tuple[int, ...]:
    if isinstance(channels, str | bytes) or not isinstance(channels, Sequence) or len(channels) < minimum_len:
        raise ConfigError(
            f"channels={channels!r}: expected a list of at least {minimum_len} layer widths, e.g. [16, 32, 64, 128]"
        )
    out = tuple(check_positive_int(f"channels[{i}]", c, minimum=2 if even else 1) for i, c in enumerate(channels))
    if even and any(c % 2 for c in out):
        raise ConfigError(
            f"channels={list(out)}: every width must be even (each level's first convolution has half its width)"
        )
    return out


@torch.jit.interface
class _SequentialModule(nn.Module):
    """TorchScript interface of an ``nn.Sequential`` (``forward(input)``), to index a ModuleList by a variable."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # the argument name must match nn.Sequential's
        pass


class _DoubleConv(nn.Sequential):
    """Two conv-(norm)-(dropout)-ReLU layers and an optional SE block (names ``conv1``, ``conv2``, ``se``)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        norm: str | None,
        bias: bool,
        dropout: float,
        se_type: str | None,
        se_reduction: int,
    ) -> None:
        common = {"spatial_dims": spatial_dims, "kernel_size": 3, "act": "relu", "norm": norm, "bias": bias}
        common["dropout"] = dropout if dropout > 0 else None
        super().__init__()
        self.add_module("conv1", Convolution(in_channels=in_channels, out_channels=mid_channels, **common))
        self.add_module("conv2", Convolution(in_channels=mid_channels, out_channels=out_channels, **common))
        self.add_module("se", make_se_block(spatial_dims, out_channels, se_type, se_reduction))


class UNet3D(nn.Module):
    """The source lecture's 3D U-Net with configurable widths, optional normalisation and optional SE blocks.

    Args:
        spatial_dims: 3 (default) or 2.
        in_channels: input channels, >= 1 (1 for CT).
        out_channels: classes including background, >= 2 (14 for BTCV: background + 13 organs).
        channels: output width of each resolution level, finest first, at least 2 levels, all even; the last is
            the bottleneck. Default ``(64, 128, 256, 512)`` (the lecture). The input size must be a multiple of
            ``2 ** (len(channels) - 1)``.
        norm: ``None`` (default, as the lecture), ``"batch"`` or ``"instance"``.
        bias: convolution bias; default False (the lecture).
        dropout: dropout probability after each convolution, in [0, 1); default 0.
        se_type: squeeze-and-excitation after every level's two convolutions: ``None`` (default), ``"cse"``,
            ``"sse"`` or ``"scse"`` (see :mod:`tlk_components.networks.se`).
        se_reduction: cSE channel reduction, >= 1 (capped at the block's width); default 2.

    Shape:
        input ``(B, in_channels, D, H, W)``; output logits ``(B, out_channels, D, H, W)``.

    Raises:
        ConfigError: any argument outside its range (when the config is parsed).
        ValueError: in ``forward``, a spatial size that is not a multiple of ``2 ** (len(channels) - 1)``.

    Example:
        >>> net = UNet3D(in_channels=1, out_channels=4, channels=(8, 16, 32), norm="instance")
        >>> net(torch.rand(1, 1, 16, 16, 16)).shape
        torch.Size([1, 4, 16, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 14,
        channels: Sequence[int] = (64, 128, 256, 512),
        norm: str | None = None,
        bias: bool = False,
        dropout: float = 0.0,
        se_type: str | None = None,
        se_reduction: int = 2,
    ) -> None:
        super().__init__()
        self.spatial_dims = look_up_option("spatial_dims", spatial_dims, (2, 3))
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels, minimum=2)
        self.channels = _check_channels(channels, minimum_len=2, even=True)
        self.norm = None if norm is None else look_up_option("norm", norm, NORMS)
        self.dropout = check_in_range("dropout", dropout, 0.0, 1.0)
        if self.dropout >= 1.0:
            raise ConfigError(f"dropout={dropout!r}: expected a probability in [0, 1)")
        self.se_type = None if se_type is None else look_up_option("se_type", se_type, SE_TYPES)
        se_reduction = check_positive_int("se_reduction", se_reduction)
        self.divisor = 2 ** (len(self.channels) - 1)
        self._net_name = type(self).__name__  # for the error message of forward (TorchScript has no type(self))

        block = {
            "spatial_dims": spatial_dims,
            "norm": self.norm,
            "bias": bool(bias),
            "dropout": self.dropout,
            "se_type": self.se_type,
            "se_reduction": se_reduction,
        }
        c = self.channels
        self.encoders = nn.ModuleList()
        prev = self.in_channels
        for width in c[:-1]:
            self.encoders.append(_DoubleConv(in_channels=prev, mid_channels=width // 2, out_channels=width, **block))
            prev = width
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)
        self.bottleneck = _DoubleConv(in_channels=prev, mid_channels=c[-1] // 2, out_channels=c[-1], **block)
        self.upsamples = nn.ModuleList(
            Convolution(
                spatial_dims,
                c[i + 1],
                c[i + 1],
                strides=2,
                kernel_size=2,
                act="relu",
                norm=self.norm,
                bias=bool(bias),
                is_transposed=True,
                padding=0,
                output_padding=0,
            )
            for i in range(len(c) - 1)
        )
        self.decoders = nn.ModuleList(
            _DoubleConv(in_channels=c[i] + c[i + 1], mid_channels=c[i], out_channels=c[i], **block)
            for i in range(len(c) - 1)
        )
        self.head = Convolution(spatial_dims, c[0], self.out_channels, kernel_size=1, conv_only=True, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of volumes.

        Args:
            x: ``(B, in_channels, *spatial)``, every spatial size a multiple of ``2 ** (len(channels) - 1)``.

        Returns:
            ``(B, out_channels, *spatial)`` logits.

        Raises:
            ValueError: a spatial size that is not a multiple of ``2 ** (len(channels) - 1)``.
        """
        check_divisible(x, self.divisor, self._net_name)
        skips: list[torch.Tensor] = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for i in range(len(self.decoders) - 1, -1, -1):  # coarsest level first
            if torch.jit.is_scripting():
                # TorchScript indexes a ModuleList with a loop variable only through a module interface (and
                # iterates one only forwards); this branch is compiled, never run, in eager mode
                up: _SequentialModule = self.upsamples[i]
                dec: _SequentialModule = self.decoders[i]
                x = dec.forward(torch.cat([skips[i], up.forward(x)], dim=1))
            else:
                # module calls (not .forward) so that forward hooks, e.g. Grad-CAM's, fire
                x = self.decoders[i](torch.cat([skips[i], self.upsamples[i](x)], dim=1))
        return self.head(x)


class AttentionUNet3D(AttentionUnet):
    """MONAI's Attention U-Net with its arguments validated at construction (weights are MONAI-compatible).

    Each decoder level gates its skip connection with ``x * sigmoid(psi(relu(W_g g + W_x x)))`` (Oktay et al.
    2018, additive attention); the gate coefficients are the outputs of the ``*.attention.psi`` submodules.

    Args:
        spatial_dims: 3 (default) or 2.
        in_channels: input channels, >= 1.
        out_channels: classes including background, >= 2.
        channels: widths, finest first, at least 2; e.g. ``(16, 32, 64, 128)``.
        strides: one downsampling stride per level transition, ``len(channels) - 1`` values >= 1; default all 2.
        kernel_size: convolution kernel size, odd >= 1; default 3.
        up_kernel_size: transposed-convolution kernel size, odd >= 1; default 3.
        dropout: dropout probability in [0, 1); default 0.

    Shape:
        input ``(B, in_channels, *spatial)`` with every spatial size a multiple of ``prod(strides)``;
        output ``(B, out_channels, *spatial)``.

    Raises:
        ConfigError: any argument outside its range.
        ValueError: in ``forward``, a spatial size that is not a multiple of ``prod(strides)``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 14,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] | None = None,
        kernel_size: int = 3,
        up_kernel_size: int = 3,
        dropout: float = 0.0,
    ) -> None:
        look_up_option("spatial_dims", spatial_dims, (2, 3))
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels, minimum=2)
        chans = _check_channels(channels, minimum_len=2, even=True)
        if strides is None:
            strides = (2,) * (len(chans) - 1)
        if isinstance(strides, str | bytes) or not isinstance(strides, Sequence) or len(strides) != len(chans) - 1:
            raise ConfigError(
                f"strides={strides!r}: expected {len(chans) - 1} values (one per level transition of channels={list(chans)})"
            )
        strides = tuple(check_positive_int(f"strides[{i}]", s) for i, s in enumerate(strides))
        for name, k in (("kernel_size", kernel_size), ("up_kernel_size", up_kernel_size)):
            if check_positive_int(name, k) % 2 == 0:
                raise ConfigError(f"{name}={k}: expected an odd kernel size (3 keeps the spatial size)")
        p = check_in_range("dropout", dropout, 0.0, 1.0)
        if p >= 1.0:
            raise ConfigError(f"dropout={dropout!r}: expected a probability in [0, 1)")
        super().__init__(spatial_dims, in_channels, out_channels, chans, strides, kernel_size, up_kernel_size, p)
        self.divisor = 1
        for s in strides:
            self.divisor *= s
        self._net_name = type(self).__name__  # for the error message of forward (TorchScript has no type(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images.

        Args:
            x: ``(B, in_channels, *spatial)``, every spatial size a multiple of ``prod(strides)``.

        Returns:
            ``(B, out_channels, *spatial)`` logits.

        Raises:
            ValueError: a spatial size that is not a multiple of ``prod(strides)``.
        """
        check_divisible(x, self.divisor, self._net_name)
        # MONAI's AttentionUnet.forward is ``self.model(x)``; called directly since TorchScript has no super()
        return self.model(x)
