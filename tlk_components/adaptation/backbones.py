# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Backbone factory and feature taps (TLK component 1).

:func:`build_backbone` turns a name (``"dynunet"``, ``"unet"``, ``"attention_unet"``, ``"resnet18/34/50"``,
``"mlp"``) or any importable class path (``"monai.networks.nets.SegResNet"``, ``"my_pkg.MyNet"``) plus keyword
arguments into a network. TLK's ``createBackbone`` loaded ``pretrain`` with ``strict=True``; here pretrained
weights go through :mod:`tlk_components.adaptation.finetune`, which reports what did not match.

:class:`FeatureTaps` exposes intermediate feature maps through forward hooks, so a network's code is never
edited (TLK subclassed nnU-Net's ``Generic_UNet`` to return its skips; TLlib/TLK's classification path used
``torch.fx``, which fails on data-dependent control flow). :func:`tap_points` names the standard taps
(``encoder`` skips finest first — the bottleneck excluded, as in TLK —, ``bottleneck``, ``decoder`` stages finest
first) for the built-in backbones; for any other network pass module names (``dict(model.named_modules())``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.networks.layers import SkipConnection
from monai.networks.nets import AttentionUnet, DynUNet, FullyConnectedNet, UNet, resnet18, resnet34, resnet50
from torch import nn

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_positive_int, look_up_option

__all__ = ["BACKBONES", "FeatureTaps", "build_backbone", "build_dynunet", "tap_points"]


def build_dynunet(
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    filters: Sequence[int] = (8, 16, 32, 64),
    strides: Sequence[int | Sequence[int]] = (1, 2, 2, 2),
    kernel_size: int = 3,
    norm_name: str = "instance",
    deep_supervision: bool = False,
) -> DynUNet:
    """An nnU-Net-style 3D U-Net (MONAI ``DynUNet``) from a short description.

    Args:
        spatial_dims: 2 or 3 (default 3).
        in_channels: image channels >= 1 (default 1).
        out_channels: classes incl. background >= 2 (default 2).
        filters: channels per level, finest first (default ``(8, 16, 32, 64)``; nnU-Net/TLK: 30..320).
        strides: stride per level; the first is usually 1 (default ``(1, 2, 2, 2)``); same length as ``filters``.
        kernel_size: convolution kernel (default 3).
        norm_name: ``"instance"`` (default, as nnU-Net) or ``"batch"``.
        deep_supervision: DynUNet's deep-supervision outputs in training mode (default False).

    Raises:
        ConfigError: ``filters`` and ``strides`` of different lengths, or fewer than 3 levels.
    """
    filters = [check_positive_int("filters[i]", f) for f in filters]
    strides = list(strides)
    if len(filters) != len(strides) or len(filters) < 3:
        raise ConfigError(
            f"filters={filters} and strides={strides}: expected lists of the same length >= 3 (one entry per level)"
        )
    look_up_option("norm_name", norm_name, ["instance", "batch"])
    return DynUNet(
        spatial_dims=spatial_dims,
        in_channels=check_positive_int("in_channels", in_channels),
        out_channels=check_positive_int("out_channels", out_channels, 2),
        kernel_size=[kernel_size] * len(filters),
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=filters,
        norm_name=norm_name,
        deep_supervision=deep_supervision,
        res_block=False,
    )


def _resnet(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(spatial_dims: int = 3, in_channels: int = 1, num_classes: int = 2, **kw: Any) -> nn.Module:
        return factory(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes, **kw)

    return build


def _mlp(in_channels: int, out_channels: int, hidden_channels: Sequence[int] = (256, 128), **kw: Any) -> nn.Module:
    return FullyConnectedNet(in_channels, out_channels, list(hidden_channels), **kw)


#: name -> builder taking keyword arguments.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "dynunet": build_dynunet,
    "unet": UNet,
    "attention_unet": AttentionUnet,
    "resnet18": _resnet(resnet18),
    "resnet34": _resnet(resnet34),
    "resnet50": _resnet(resnet50),
    "mlp": _mlp,
}


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a backbone from a registered name or an importable class/function path.

    Args:
        name: a key of :data:`BACKBONES`, or ``"package.module.Class"``.
        kwargs: the builder's keyword arguments.

    Returns:
        The network (``nn.Module``).

    Raises:
        ConfigError: unknown name (with the closest registered one), an unimportable path, or arguments the
            builder rejects.

    Example:
        >>> net = build_backbone("dynunet", filters=(4, 8, 16), strides=(1, 2, 2))
        >>> type(net).__name__
        'DynUNet'
    """
    if name in BACKBONES:
        builder = BACKBONES[name]
    elif "." in name:
        module, _, attr = name.rpartition(".")
        try:
            builder = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"backbone {name!r}: cannot import ({e}); give 'package.module.Class'") from None
    else:
        look_up_option("backbone name", name, sorted(BACKBONES))
        raise AssertionError("unreachable")  # pragma: no cover
    try:
        net = builder(**kwargs)
    except TypeError as e:
        raise ConfigError(f"backbone {name!r}: bad arguments {sorted(kwargs)} ({e})") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"backbone {name!r} returned {type(net).__name__}, expected a torch.nn.Module")
    return net


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
        >>> net = build_backbone("dynunet", filters=(4, 8, 16), strides=(1, 2, 2))
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
