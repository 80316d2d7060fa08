# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Feature taps of a segmentation backbone (TLK component 1): intermediate feature maps for the adversaries.

Pretrained weights go through :mod:`tlk_components.adaptation.finetune`, which reports what did not match.

:class:`FeatureTaps` exposes intermediate feature maps through forward hooks, so a network's code is never
edited (TLK subclassed nnU-Net's ``Generic_UNet`` to return its skips; TLlib/TLK's classification path used
``torch.fx``, which fails on data-dependent control flow). :func:`tap_points` names the standard taps
(``encoder`` skips finest first — the bottleneck excluded, as in TLK —, ``bottleneck``, ``decoder`` stages finest
first) for the built-in backbones; for any other network pass module names (``dict(model.named_modules())``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.networks.layers import SkipConnection
from monai.networks.nets import AttentionUnet, DynUNet, FullyConnectedNet, UNet
from torch import nn

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import look_up_option

__all__ = ["FeatureTaps", "tap_points"]


def tap_points(model: nn.Module) -> dict[str, list[str]]:
    """Standard feature taps of a built-in backbone, as module names.

    Returns:
        ``{"encoder": [...], "bottleneck": [...], "decoder": [...]}`` (encoder/decoder finest first); ResNets give
        ``encoder = layer1..layer4``; an MLP gives its hidden layers as ``encoder``.

    Raises:
        ConfigError: a network this function does not know; pass module names to :class:`FeatureTaps` instead.
    """
    if isinstance(model, DynUNet):
        n = len(model.downsamples)
        return {
            "encoder": ["input_block"] + [f"downsamples.{i}" for i in range(n)],
            "bottleneck": ["bottleneck"],
            "decoder": [f"upsamples.{i}" for i in reversed(range(len(model.upsamples)))],
        }
    if isinstance(model, UNet):
        # MONAI UNet nests Sequential(down, SkipConnection(Sequential(...)), up) per level; the innermost
        # SkipConnection wraps the bottom (bottleneck) unit. Encoder = the strided "down" units, decoder = the "up"
        # units that produce features (the last one, ``model.2``, produces the logits), both finest first.
        names = dict(model.named_modules())
        enc, dec, prefix = ["model.0"], [], "model.1"
        while isinstance(names.get(f"{prefix}.submodule.1"), SkipConnection):
            enc.append(f"{prefix}.submodule.0")
            dec.append(f"{prefix}.submodule.2")
            prefix = f"{prefix}.submodule.1"
        return {"encoder": enc, "bottleneck": [f"{prefix}.submodule"], "decoder": dec}
    if isinstance(model, AttentionUnet):
        enc, prefix = ["model.0"], "model.1"
        names = dict(model.named_modules())
        dec = [f"{prefix}"]
        while f"{prefix}.submodule.0" in names and f"{prefix}.submodule.1" in names:
            enc.append(f"{prefix}.submodule.0")
            prefix = f"{prefix}.submodule.1"
            dec.append(prefix)
        return {"encoder": enc, "bottleneck": [f"{prefix}.submodule"], "decoder": dec[::-1]}
    names = dict(model.named_children())
    if all(f"layer{i}" in names for i in range(1, 5)):
        return {"encoder": [f"layer{i}" for i in range(1, 4)], "bottleneck": ["layer4"], "decoder": []}
    if isinstance(model, FullyConnectedNet):
        hidden = [k for k in names if k.startswith("hidden_")]
        return {"encoder": hidden, "bottleneck": hidden[-1:], "decoder": []}
    raise ConfigError(
        f"no standard taps for {type(model).__name__}; pass module names to FeatureTaps, e.g. "
        f"{[k for k, _ in list(model.named_modules())[1:4]]}"
    )


class FeatureTaps:
    """Capture the outputs of named submodules with forward hooks (the network's code is untouched).

    Args:
        model: the network.
        layers: group name -> module names (e.g. ``tap_points(model)``), or a flat list (group ``"features"``).
        detach: store detached tensors (for monitoring); default False (for losses).

    Raises:
        ConfigError: a module name that the model does not have (with the closest existing one).

    Example:
        >>> net = UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
        >>> taps = FeatureTaps(net, tap_points(net))
        >>> _ = net(torch.zeros(1, 1, 8, 8, 8))
        >>> [t.shape[1] for t in taps.pop()["encoder"]]
        [4, 8]
    """

    def __init__(
        self, model: nn.Module, layers: Mapping[str, Sequence[str]] | Sequence[str], detach: bool = False
    ) -> None:
        groups = (
            {"features": list(layers)} if not isinstance(layers, Mapping) else {k: list(v) for k, v in layers.items()}
        )
        modules = dict(model.named_modules())
        self.groups = groups
        self.detach = detach
        self._store: dict[str, torch.Tensor] = {}
        self._handles = []
        for names in groups.values():
            for name in names:
                if name not in modules:
                    look_up_option("feature tap", name, [k for k in modules if k])
                self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple | list) else output
            self._store[name] = out.detach() if self.detach else out

        return hook

    def pop(self) -> dict[str, list[torch.Tensor]]:
        """The maps captured by the last forward pass, grouped, and forget them.

        Raises:
            RuntimeError: a tapped module did not run in the last forward pass.
        """
        missing = [n for names in self.groups.values() for n in names if n not in self._store]
        if missing:
            self._store.clear()
            raise RuntimeError(f"feature taps {missing} were not reached by the last forward pass")
        out = {g: [self._store[n] for n in names] for g, names in self.groups.items()}
        self._store.clear()
        return out

    def clear(self) -> None:
        """Forget stored maps (e.g. after an inference pass whose features are not needed)."""
        self._store.clear()

    def remove(self) -> None:
        """Remove every hook."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._store.clear()
