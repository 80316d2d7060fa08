# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Atomic checkpoints and resume-from-last for ignite engines.

MONAI's ``CheckpointSaver`` writes with ``atomic=False``; a crash mid-write can leave a truncated ``model.pt``.
:class:`AtomicCheckpointSaver` writes every file through a temporary name and ``os.replace``:

* ``<save_dir>/<key_metric_filename>`` (default ``model.pt``): the network weights at the best validation metric
  (a plain ``state_dict``, loadable with ``torch.load(weights_only=True)`` and by MONAI's ``ckpt_export``);
* ``<save_dir>/<last_filename>`` (default ``checkpoint_last.pt``): everything in ``save_dict`` (network,
  optimizer, scheduler, trainer state) after each epoch, for resuming.

:class:`ResumeFromLast` loads ``checkpoint_last.pt`` when the trainer starts, so re-running the same command
continues where the previous run stopped (delete the file, or pass ``--resume false``, to start over).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from tlk_components.utils.io import atomic_torch_save, load_weights

__all__ = ["AtomicCheckpointSaver", "ResumeFromLast", "unwrap_model"]

logger = logging.getLogger(__name__)


def unwrap_model(obj: Any) -> Any:
    """Strip ``DistributedDataParallel`` / ``DataParallel`` wrappers so saved keys have no ``module.`` prefix."""
    while isinstance(obj, torch.nn.DataParallel | torch.nn.parallel.DistributedDataParallel):
        obj = obj.module
    return obj


def _state(obj: Any) -> Any:
    return unwrap_model(obj).state_dict() if hasattr(obj, "state_dict") else obj


def _is_rank0() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


class AtomicCheckpointSaver:
    """Save the best model and a resumable last checkpoint, atomically, on rank 0 only.

    Args:
        save_dir: folder for the files (created).
        save_dict: named objects with ``state_dict`` (must include ``model``); all go into the last checkpoint.
        save_key_metric: save ``save_dict["model"]`` whenever the evaluator's ``state.metrics[key_metric_name]``
            improves (requires attaching to an evaluator).
        key_metric_name: metric to watch; default the engine's ``state.key_metric_name``.
        key_metric_filename: file name of the best model (default ``model.pt``).
        key_metric_negative_sign: True when lower is better (e.g. a loss).
        save_last: save the last checkpoint at each epoch end of ``trainer``.
        last_filename: file name of the last checkpoint (default ``checkpoint_last.pt``).
        trainer: the engine whose state (epoch, iteration) is saved and whose epochs trigger ``save_last``;
            when None, the engine this handler is attached to.

    Example (config)::

        {"_target_": "tlk_components.engines.checkpoint.AtomicCheckpointSaver", "save_dir": "@ckpt_dir",
         "save_dict": {"model": "@network", "optimizer": "@optimizer"}, "save_key_metric": true,
         "trainer": "@train#trainer"}
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        save_key_metric: bool = True,
        key_metric_name: str | None = None,
        key_metric_filename: str = "model.pt",
        key_metric_negative_sign: bool = False,
        save_last: bool = True,
        last_filename: str = "checkpoint_last.pt",
        trainer: Engine | None = None,
    ) -> None:
        if "model" not in save_dict:
            raise ValueError(
                f'save_dict needs a \'model\' entry (got keys {sorted(save_dict)}); add "model": "@network"'
            )
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_key_metric = save_key_metric
        self.key_metric_name = key_metric_name
        self.key_metric_filename = key_metric_filename
        self.sign = -1.0 if key_metric_negative_sign else 1.0
        self.save_last = save_last
        self.last_filename = last_filename
        self.trainer = trainer
        self.best: float | None = None

    def attach(self, engine: Engine) -> None:
        """Attach to an evaluator (best model on COMPLETED) and to the trainer (last checkpoint per epoch)."""
        trainer = self.trainer if self.trainer is not None else engine
        if self.save_key_metric:
            engine.add_event_handler(Events.COMPLETED, self._save_best)
        if self.save_last and not trainer.has_event_handler(self._save_last, Events.EPOCH_COMPLETED):
            trainer.add_event_handler(Events.EPOCH_COMPLETED, self._save_last)
        self.trainer = trainer

    def _save_best(self, engine: Engine) -> None:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise KeyError(
                f"AtomicCheckpointSaver: metric {name!r} not in evaluator metrics {list(engine.state.metrics)}"
            )
        value = self.sign * float(engine.state.metrics[name])
        if self.best is None and self.trainer is not None:
            # restored by ResumeFromLast (no config reference between the two handlers is needed)
            restored = getattr(self.trainer.state, "tlk_resumed_best_metric", None)
            self.best = None if restored is None else float(restored)
        if self.best is None or value > self.best:
            self.best = value
            if _is_rank0():
                atomic_torch_save(_state(self.save_dict["model"]), self.save_dir / self.key_metric_filename)
                logger.info(
                    f"saved best model ({name}={self.sign * value:.4f}) to {self.save_dir / self.key_metric_filename}"
                )

    def _save_last(self, engine: Engine) -> None:
        if not _is_rank0():
            return
        obj = {k: _state(v) for k, v in self.save_dict.items()}
        obj["trainer"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
        obj["best_metric"] = self.best
        atomic_torch_save(obj, self.save_dir / self.last_filename)


class ResumeFromLast:
    """Load ``<ckpt_dir>/checkpoint_last.pt`` into ``load_dict`` and the trainer's epoch/iteration at start.

    Args:
        ckpt_dir: folder of the last checkpoint.
        load_dict: named objects with ``load_state_dict`` (same names as the saver's ``save_dict``).
        filename: default ``checkpoint_last.pt``.
        enabled: False disables resuming (``--resume false``).
        saver: optional :class:`AtomicCheckpointSaver` whose best metric is restored too. Not needed when the
            saver's ``trainer`` is this engine: the restored value is also stored as ``engine.state.tlk_resumed_best_metric``
            (MONAI engines own ``state.best_metric``),
            where the saver finds it.
        map_location: where tensors are loaded (default CPU; modules then keep their device).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        load_dict: Mapping[str, Any],
        filename: str = "checkpoint_last.pt",
        enabled: bool = True,
        saver: AtomicCheckpointSaver | None = None,
        map_location: str = "cpu",
    ) -> None:
        self.path = Path(ckpt_dir) / filename
        self.load_dict = dict(load_dict)
        self.enabled = bool(enabled)
        self.saver = saver
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled or not self.path.is_file():
            return
        ckpt = load_weights(self.path, map_location=self.map_location)
        missing = [k for k in self.load_dict if k not in ckpt]
        if missing:
            raise KeyError(f"{self.path}: checkpoint lacks {missing}; delete it (or pass --resume false) to start over")
        for k, obj in self.load_dict.items():
            unwrap_model(obj).load_state_dict(ckpt[k])
        engine.state.epoch = int(ckpt["trainer"]["epoch"])
        engine.state.iteration = int(ckpt["trainer"]["iteration"])
        if ckpt.get("best_metric") is not None:
            engine.state.tlk_resumed_best_metric = float(ckpt["best_metric"])
            if self.saver is not None:
                self.saver.best = float(ckpt["best_metric"])
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}")
