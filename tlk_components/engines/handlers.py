# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Small ignite handlers that wire a bundle's training objects together without config references.

MONAI's ``ConfigWorkflow.check_properties()`` (what MONAI Label, Deploy and FL call) requires every item of
``train#handlers`` to be a dict with a ``_target_``; a string reference such as ``"@train#dataloader"`` crashes it.
These helpers keep the handler list made of dicts:

* :class:`EpochSetter` — an item of ``train#handlers`` that tells a loader or sampler the trainer's epoch, so a
  resumed or multi-process run draws the order the uninterrupted run would (``set_epoch``, as
  ``torch.utils.data.DistributedSampler`` expects).
* :func:`set_validator` — called from ``run``: gives the ``ValidationHandler`` in the trainer's handler list its
  evaluator. The handler cannot name the evaluator in the config, because the evaluator's checkpoint saver names
  the trainer (a reference cycle); MONAI's property check accepts a ``ValidationHandler`` without ``validator``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import ValidationHandler

from tlk_components.utils.errors import ConfigError

__all__ = ["EpochSetter", "set_validator"]


class EpochSetter:
    """Call ``target.set_epoch(engine.state.epoch)`` at every ``EPOCH_STARTED`` of the engine it is attached to.

    Args:
        target: anything with ``set_epoch(int)``: a ``DistributedSampler``, a loader such as
            :class:`~tlk_components.data.mnist.TensorBatchLoader`, or a ``DataLoader`` whose ``sampler`` has
            ``set_epoch`` (the sampler is used then).

    Raises:
        ConfigError: neither ``target`` nor its ``sampler`` has ``set_epoch``.

    Example (config, an item of ``train#handlers``)::

        {"_target_": "tlk_components.engines.handlers.EpochSetter", "target": "@train#dataloader"}
    """

    def __init__(self, target: Any) -> None:
        if hasattr(target, "set_epoch"):
            self.target = target
        elif hasattr(getattr(target, "sampler", None), "set_epoch"):
            self.target = target.sampler
        else:
            raise ConfigError(
                f"EpochSetter: {type(target).__name__} has no set_epoch (nor a sampler with one); pass the "
                "DistributedSampler or a loader with set_epoch"
            )

    def attach(self, engine: Engine) -> None:
        """Register at ``EPOCH_STARTED`` (once)."""
        if not engine.has_event_handler(self._set, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self._set)

    def _set(self, engine: Engine) -> None:
        self.target.set_epoch(engine.state.epoch)


def set_validator(handlers: Iterable[Any] | None, evaluator: Engine) -> ValidationHandler:
    """Give the ``ValidationHandler`` in ``handlers`` its ``evaluator``; returns the handler.

    Args:
        handlers: the trainer's handler list (``@train#handlers``); disabled items (``None``) are skipped.
        evaluator: the validation engine (``@validate#evaluator``).

    Raises:
        ConfigError: no ``ValidationHandler`` in ``handlers`` (say where to add one).
    """
    for h in handlers or ():
        if isinstance(h, ValidationHandler):
            h.set_validator(evaluator)
            return h
    raise ConfigError(
        "train#handlers has no ValidationHandler; add "
        '{"_target_": "ValidationHandler", "interval": "@val_interval", "epoch_level": true} to it'
    )
