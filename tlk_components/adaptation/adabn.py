# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""AdaBN: re-estimate BatchNorm statistics on target images (label-free).

Li, Wang, Shi, Liu, Hou, "Revisiting Batch Normalization For Practical Domain Adaptation" (ICLR-W 2017): a network
trained on the source is adapted by replacing every BatchNorm layer's running mean/variance with the statistics of
the target data; no weight changes and no label. Here it is also the last step of the default adaptation: during
label-free training the running statistics are an exponential average over the last few batches, taken while the
weights were still moving, so they are re-estimated once on all target training images with the final weights.

The estimate is PyTorch's :func:`torch.optim.swa_utils.update_bn` (cumulative average over all batches, then the
network's train/eval mode is restored); this module only feeds it the images of a dict-yielding MONAI loader.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch.optim.swa_utils import update_bn

from tlk_components.utils.distributed import unwrap_model

__all__ = ["BatchNormRecalibration", "count_batchnorm", "recalibrate_batchnorm"]

logger = logging.getLogger(__name__)


def count_batchnorm(network: torch.nn.Module) -> int:
    """Number of BatchNorm layers (1D/2D/3D, SyncBatchNorm) that keep running statistics."""
    return sum(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in network.modules()
    )


def _images(batches: Iterable[Any], image_key: str, device: torch.device | None) -> Iterator[torch.Tensor]:
    for batch in batches:
        x = batch[image_key] if isinstance(batch, Mapping) else batch
        if isinstance(x, list | tuple):
            x = x[0]
        x = torch.as_tensor(x)
        yield x.to(device) if device is not None else x


def recalibrate_batchnorm(
    network: torch.nn.Module,
    batches: Iterable[Any],
    image_key: str = "image",
    device: torch.device | str | None = None,
) -> int:
    """Replace the running mean/variance of every BatchNorm layer by their average over ``batches``.

    Args:
        network: the network (a ``DistributedDataParallel`` wrapper is unwrapped). Its weights are not changed.
        batches: target data: dicts holding ``image_key`` (a MONAI ``DataLoader``), or tensors ``(N, C, *S)``.
        image_key: the image entry of dict batches (default ``"image"``).
        device: where the images go (default: where they are).

    Returns:
        The number of BatchNorm layers re-estimated (0 for a network without BatchNorm, e.g. instance norm: nothing
        is done).

    Raises:
        KeyError: a dict batch without ``image_key``.
    """
    net = unwrap_model(network)
    n = count_batchnorm(net)
    if n:
        with torch.no_grad():
            update_bn(_images(batches, image_key, torch.device(device) if device is not None else None), net)
    return n


class BatchNormRecalibration:
    """Ignite handler: AdaBN on the target images when training completes (before the final model is saved).

    Attach it before the handler that saves the final network, so that the saved weights carry the new statistics.

    Args:
        loader: target images (a MONAI ``DataLoader`` of dicts); with ``DistributedSampler`` each rank sees its share.
        network: the network being adapted.
        image_key: image entry of the batches (default ``"image"``).
        device: where the images go (default: where the loader puts them).
        enabled: False turns the handler into a no-op (config switch), default True.
    """

    def __init__(
        self,
        loader: Iterable[Any],
        network: torch.nn.Module,
        image_key: str = "image",
        device: torch.device | str | None = None,
        enabled: bool = True,
    ) -> None:
        self.loader = loader
        self.network = network
        self.image_key = image_key
        self.device = device
        self.enabled = bool(enabled)

    def attach(self, engine: Engine) -> None:
        """Run at ``Events.COMPLETED`` of ``engine``."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, _engine: Engine) -> None:
        if not self.enabled:
            return
        n = recalibrate_batchnorm(self.network, self.loader, self.image_key, self.device)
        if n:
            logger.info(f"AdaBN: re-estimated the statistics of {n} BatchNorm layers on the target images")
        else:
            logger.info("AdaBN: the network has no BatchNorm layer; nothing to re-estimate")
