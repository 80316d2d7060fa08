# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Loading trained weights into a network when an engine starts (the one weight loader of every bundle)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from tlk_components.utils.distributed import unwrap_model
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.io import load_weights

__all__ = ["WeightLoader"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------- handlers
class WeightLoader:
    """Load a ``state_dict`` file into a network when the engine starts (``weights_only=True``, clear errors).

    MONAI's ``CheckpointLoader`` with two differences: a missing or damaged file raises a
    :class:`~tlk_components.utils.errors.DatasetError` naming the file and the fix (train first), and
    ``DistributedDataParallel`` wrappers are looked through.

    Args:
        load_path: the weights (``model.pt`` as written by ``AtomicCheckpointSaver``: a plain ``state_dict``, or
            a dict holding it under ``key``).
        network: the module to load into.
        key: entry of a checkpoint dict holding the weights (e.g. ``"model"`` for ``checkpoint_last.pt``);
            None loads the file as the state_dict itself.
        map_location: default ``"cpu"``.
        strict: passed to ``load_state_dict``. Default True.
    """

    def __init__(
        self,
        load_path: str | os.PathLike,
        network: torch.nn.Module,
        key: str | None = None,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
    ) -> None:
        self.load_path, self.network, self.key = Path(load_path), network, key
        self.map_location, self.strict = map_location, strict

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        state = load_weights(self.load_path, map_location=self.map_location)
        if self.key is not None:
            if self.key not in state:
                raise KeyError(f"{self.load_path}: no entry {self.key!r} (entries: {sorted(state)}); pass key=None")
            state = state[self.key]
        try:
            unwrap_model(self.network).load_state_dict(state, strict=self.strict)
        except RuntimeError as e:
            raise ConfigError(
                f"{self.load_path}: weights do not fit the network ({str(e).splitlines()[0][:200]}); the configs' "
                "network_def must be the one the weights were trained with"
            ) from None
        logger.info(f"loaded weights from {self.load_path}")
