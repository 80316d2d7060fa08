# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Task finetuner (TLK component 2): partial weight loading with a report, freezing, layer-wise learning rates.

TLK's ``BasicFinetunner`` copied every tensor whose key and shape matched and logged the rest; nnU-Net's
``load_pretrained_weights`` raised on mismatched ``conv_blocks``. Here nothing is silent: :func:`load_pretrained`
returns a :class:`LoadReport` listing loaded, missing (in the model, not in the checkpoint), unexpected (in the
checkpoint, not in the model) and shape-mismatched keys, after optional name remapping. Weights are read with
``torch.load(weights_only=True)`` (:func:`tlk_components.utils.io.load_weights`).

Patterns (for ``exclude``, freezing and learning-rate multipliers) are ``fnmatch`` patterns over parameter
names, e.g. ``"output_block.*"``, ``"downsamples.0.*"``.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.io import load_weights
from tlk_components.utils.validation import check_in_range

__all__ = ["Finetuner", "LoadReport", "freeze", "load_pretrained", "param_groups", "remap_keys"]

logger = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did, key by key."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model tensor was loaded."""
        return not (self.missing or self.mismatched)

    def summary(self, max_items: int = 10) -> str:
        """Multi-line text: counts, then up to ``max_items`` names per problem kind."""

        def head(items: Sequence[Any]) -> str:
            more = f" ... (+{len(items) - max_items})" if len(items) > max_items else ""
            return ", ".join(str(i) for i in items[:max_items]) + more

        lines = [
            f"loaded {len(self.loaded)} tensors; missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
            f"shape-mismatched {len(self.mismatched)}, excluded {len(self.excluded)}"
        ]
        if self.missing:
            lines.append(f"  missing (kept at initialisation): {head(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {head(self.unexpected)}")
        if self.mismatched:
            lines.append(
                "  shape-mismatched (kept at initialisation): "
                + head([f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched])
            )
        return "\n".join(lines)


def remap_keys(state: StateDict, key_map: Mapping[str, str] | None) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys by prefix (``{"module.": "", "encoder.": "backbone.encoder."}``); first match wins."""
    if not key_map:
        return dict(state)
    out = {}
    for k, v in state.items():
        for old, new in key_map.items():
            if k.startswith(old):
                k = new + k[len(old) :]
                break
        out[k] = v
    return out


def _state_from(source: str | os.PathLike | StateDict | nn.Module, state_key: str | None) -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    obj = load_weights(source) if isinstance(source, str | os.PathLike) else source
    if state_key is not None:
        if state_key not in obj:
            raise ConfigError(f"checkpoint {source}: no entry {state_key!r}; entries: {sorted(obj)[:10]}")
        obj = obj[state_key]
    elif "model" in obj and isinstance(obj["model"], Mapping):  # a resumable checkpoint_last.pt
        obj = obj["model"]
    return dict(obj)


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike | StateDict | nn.Module,
    key_map: Mapping[str, str] | None = None,
    exclude: Sequence[str] = (),
    strict: bool = False,
    state_key: str | None = None,
) -> LoadReport:
    """Copy every checkpoint tensor whose (remapped) name and shape match into ``model``.

    Args:
        model: the network to initialise (modified in place).
        source: a checkpoint path (``state_dict`` or a dict holding one under ``"model"``), a state dict, or a model.
        key_map: prefix renaming applied to checkpoint keys first (see :func:`remap_keys`).
        exclude: patterns of model keys never loaded (e.g. a new head ``"output_block.*"``).
        strict: raise when anything is missing, unexpected or mismatched (default False: report only).
        state_key: take the state dict from this entry of the checkpoint.

    Returns:
        The :class:`LoadReport` (also logged).

    Raises:
        DatasetError: unreadable checkpoint file. ConfigError: ``strict`` and an incomplete match.
    """
    ckpt = remap_keys(_state_from(source, state_key), key_map)
    own = model.state_dict()
    report = LoadReport()
    to_load = {}
    for k, v in own.items():
        if any(fnmatch.fnmatchcase(k, p) for p in exclude):
            report.excluded.append(k)
        elif k not in ckpt:
            report.missing.append(k)
        elif tuple(ckpt[k].shape) != tuple(v.shape):
            report.mismatched.append((k, tuple(ckpt[k].shape), tuple(v.shape)))
        else:
            to_load[k] = ckpt[k]
            report.loaded.append(k)
    report.unexpected = [k for k in ckpt if k not in own]
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise ConfigError(f"pretrained weights do not match the model exactly:\n{report.summary()}")
    model.load_state_dict(to_load, strict=False)
    logger.info("pretrained weights: %s", report.summary())
    return report


def freeze(model: nn.Module, patterns: Sequence[str], frozen: bool = True) -> list[str]:
    """Set ``requires_grad = not frozen`` on parameters matching any pattern; returns their names.

    Raises:
        ConfigError: a pattern that matches no parameter (typo guard).
    """
    names = []
    for p in patterns:
        hits = [n for n, _ in model.named_parameters() if fnmatch.fnmatchcase(n, p)]
        if not hits:
            raise ConfigError(
                f"freeze pattern {p!r} matches no parameter; e.g. {[n for n, _ in model.named_parameters()][:4]}"
            )
        names += hits
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(not frozen)
    return sorted(set(names))


def param_groups(
    model: nn.Module, lr: float, lr_multipliers: Mapping[str, float] | None = None, name: str = "model"
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with layer-wise learning rates; frozen parameters are left out.

    Args:
        model: the network.
        lr: base learning rate > 0.
        lr_multipliers: pattern -> multiplier >= 0 (first matching pattern wins; others get 1).
        name: prefix of the groups' ``"name"`` entries.

    Returns:
        ``[{"params": [...], "lr": lr·m, "name": ...}, ...]``, one group per distinct multiplier (empty groups
        dropped), base group first.

    Raises:
        ConfigError: a pattern matching no trainable parameter.
    """
    lr = check_in_range("lr", lr, 0.0, low_inclusive=False)
    mults = dict(lr_multipliers or {})
    for p, m in mults.items():
        check_in_range(f"lr_multipliers[{p!r}]", m, 0.0)
    buckets: dict[str, list[nn.Parameter]] = {"": []}
    hit = dict.fromkeys(mults, False)
    for n, prm in model.named_parameters():
        if not prm.requires_grad:
            continue
        key = next((p for p in mults if fnmatch.fnmatchcase(n, p)), "")
        if key:
            hit[key] = True
        buckets.setdefault(key, []).append(prm)
    unused = [p for p, h in hit.items() if not h]
    if unused:
        raise ConfigError(f"lr_multipliers patterns {unused} match no trainable parameter of {type(model).__name__}")
    groups = []
    for key, params in buckets.items():
        if params:
            groups.append(
                {"params": params, "lr": lr * (mults[key] if key else 1.0), "name": f"{name}:{key or 'base'}"}
            )
    return groups


class Finetuner:
    """Initialise a network from pretrained weights, freeze layers and build layer-wise LR groups (for configs).

    Args:
        pretrained: checkpoint path, or None to keep the initialisation (e.g. a from-scratch baseline).
        key_map: checkpoint prefix renaming (see :func:`remap_keys`).
        exclude: model-key patterns not loaded.
        frozen: parameter-name patterns to freeze.
        lr_multipliers: pattern -> learning-rate multiplier.
        strict: raise unless the checkpoint matches exactly.

    Example (config)::

        "finetuner": {"_target_": "tlk_components.adaptation.finetune.Finetuner", "pretrained": "@pretrained_path",
                      "lr_multipliers": {"output_block.*": 5.0}},
        "network": "$@finetuner.apply(@network_def).to(@device)",
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@finetuner.param_groups(@network, @learning_rate)"}
    """

    def __init__(
        self,
        pretrained: str | os.PathLike | None = None,
        key_map: Mapping[str, str] | None = None,
        exclude: Sequence[str] = (),
        frozen: Sequence[str] = (),
        lr_multipliers: Mapping[str, float] | None = None,
        strict: bool = False,
    ) -> None:
        self.pretrained = pretrained
        self.key_map = dict(key_map or {})
        self.exclude = list(exclude)
        self.frozen = list(frozen)
        self.lr_multipliers = dict(lr_multipliers or {})
        for p, m in self.lr_multipliers.items():
            check_in_range(f"lr_multipliers[{p!r}]", m, 0.0)
        self.strict = strict
        self.report: LoadReport | None = None

    def apply(self, model: nn.Module) -> nn.Module:
        """Load the weights (when given) and freeze; returns ``model``."""
        if self.pretrained not in (None, ""):
            self.report = load_pretrained(model, self.pretrained, self.key_map, self.exclude, self.strict)
        if self.frozen:
            freeze(model, self.frozen)
        return model

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Parameter groups of ``model`` with this finetuner's multipliers."""
        return param_groups(model, lr, self.lr_multipliers)
