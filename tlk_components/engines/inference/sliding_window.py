# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Gaussian sliding-window inference of the 3-D segmentation bundles.

:class:`GaussianSlidingWindowInferer` - MONAI sliding window with a Gaussian importance map (sigma = 1/8 of the patch)
and overlap 0.5, as nnU-Net v1's ``predict_3D`` (step 0.5, Gaussian sigma_scale 1/8), plus optional mirroring
test-time augmentation (logits averaged over all flips of the chosen axes; nnU-Net uses all 8 flips).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SlidingWindowInferer

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, check_positive_int

__all__ = ["GaussianSlidingWindowInferer"]


def _first(output: Any) -> torch.Tensor:
    """The segmentation logits of a network output (tensor, or first item of a tuple/list, or ``dict['pred']``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        return output["pred"]
    return output[0]


class GaussianSlidingWindowInferer(Inferer):
    """Sliding-window inference with Gaussian blending and optional mirroring TTA.

    Args:
        roi_size: patch size (x, y, z), each >= 1.
        sw_batch_size: patches per forward pass, >= 1. Default 1.
        overlap: window overlap in [0, 1). Default 0.5 (nnU-Net's step 0.5).
        sigma_scale: Gaussian sigma as a fraction of the patch, in (0, 1]. Default 0.125.
        mirror_axes: spatial axes (0, 1, 2) to mirror for TTA; every subset is run (8 passes for all three).
            Default () (no TTA).
        progress: show a progress bar over windows.

    Shape:
        inputs (B, C, X, Y, Z) -> logits (B, N, X, Y, Z), averaged over the mirror passes.

    Raises:
        ConfigError: an argument out of range.
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        sw_batch_size: int = 1,
        overlap: float = 0.5,
        sigma_scale: float = 0.125,
        mirror_axes: Sequence[int] = (),
        progress: bool = False,
    ) -> None:
        super().__init__()
        roi = [check_positive_int("roi_size[i]", r) for r in roi_size]
        overlap = check_in_range("overlap", overlap, 0.0, 1.0)
        if overlap >= 1.0:
            raise ConfigError(f"overlap={overlap}: expected a value in [0, 1)")
        sigma_scale = check_in_range("sigma_scale", sigma_scale, 0.0, 1.0, low_inclusive=False)
        self.mirror_axes = tuple(int(a) for a in mirror_axes)
        if any(a not in range(len(roi)) for a in self.mirror_axes) or len(set(self.mirror_axes)) != len(
            self.mirror_axes
        ):
            raise ConfigError(f"mirror_axes={list(mirror_axes)}: expected distinct spatial axes in 0..{len(roi) - 1}")
        self.window = SlidingWindowInferer(
            roi_size=roi,
            sw_batch_size=check_positive_int("sw_batch_size", sw_batch_size),
            overlap=overlap,
            mode="gaussian",
            sigma_scale=sigma_scale,
            progress=progress,
        )

    def flips(self) -> list[tuple[int, ...]]:
        """The mirror passes as tuples of tensor dims to flip (the empty tuple is the plain pass)."""
        dims = [a + 2 for a in self.mirror_axes]
        return [c for k in range(len(dims) + 1) for c in itertools.combinations(dims, k)]

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run the network over windows (and mirrors) of ``inputs``; returns averaged logits."""

        def net(x: torch.Tensor) -> torch.Tensor:
            return _first(network(x, *args, **kwargs))

        total = None
        passes = self.flips()
        for dims in passes:
            x = torch.flip(inputs, dims) if dims else inputs
            out = self.window(x, net)
            out = torch.flip(out, dims) if dims else out
            total = out if total is None else total + out
        return total / len(passes)
