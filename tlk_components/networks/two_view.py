# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Both co-training view classifiers as one module, with their ensemble as its output.

Co-training (:mod:`tlk_components.engines.trainers.cotraining`) trains one classifier per view; this module holds the pair
so that a bundle has a single ``network_def`` and a single ``models/model.pt`` (state dict keys ``view0.*`` and
``view1.*``), which MONAI's ``verify_net_in_out`` and ``ckpt_export`` (TorchScript) can check.

Input convention: the two views of a sample are **stacked as channels** of one image, view 0 first. With
``view_channels=(c0, c1)`` the input is ``B, c0 + c1, H, W``: channels ``[0, c0)`` go to ``view0``, channels
``[c0, c0 + c1)`` to ``view1``. Both views must therefore have the same spatial size (resize them in the
preprocessing if they differ). For the digits demo: 2 channels of 16x8 pixels, the left half (view 0) and the
right half (view 1) of a digit.

Output: the ensemble, the **mean of the two views' softmax probabilities** (``B, num_classes``, each row sums to
1) — the rule the co-training engine uses to score its ensemble during validation, evaluation and inference.
Each view's own classifier (``.view0``, ``.view1``) returns logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_positive_int

__all__ = ["TwoViewClassifier", "ensemble_probabilities", "two_view_state_dict"]

VIEW_NAMES = ("view0", "view1")


def ensemble_probabilities(probs0: torch.Tensor, probs1: torch.Tensor) -> torch.Tensor:
    """The ensemble of two views: the mean of their class probabilities, ``(probs0 + probs1) / 2``.

    Args:
        probs0: softmax probabilities of view 0, ``B, C``.
        probs1: softmax probabilities of view 1, ``B, C``.

    Returns:
        ``B, C`` probabilities (rows sum to 1 when the inputs' rows do).
    """
    return (probs0 + probs1) / 2


def two_view_state_dict(state0: Mapping[str, Any], state1: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict of a :class:`TwoViewClassifier` from the state dicts of its two view networks.

    Args:
        state0: ``state_dict()`` of the view-0 network (no ``module.`` prefix).
        state1: ``state_dict()`` of the view-1 network.

    Returns:
        ``{"view0.<key>": ..., "view1.<key>": ...}``, loadable with ``TwoViewClassifier.load_state_dict``.
    """
    out: dict[str, Any] = {}
    for name, state in zip(VIEW_NAMES, (state0, state1), strict=True):
        out.update({f"{name}.{k}": v for k, v in state.items()})
    return out


class TwoViewClassifier(nn.Module):
    """Two view classifiers and their ensemble: the ``network_def`` of a co-training bundle.

    Args:
        view0: classifier of view 0, ``B, c0, H, W`` -> logits ``B, num_classes``.
        view1: classifier of view 1, ``B, c1, H, W`` -> logits ``B, num_classes`` (a different module; it may have
            another architecture).
        view_channels: channels of each view in the stacked input, ``(c0, c1)``, or one int for both (default 1).

    Shape:
        input ``B, c0 + c1, H, W``: the two views stacked as channels, view 0 first (module docstring);
        output ``B, num_classes``: the mean of the two views' softmax probabilities.

    Raises:
        ConfigError: a view that is not an ``nn.Module``, the same module for both views, or bad ``view_channels``.

    Example:
        >>> from tlk_components.networks.small_cnn import SmallCNN
        >>> net = TwoViewClassifier(view0=SmallCNN(num_classes=10), view1=SmallCNN(num_classes=10))
        >>> net(torch.zeros(4, 2, 16, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(self, view0: nn.Module, view1: nn.Module, view_channels: int | Sequence[int] = 1) -> None:
        super().__init__()
        for name, view in zip(VIEW_NAMES, (view0, view1), strict=True):
            if not isinstance(view, nn.Module):
                raise ConfigError(
                    f"{name}: expected a torch.nn.Module (the classifier of {name}), got {type(view).__name__}"
                )
        if view0 is view1:
            raise ConfigError("view0 and view1 are the same module; co-training needs one network per view")
        if isinstance(view_channels, int | float) and not isinstance(view_channels, bool):
            view_channels = (view_channels, view_channels)
        if isinstance(view_channels, str) or not isinstance(view_channels, Sequence) or len(view_channels) != 2:
            raise ConfigError(
                f"view_channels={view_channels!r}: expected the channels of each view, (c0, c1), or one int for both"
            )
        c0 = check_positive_int("view_channels[0]", view_channels[0])
        c1 = check_positive_int("view_channels[1]", view_channels[1])
        self.view0 = view0
        self.view1 = view1
        self.view_channels = (c0, c1)
        self.c0 = c0
        self.c1 = c1

    def split_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The view-0 and view-1 images of a stacked input ``B, c0 + c1, H, W``.

        Raises:
            ValueError: the input does not have ``c0 + c1`` channels.
        """
        if x.dim() < 3 or x.shape[1] != self.c0 + self.c1:
            raise ValueError(
                f"expected the two views stacked as channels, B x {self.c0 + self.c1} x H x W (view 0: {self.c0} "
                f"channel(s), then view 1: {self.c1}), got shape {list(x.shape)}"
            )
        return x[:, : self.c0], x[:, self.c0 :]

    def view_probabilities(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax class probabilities of each view's classifier (float32), ``(B x C, B x C)``."""
        x0, x1 = self.split_views(x)
        return torch.softmax(self.view0(x0).float(), dim=1), torch.softmax(self.view1(x1).float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Ensemble probabilities ``B, num_classes`` for the stacked views ``B, c0 + c1, H, W``."""
        probs0, probs1 = self.view_probabilities(x)
        return ensemble_probabilities(probs0, probs1)
