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

Safety rules (one training run per checkpoint folder):

* only the same run is resumed: the last checkpoint records the run's config files and command-line overrides
  (:func:`~tlk_components.utils.runtime.run_fingerprint`; ``--epochs``, ``--learning_rate``, ``--device`` ... may
  change); another ``--dataset_dir``, ``--output_dir`` or config is refused with the fix;
* a second run on the same folder at the same time is refused (lock file ``<ckpt_dir>/.lock``);
* a new (not resumed) run never overwrites an earlier ``model.pt``: it is renamed ``model.pt.bak-<time>`` before the
  first save, and the log says so;
* a checkpoint that does not fit the network (architecture changed) is a clear error naming the file and the fix;
* resuming with another ``--epochs`` / ``--learning_rate`` keeps the optimizer state but rebuilds the learning-rate
  schedule from the current config;
* weights or metrics that are not finite (NaN/Inf) are never saved as the best model.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
from ignite.engine import Engine, Events

from tlk_components.adaptation.transferrable import TransferrableModel
from tlk_components.utils.distributed import is_rank0, unwrap_model
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.io import (
    atomic_torch_save,
    load_state_dict_checked,
    load_weights,
    move_aside,
)
from tlk_components.utils.runtime import run_fingerprint

__all__ = [
    "AtomicCheckpointSaver",
    "FinalModelSaver",
    "ResumeFromLast",
    "RunLock",
    "check_same_run",
    "schedule_settings",
]

logger = logging.getLogger(__name__)


def _state(obj: Any) -> Any:
    return unwrap_model(obj).state_dict() if hasattr(obj, "state_dict") else obj


def all_finite(state: Mapping[str, Any]) -> bool:
    """True when every floating-point tensor of a ``state_dict`` is finite (no NaN/Inf)."""
    return all(
        bool(torch.isfinite(v).all()) for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()
    )


def keep_earlier_model(path: Path, engine: Engine | None) -> None:
    """Before a new run's first write of ``path``: rename an earlier run's file to ``<name>.bak-<time>``.

    Only for a run that :class:`ResumeFromLast` marked as new (``engine.state.tlk_fresh_run``: resuming was off or
    there was nothing to resume); a resumed run's file is its own, and engines without :class:`ResumeFromLast` keep
    their own rules.
    """
    if engine is None or not getattr(engine.state, "tlk_fresh_run", False):
        return
    kept = move_aside(path)
    if kept is not None:
        logger.warning(
            f"{path} was written by an earlier run; kept it as {kept} (this run writes its own {path.name}; "
            "pass --ckpt_dir <folder> to keep runs apart)"
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

        {"_target_": "tlk_components.engines.handlers.checkpoint.AtomicCheckpointSaver", "save_dir": "@ckpt_dir",
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
        self._saved_best: float | None = None  # the best metric in the last checkpoint written
        self._wrote_best = False  # this run wrote the best model (the earlier one is kept aside once)

    def attach(self, engine: Engine) -> None:
        """Attach to an evaluator (best model on COMPLETED) and to the trainer (last checkpoint per epoch)."""
        trainer = self.trainer if self.trainer is not None else engine
        if self.save_key_metric:
            engine.add_event_handler(Events.COMPLETED, self._save_best)
        if self.save_last and not trainer.has_event_handler(self._save_last, Events.EPOCH_COMPLETED):
            trainer.add_event_handler(Events.EPOCH_COMPLETED, self._save_last)
            # a validation after the last epoch's save (the final validation) must reach the last checkpoint too
            trainer.add_event_handler(Events.COMPLETED, self._save_last_if_stale)
        self.trainer = trainer

    def _save_best(self, engine: Engine) -> None:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise KeyError(
                f"AtomicCheckpointSaver: metric {name!r} not in evaluator metrics {list(engine.state.metrics)}"
            )
        value = self.sign * float(engine.state.metrics[name])
        if not math.isfinite(value):
            logger.warning(f"{name}={value}: not a finite number; the best model is not saved")
            return
        if self.best is None and self.trainer is not None:
            # restored by ResumeFromLast (no config reference between the two handlers is needed)
            restored = getattr(self.trainer.state, "tlk_resumed_best_metric", None)
            self.best = None if restored is None else float(restored)
        if self.best is None or value > self.best:
            state = _state(self.save_dict["model"])
            if not all_finite(state):
                logger.error(f"the network's weights are not finite (NaN/Inf); {self.key_metric_filename} is not saved")
                return
            self.best = value
            if is_rank0():
                path = self.save_dir / self.key_metric_filename
                if not self._wrote_best:
                    keep_earlier_model(path, self.trainer)
                    self._wrote_best = True
                atomic_torch_save(state, path)
                logger.info(
                    f"saved best model ({name}={self.sign * value:.4f}) to {self.save_dir / self.key_metric_filename}"
                )

    def _save_last(self, engine: Engine) -> None:
        if not is_rank0():
            return
        obj = {k: _state(v) for k, v in self.save_dict.items()}
        obj["trainer"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
        obj["best_metric"] = self.best
        info = getattr(engine.state, "tlk_run_info", None)
        obj["run_info"] = info if info is not None else run_fingerprint()
        atomic_torch_save(obj, self.save_dir / self.last_filename)
        self._saved_best = self.best

    def _save_last_if_stale(self, engine: Engine) -> None:
        if self.best != self._saved_best and engine.state.epoch > 0:
            self._save_last(engine)


_SCHEDULER_PROGRESS = frozenset({"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial"})


def schedule_settings(state: Mapping[str, Any]) -> dict[str, Any]:
    """A learning-rate scheduler's ``state_dict`` without its progress (step counts, last rates): its settings, which
    resuming compares with the config's to decide whether the schedule restarts."""
    return {k: v for k, v in state.items() if k not in _SCHEDULER_PROGRESS}


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<not set>"), current.get(key, "<not set>")
        if a != b:
            out.append(f"{key}: {a} -> {b}")
    return out


class RunLock:
    """One training run per checkpoint folder: an exclusive, non-blocking ``flock`` on ``<folder>/.lock``.

    Taken on rank 0 only (the other ranks of a ``torchrun`` job belong to the same run) and held until
    :meth:`release` or the end of the process (the operating system drops the lock of a killed process, so a crash
    never leaves the folder locked). The file records the holder's pid for the message.

    Args:
        folder: the checkpoint folder (created).

    Raises:
        ConfigError: (in :meth:`acquire`) another process holds the lock.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock (a no-op when already held, or off rank 0)."""
        if self._file is not None or not is_rank0():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        lock_path = self.folder / ".lock"
        f = open(lock_path, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(
                f"{self.folder} is in use by another training run (lock {lock_path}, held by {holder}); two runs "
                "in one checkpoint folder would overwrite each other's weights. Wait for it to finish, or pass "
                "--ckpt_dir <another folder> to run both at once"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        """Release the lock (a no-op when not held)."""
        if self._file is not None:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            finally:
                self._file.close()
                self._file = None


def check_same_run(path: str | os.PathLike, saved: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> None:
    """Refuse to resume a checkpoint written by another training run.

    Args:
        path: the checkpoint (for the message).
        saved: the run record stored in it (:func:`~tlk_components.utils.runtime.run_fingerprint`), or None.
        current: this run's record, or None (run from Python code: nothing to compare).

    Raises:
        ConfigError: the records differ; names the settings that changed and the two ways out.
    """
    if saved is None or current is None or saved == current:
        return
    diffs = [f"--{d}" for d in _differences(saved.get("overrides", {}), current.get("overrides", {}))]
    diffs += [f"config {d}" for d in _differences(saved.get("configs", {}), current.get("configs", {}))]
    raise ConfigError(
        f"{path} belongs to another training run ({'; '.join(diffs) or 'different settings'}); resuming it "
        "would continue that run instead of this one. Pass --resume false to start this run over in the same "
        "folder (the earlier model.pt is kept as model.pt.bak-<time>), or --ckpt_dir <another folder> to keep "
        "both runs"
    )


class ResumeFromLast:
    """Load ``<ckpt_dir>/checkpoint_last.pt`` into ``load_dict`` and the trainer's epoch/iteration at start.

    At the trainer's start it also locks ``ckpt_dir`` (``<ckpt_dir>/.lock``, held until the run ends) so that a
    second run on the same folder is refused, and marks ``engine.state.tlk_resumed_from`` when it resumed.

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
        run_info: what identifies the run (recorded in the last checkpoint, compared when resuming); default
            :func:`~tlk_components.utils.runtime.run_fingerprint` of the command line.
        lock: lock ``ckpt_dir`` for the duration of the run.

    Raises:
        ConfigError: (when the trainer starts) the folder is locked by another run; the checkpoint was written by
            another run (other dataset, output folder or config); it does not fit the network or optimizer.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        load_dict: Mapping[str, Any],
        filename: str = "checkpoint_last.pt",
        enabled: bool = True,
        saver: AtomicCheckpointSaver | None = None,
        map_location: str = "cpu",
        run_info: Mapping[str, Any] | None = None,
        lock: bool = True,
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.path = self.ckpt_dir / filename
        self.load_dict = dict(load_dict)
        self.enabled = bool(enabled)
        self.saver = saver
        self.map_location = map_location
        self.run_info = dict(run_info) if run_info is not None else run_fingerprint()
        self.lock = bool(lock)
        self._lock = RunLock(self.ckpt_dir)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def acquire(self) -> None:
        """Lock ``<ckpt_dir>/.lock`` (see :class:`RunLock`)."""
        if self.lock:
            self._lock.acquire()

    def release(self, _engine: Engine | None = None) -> None:
        """Release the folder lock (also released when the process ends)."""
        self._lock.release()

    def _check_same_run(self, ckpt: Mapping[str, Any]) -> None:
        check_same_run(self.path, ckpt.get("run_info"), self.run_info)

    def __call__(self, engine: Engine) -> None:
        self.acquire()
        if not engine.has_event_handler(self.release, Events.COMPLETED):
            # registered now, after every handler attached before the run: the files written at completion
            # (final model, last checkpoint) are written while the folder is still locked
            engine.add_event_handler(Events.COMPLETED, self.release)
        engine.state.tlk_run_info = self.run_info
        engine.state.tlk_fresh_run = True
        if not self.enabled or not self.path.is_file():
            return
        ckpt = load_weights(self.path, map_location=self.map_location)
        self._check_same_run(ckpt)
        missing = [k for k in self.load_dict if k not in ckpt]
        if missing:
            raise KeyError(f"{self.path}: checkpoint lacks {missing}; delete it (or pass --resume false) to start over")
        fix = f"Pass --resume false to start over (or delete {self.path})"
        # the learning rates this config asks for, before the optimizer's saved state replaces them
        optimizers = [o for o in self.load_dict.values() if isinstance(o, torch.optim.Optimizer)]
        new_lrs = {id(o): [g.get("initial_lr", g["lr"]) for g in o.param_groups] for o in optimizers}
        schedulers = {k: o for k, o in self.load_dict.items() if isinstance(o, torch.optim.lr_scheduler.LRScheduler)}
        for k, obj in self.load_dict.items():
            if k in schedulers:
                continue
            load_state_dict_checked(unwrap_model(obj), ckpt[k], self.path, name=k, fix=fix)
        for k, sched in schedulers.items():
            self._load_scheduler(k, sched, ckpt[k], new_lrs.get(id(sched.optimizer)), fix)
        for opt in optimizers:
            if any(
                isinstance(s, torch.optim.lr_scheduler.LRScheduler) and s.optimizer is opt for s in schedulers.values()
            ):
                continue
            lrs = new_lrs[id(opt)]
            if [g["lr"] for g in opt.param_groups] != lrs:
                logger.info(f"resume: learning rate {[g['lr'] for g in opt.param_groups]} -> {lrs} (from the config)")
                for g, lr in zip(opt.param_groups, lrs, strict=False):
                    g["lr"] = lr
        engine.state.epoch = int(ckpt["trainer"]["epoch"])
        engine.state.iteration = int(ckpt["trainer"]["iteration"])
        engine.state.tlk_resumed_from = str(self.path)
        engine.state.tlk_fresh_run = False
        if ckpt.get("best_metric") is not None:
            engine.state.tlk_resumed_best_metric = float(ckpt["best_metric"])
            if self.saver is not None:
                self.saver.best = float(ckpt["best_metric"])
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}")

    def _load_scheduler(
        self, name: str, sched: Any, saved: Mapping[str, Any], new_lrs: list[float] | None, fix: str
    ) -> None:
        """Load the scheduler's state, or rebuild it from the config when its settings changed (epochs, lr)."""
        current = sched.state_dict()
        changed = _differences(schedule_settings(saved), schedule_settings(current))
        if not changed:
            load_state_dict_checked(sched, saved, self.path, name=name, fix=fix)
            return
        steps = int(saved.get("last_epoch", 0))
        lrs = list(new_lrs) if new_lrs is not None else list(sched.base_lrs)
        for g, lr in zip(sched.optimizer.param_groups, lrs, strict=False):
            g["lr"] = lr
            g["initial_lr"] = lr
        sched.base_lrs = list(lrs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
            for _ in range(steps):
                sched.step()
        logger.warning(
            f"resume: the {name} settings changed since {self.path} was written ({'; '.join(changed)}); kept the "
            f"optimizer state and rebuilt the schedule from the current config at step {steps} "
            f"(learning rate now {[g['lr'] for g in sched.optimizer.param_groups]})"
        )


class FinalModelSaver:
    """Write the network's ``state_dict`` atomically when training completes (fixed-budget runs keep the last model).

    Args:
        save_dir: folder (created).
        network: the module to save (DDP / TransferrableModel wrappers are unwrapped to the backbone).
        filename: default ``model.pt``.

    A run that did not resume renames an earlier run's file to ``<filename>.bak-<time>`` first (never overwrites it).

    Raises:
        ConfigError: the weights are not finite (nothing is saved).
    """

    def __init__(self, save_dir: str | os.PathLike, network: torch.nn.Module, filename: str = "model.pt") -> None:
        self.path = Path(save_dir) / filename
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        net = unwrap_model(self.network)
        net = net.backbone if isinstance(net, TransferrableModel) else net
        state = net.state_dict()
        if not all_finite(state):
            raise ConfigError(
                f"the network's weights are not finite (NaN/Inf) at the end of training; {self.path} is not saved. "
                "Lower --learning_rate, or check the data for NaN/Inf voxels (tlk verify-dataset)"
            )
        keep_earlier_model(self.path, engine)  # a new run keeps an earlier run's file as <name>.bak-<time>
        atomic_torch_save(state, self.path)
        logger.info(f"saved final model to {self.path}")
