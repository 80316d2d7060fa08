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
  Given the trainer, it also validates after the last epoch when that epoch falls between validation intervals,
  so every run that trained ends with a validated (and saved) best model.
* :class:`StopOnNonFiniteLoss` — an item of ``train#handlers``: stops training with a clear error (non-zero exit)
  at the first NaN/Inf loss, before anything of that iteration is saved.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import TerminateOnNan
from monai.handlers import ValidationHandler

from tlk_components.utils.errors import ConfigError, TLKError

__all__ = ["EpochSetter", "NonFiniteLossError", "StopOnNonFiniteLoss", "set_validator", "validate_last_epoch"]

logger = logging.getLogger(__name__)


class EpochSetter:
    """Call ``target.set_epoch(engine.state.epoch)`` at every ``EPOCH_STARTED`` of the engine it is attached to.

    Args:
        target: anything with ``set_epoch(int)``: a ``DistributedSampler``, a loader such as
            :class:`~tlk_components.data.mnist.TensorBatchLoader`, or a ``DataLoader`` whose ``sampler`` has
            ``set_epoch`` (the sampler is used then).

    Raises:
        ConfigError: neither ``target`` nor its ``sampler`` has ``set_epoch``.

    Example (config, an item of ``train#handlers``)::

        {"_target_": "tlk_components.engines.handlers.training.EpochSetter", "target": "@train#dataloader"}
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


def set_validator(
    handlers: Iterable[Any] | None, evaluator: Engine | None, trainer: Engine | None = None
) -> ValidationHandler:
    """Give the ``ValidationHandler`` in ``handlers`` its ``evaluator``; returns the handler.

    Args:
        handlers: the trainer's handler list (``@train#handlers``); disabled items (``None``) are skipped.
        evaluator: the validation engine (``@validate#evaluator``); None keeps the handler's own.
        trainer: the training engine (``@train#trainer``); when given, the last epoch is validated too when it
            falls between intervals (:func:`validate_last_epoch`).

    Raises:
        ConfigError: no ``ValidationHandler`` in ``handlers`` (say where to add one).
    """
    for h in handlers or ():
        if isinstance(h, ValidationHandler):
            if evaluator is not None:
                h.set_validator(evaluator)
            if trainer is not None:
                validate_last_epoch(trainer, h)
            return h
    raise ConfigError(
        "train#handlers has no ValidationHandler; add "
        '{"_target_": "ValidationHandler", "interval": "@val_interval", "epoch_level": true} to it'
    )


def validate_last_epoch(trainer: Engine, handler: ValidationHandler) -> None:
    """Run ``handler``'s validation after the trainer's last epoch when its interval skipped that epoch (once).

    ``ValidationHandler(interval=5)`` with ``--epochs 7`` validates at epoch 5 only, so epochs 6-7 are never
    evaluated and a run shorter than the interval never saves a best model (inference then finds no ``model.pt``).
    This registers, after the handlers already attached (the last-checkpoint saver among them), an
    ``EPOCH_COMPLETED`` handler that validates the final epoch (``max_epochs``, or an epoch at which training was
    told to stop) unless the interval already did; a resumed run that trains no further epoch validates nothing.

    Args:
        trainer: the training engine.
        handler: its ``ValidationHandler`` (with a validator).
    """
    if getattr(handler, "_tlk_final_attached", False):
        return
    handler._tlk_final_attached = True  # type: ignore[attr-defined]

    def _final(engine: Engine) -> None:
        last = engine.state.epoch >= (engine.state.max_epochs or 0) or engine.should_terminate
        if not last:
            return
        count = engine.state.epoch if handler.epoch_level else engine.state.iteration
        if handler.interval > 0 and count % handler.interval == 0:
            return  # the interval validated it
        logger.info(f"validating the last epoch ({engine.state.epoch}), which the interval {handler.interval} skipped")
        handler(engine)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, _final)


class NonFiniteLossError(TLKError, FloatingPointError):
    """The training loss became NaN or infinite."""


def _loss_of(output: Any) -> Any:
    if isinstance(output, Mapping):
        return output.get("loss", output)
    if isinstance(output, list | tuple) and output and isinstance(output[0], Mapping) and "loss" in output[0]:
        return output[0]["loss"]
    return output


class StopOnNonFiniteLoss(TerminateOnNan):
    """Stop training at the first non-finite loss with a clear error (ignite's ``TerminateOnNan``, but failing).

    ignite's handler only terminates the run, which then ends "successfully" (exit code 0) and, through the
    handlers that run at completion, may save NaN weights. This one raises :class:`NonFiniteLossError` at
    ``ITERATION_COMPLETED``, naming the epoch and iteration and what to check, so nothing of that iteration is
    saved (the last checkpoint and the best model stay those of the last good epoch) and the process exits non-zero.

    Args:
        output_transform: picks the values to check from ``engine.state.output``; default the ``"loss"`` entry
            (of a dict, or of the first dict of a decollated list), else the whole output.

    Example (config, an item of ``train#handlers``)::

        {"_target_": "tlk_components.engines.handlers.training.StopOnNonFiniteLoss"}
    """

    def __init__(self, output_transform: Callable[[Any], Any] = _loss_of) -> None:
        super().__init__(output_transform=output_transform)

    def attach(self, engine: Engine) -> None:
        """Register at ``ITERATION_COMPLETED`` (once)."""
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = self._output_transform(engine.state.output)
        values = output.values() if isinstance(output, Mapping) else [output]
        for v in values:
            if isinstance(v, numbers.Number):
                bad = not math.isfinite(float(v))
            elif isinstance(v, torch.Tensor):
                bad = bool(v.is_floating_point() and not torch.isfinite(v.detach()).all())
            else:
                continue
            if bad:
                engine.terminate()
                raise NonFiniteLossError(
                    f"training loss is {v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v} at epoch "
                    f"{engine.state.epoch}, iteration {engine.state.iteration}: training stopped, nothing of this "
                    "epoch was saved. Check the data for NaN/Inf values (tlk verify-dataset), lower --learning_rate, "
                    "or turn off --amp; then rerun (it resumes from the last good epoch) or pass --resume false"
                )
