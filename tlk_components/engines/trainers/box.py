# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Training engine for slice-wise box localization.

:class:`BoxTrainer` - MONAI ``SupervisedTrainer`` whose iteration feeds a batch of slices with flat anchor targets
(``BoxTargetsd``) through the network and a loss returning ``{"classification", "bbox_regression"}``; its output
is ``{"loss", "classification", "bbox_regression"}`` (detached scalars), read by the progress bar,
``StatsHandler`` (``output_transform=loss_terms``) and ``LossCurvePlotter``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_positive_int

__all__ = ["TARGET_KEYS", "BoxTrainer", "loss_terms", "plain_tensor"]


TARGET_KEYS = ("cls_target", "cls_weight", "reg_target", "reg_weight")


def plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor (MONAI transforms may return ``MetaTensor``; metadata is not needed for boxes)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def loss_terms(output: Mapping[str, Any]) -> dict[str, float]:
    """``StatsHandler``/TensorBoard ``output_transform``: the trainer output as ``{name: float}``."""
    return {k: float(v) for k, v in output.items() if k in ("loss", "classification", "bbox_regression")}


class BoxTrainer(SupervisedTrainer):
    """Slice-wise RetinaNet trainer (MONAI ``SupervisedTrainer`` with a box iteration).

    Args:
        device: training device.
        max_epochs: epochs, >= 1.
        train_data_loader: batches ``{"image": [B, C, H, W], "cls_target", "cls_weight", "reg_target",
            "reg_weight"}`` (from ``BoxTargetsd``).
        network: a module returning ``{"classification": [...], "box_regression": [...]}`` (``BoxFPN``).
        optimizer: the optimizer.
        loss_function: :class:`~tlk_components.losses.focal.BoxLocalizationLoss` (returns the two named terms and
            has ``total``).
        amp: mixed precision on CUDA (ignored on CPU). Default False.
        kwargs: passed to ``SupervisedTrainer`` (``train_handlers``, ``epoch_length``, ...); ``decollate`` is
            always False (the output is a dict of scalars).
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Any,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: torch.nn.Module,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        if not hasattr(loss_function, "total"):
            raise ConfigError(
                f"loss_function={type(loss_function).__name__}: expected a BoxLocalizationLoss (with .total); use "
                "tlk_components.losses.focal.BoxLocalizationLoss"
            )
        device = torch.device(device)
        kwargs["decollate"] = False
        super().__init__(
            device=device,
            max_epochs=check_positive_int("max_epochs", max_epochs),
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            amp=bool(amp) and device.type == "cuda",
            **kwargs,
        )

    def _iteration(self, engine: Any, batchdata: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        missing = [k for k in ("image", *TARGET_KEYS) if k not in batchdata]
        if missing:
            raise KeyError(
                f"training batch lacks {missing}; add tlk_components.boxes.targets.BoxTargetsd to the transforms"
            )
        image = plain_tensor(batchdata["image"]).to(engine.state.device, non_blocking=engine.non_blocking).float()
        targets = {
            k: plain_tensor(batchdata[k]).to(engine.state.device, non_blocking=engine.non_blocking) for k in TARGET_KEYS
        }
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", enabled=bool(engine.amp)):
            outputs = engine.inferer(image, engine.network)
            terms = engine.loss_function(outputs, targets)
            loss = engine.loss_function.total(terms)
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.optimizer.step()
        return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
