# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Domain-adaptation trainer: one source batch and one target batch per iteration, named weighted losses.

As TLK's ``nnUNetTrainer_DA_V2`` (``../shared/reference/domain_adaptation.md`` 1.4): each iteration draws a
labelled source batch and an unlabelled target batch, runs
:meth:`~tlk_components.adaptation.transferrable.TransferrableModel.compute_losses`, back-propagates the weighted
total, clips the gradient norm (TLK: 12), steps the optimizer (parameter groups for segmenter and discriminator)
and advances the gradient-reversal schedule once. AMP is used when the device is CUDA.

Target LABELS are never read: :class:`PairedLoader` passes the target batch through untouched, the trainer reads
only its image key (and a label only when ``target_seg`` has a weight > 0, which this bundle never sets), and the
bundle's target datalist has no label entries at all.

Also here: :class:`PairedLoader`, the label-free stopping rule :class:`LossPlateauStopping`,
:class:`FinalModelSaver` (atomic ``model.pt`` at the end of a fixed-budget run) and :class:`MetricHistoryRecorder`
(wall time and metric at every validation, for the benchmark's time-to-best).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import Trainer
from monai.engines.utils import IterationEvents

from tlk_components.adaptation.transferrable import TransferrableModel
from tlk_components.engines.checkpoint import all_finite, keep_earlier_model, unwrap_model
from tlk_components.engines.handlers import EpochSetter
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.io import atomic_torch_save, atomic_write_json
from tlk_components.utils.validation import check_in_range, check_positive_int

__all__ = [
    "DomainAdaptationTrainer",
    "FinalModelSaver",
    "LossPlateauStopping",
    "MetricHistoryRecorder",
    "PairedLoader",
    "WallTimeRecorder",
]

logger = logging.getLogger(__name__)


class PairedLoader:
    """Iterate ``{"source": batch, "target": batch}`` pairs; the shorter loader is cycled.

    Args:
        source_loader: labelled source batches, or None when no active loss needs them (target-only adapters).
        target_loader: unlabelled target batches, or None.
        epoch_length: iterations per epoch, >= 1 (default: the longer loader's length).

    Raises:
        ConfigError: both loaders None, or a loader with no batches.

    Multi-process runs: :meth:`set_epoch` (called by :class:`DomainAdaptationTrainer` at every epoch start, as
    MONAI's trainers do for a ``DataLoader`` with a ``DistributedSampler``) reseeds both loaders' samplers, so
    every epoch, and every further pass of the shorter loader within an epoch, draws a new order.
    """

    def __init__(
        self, source_loader: Iterable | None, target_loader: Iterable | None, epoch_length: int | None = None
    ) -> None:
        if source_loader is None and target_loader is None:
            raise ConfigError("PairedLoader: give a source_loader, a target_loader or both")
        self.loaders = {"source": source_loader, "target": target_loader}
        lengths = []
        for name, loader in self.loaders.items():
            if loader is not None and hasattr(loader, "__len__"):
                if len(loader) == 0:
                    raise ConfigError(f"PairedLoader: the {name} loader has no batches; check the {name} datalist")
                lengths.append(len(loader))
        if epoch_length is None and not lengths:
            raise ConfigError("PairedLoader: give epoch_length for loaders without a length")
        self.epoch_length = check_positive_int("epoch_length", epoch_length) if epoch_length else max(lengths)
        self._iters: dict[str, Iterator | None] = {"source": None, "target": None}
        self._epoch: int | None = None
        self._passes = {"source": 0, "target": 0}

    def __len__(self) -> int:
        return self.epoch_length

    def set_epoch(self, epoch: int) -> None:
        """Seed the next passes of both loaders from the trainer's ``epoch``.

        Forwards to each loader's ``set_epoch`` (or its ``sampler``'s, e.g. a ``DistributedSampler``); loaders
        without one (a plain shuffling ``DataLoader``) are left alone. The k-th pass started in this epoch gets the
        sampler epoch ``epoch * passes_per_epoch + k``, so passes never repeat an order.

        Args:
            epoch: the trainer's epoch (``engine.state.epoch``).
        """
        self._epoch = int(epoch)
        self._passes = {"source": 0, "target": 0}

    def _seed_pass(self, name: str, loader: Iterable) -> None:
        if self._epoch is None:
            return
        target = loader if hasattr(loader, "set_epoch") else getattr(loader, "sampler", None)
        if not hasattr(target, "set_epoch"):
            return
        n = len(loader) if hasattr(loader, "__len__") else 1
        passes_per_epoch = -(-self.epoch_length // max(n, 1)) + 1  # ceil, +1 for a pass carried over
        target.set_epoch(self._epoch * passes_per_epoch + self._passes[name])
        self._passes[name] += 1

    def _next(self, name: str) -> Any:
        loader = self.loaders[name]
        if loader is None:
            return None
        it = self._iters[name]
        if it is not None:
            try:
                return next(it)
            except StopIteration:
                pass
        self._seed_pass(name, loader)
        it = iter(loader)
        self._iters[name] = it
        return next(it)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _ in range(self.epoch_length):
            yield {"source": self._next("source"), "target": self._next("target")}


class DomainAdaptationTrainer(Trainer):
    """MONAI/ignite trainer optimising a :class:`TransferrableModel`'s weighted losses.

    Args:
        device: torch device.
        max_epochs: epochs >= 1 (the budget: ``max_epochs · epoch_length`` iterations).
        train_data_loader: a :class:`PairedLoader`.
        model: the :class:`TransferrableModel`.
        optimizer: over ``model.param_groups(...)`` (segmenter and discriminator groups).
        grad_clip: max gradient norm > 0, or 0 to disable (default 12, nnU-Net/TLK).
        amp: mixed precision; only on CUDA (ignored on CPU).
        epoch_length: iterations per epoch (default ``len(train_data_loader)``).
        image_key, label_key: batch keys (default ``"image"``, ``"label"``).
        train_handlers: ignite/MONAI handlers.

    Output (``engine.state.output``): ``{"loss": total, <term>: value, "grl_coeff": λ}`` as floats.

    Raises:
        ConfigError: ``model`` is not a TransferrableModel, or bad ranges.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: PairedLoader | Iterable,
        model: TransferrableModel,
        optimizer: torch.optim.Optimizer,
        grad_clip: float = 12.0,
        amp: bool = False,
        epoch_length: int | None = None,
        image_key: str = "image",
        label_key: str = "label",
        train_handlers: Sequence | None = None,
    ) -> None:
        if not isinstance(unwrap_model(model), TransferrableModel):
            raise ConfigError(f"model: expected a TransferrableModel, got {type(model).__name__}")
        device = torch.device(device)
        use_amp = bool(amp) and device.type == "cuda"
        super().__init__(
            device=device,
            max_epochs=check_positive_int("epochs", max_epochs),
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            handlers=train_handlers,
            amp=use_amp,
            decollate=False,
        )
        self.model = model
        self.network = model  # for handlers that look for engine.network
        self.optimizer = optimizer
        self.grad_clip = check_in_range("grad_clip", grad_clip, 0.0)
        self.image_key, self.label_key = image_key, label_key
        if hasattr(train_data_loader, "set_epoch"):  # a new shuffle every epoch under DDP (as MONAI's Workflow)
            EpochSetter(train_data_loader).attach(self)

    def _to(self, batch: Mapping[str, Any] | None, key: str) -> torch.Tensor | None:
        if batch is None:
            return None
        return torch.as_tensor(batch[key]).to(self.state.device, non_blocking=self.non_blocking)

    def _iteration(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict[str, float]:
        model = unwrap_model(self.model)
        src, tgt = batchdata.get("source"), batchdata.get("target")
        xs, ys = self._to(src, self.image_key), self._to(src, self.label_key)
        xt = self._to(tgt, self.image_key)
        yt = self._to(tgt, self.label_key) if model.active("target_seg") else None  # never in label-free runs
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.state.device.type, enabled=self.amp):
            losses = model.compute_losses(xs, ys, xt, yt)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        total = losses["total"]
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"iteration {engine.state.iteration}: loss is {float(total)} ({ {k: float(v) for k, v in losses.items()} }); "
                "lower the learning rate or the adversarial weights"
            )
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if self.grad_clip > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        out = {("loss" if k == "total" else k): float(v.detach()) for k, v in losses.items()}
        grl = getattr(model.encoder_adversary or model.decoder_adversary, "grl", None)
        if grl is not None:
            out["grl_coeff"] = float(grl.coeff)  # the λ this iteration used
        model.step()
        return out


class LossPlateauStopping:
    """Label-free stopping rule: stop when an epoch-mean training loss stops improving.

    After every epoch, the mean of ``output[loss_key]`` over the epoch is compared with the best so far; if it has
    not improved by more than ``min_delta`` (relative) for ``patience`` epochs, the trainer terminates. Uses only
    training losses (no target labels).

    Args:
        loss_key: key of the trainer output (default ``"loss"``).
        patience: epochs without improvement, >= 1 (default 2).
        min_delta: relative improvement that counts, in [0, 1) (default 0.01).
        min_epochs: never stop before this epoch (default 1).
    """

    def __init__(self, loss_key: str = "loss", patience: int = 2, min_delta: float = 0.01, min_epochs: int = 1) -> None:
        self.loss_key = loss_key
        self.patience = check_positive_int("patience", patience)
        self.min_delta = check_in_range("min_delta", min_delta, 0.0, 0.999)
        self.min_epochs = check_positive_int("min_epochs", min_epochs)
        self.best = math.inf
        self.bad = 0
        self._values: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check)

    def _record(self, engine: Engine) -> None:
        out = engine.state.output
        if isinstance(out, Mapping) and self.loss_key in out:
            self._values.append(float(out[self.loss_key]))

    def _check(self, engine: Engine) -> None:
        if not self._values:
            return
        mean = sum(self._values) / len(self._values)
        self._values.clear()
        if mean < self.best - self.min_delta * abs(self.best if math.isfinite(self.best) else mean):
            self.best, self.bad = mean, 0
        else:
            self.bad += 1
        if self.bad >= self.patience and engine.state.epoch >= self.min_epochs:
            logger.info(
                f"label-free stop: {self.loss_key} has not improved for {self.bad} epoch(s) (best {self.best:.4f})"
            )
            engine.terminate()


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


class MetricHistoryRecorder:
    """Record ``(epoch, iteration, training seconds, metric)`` after every validation.

    Attach to the TRAINER (the clock starts at its STARTED event); it listens to ``evaluator``'s STARTED/COMPLETED
    events. ``time_s`` is the wall time since training started MINUS the time spent in validation (so a baseline
    is not charged for being evaluated often). Writes ``output_path`` (JSON) after each validation, with ``best``
    and ``time_to_best_s`` (the first time the best value was reached).

    Args:
        evaluator: the validation engine.
        output_path: JSON file.
        metric_name: evaluator metric (default: the evaluator's key metric).
    """

    def __init__(self, evaluator: Engine, output_path: str | os.PathLike, metric_name: str | None = None) -> None:
        self.evaluator = evaluator
        self.path = Path(output_path)
        self.metric_name = metric_name
        self.t0: float | None = None
        self.eval_time = 0.0
        self._eval_t0 = 0.0
        self.trainer: Engine | None = None
        self.history: list[dict[str, float]] = []

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self._start)
        self.evaluator.add_event_handler(Events.STARTED, self._eval_start)
        self.evaluator.add_event_handler(Events.COMPLETED, self)

    def _start(self, _engine: Engine) -> None:
        self.t0 = time.perf_counter()
        self.eval_time = 0.0

    def _eval_start(self, _engine: Engine) -> None:
        self._eval_t0 = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        if name not in engine.state.metrics:
            raise KeyError(f"MetricHistoryRecorder: metric {name!r} not in {list(engine.state.metrics)}")
        now = time.perf_counter()
        self.eval_time += now - self._eval_t0
        t = now - (self.t0 if self.t0 is not None else now) - self.eval_time  # training time, validation excluded
        state = self.trainer.state if self.trainer is not None else engine.state
        self.history.append(
            {
                "epoch": state.epoch,
                "iteration": state.iteration,
                "time_s": round(t, 3),
                name: float(engine.state.metrics[name]),
            }
        )
        best = max(self.history, key=lambda h: h[name])
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        atomic_write_json(
            self.path,
            {
                "metric": name,
                "best": best[name],
                "time_to_best_s": best["time_s"],
                "epoch_of_best": best["epoch"],
                "history": self.history,
            },
        )


class WallTimeRecorder:
    """Write ``{"train_time_s", "epochs", "iterations"}`` to ``output_path`` when the trainer completes.

    ``train_time_s`` runs from the trainer's STARTED to COMPLETED event (data caching and start-up excluded),
    minus the time spent in ``evaluator`` runs when one is given.
    """

    def __init__(self, output_path: str | os.PathLike, evaluator: Engine | None = None) -> None:
        self.path = Path(output_path)
        self.evaluator = evaluator
        self.t0 = 0.0
        self.eval_time = 0.0
        self._eval_t0 = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.COMPLETED, self._done)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.STARTED, self._eval_start)
            self.evaluator.add_event_handler(Events.COMPLETED, self._eval_done)

    def _start(self, _engine: Engine) -> None:
        self.t0, self.eval_time = time.perf_counter(), 0.0

    def _eval_start(self, _engine: Engine) -> None:
        self._eval_t0 = time.perf_counter()

    def _eval_done(self, _engine: Engine) -> None:
        self.eval_time += time.perf_counter() - self._eval_t0

    def _done(self, engine: Engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        t = time.perf_counter() - self.t0 - self.eval_time
        atomic_write_json(
            self.path, {"train_time_s": round(t, 3), "epochs": engine.state.epoch, "iterations": engine.state.iteration}
        )


def poly_lr_lambda(total_epochs: int, power: float = 0.9) -> Callable[[int], float]:
    """``(1 - epoch / total)^power`` clamped at 0 (TLK's poly without the >horizon bug); for ``LambdaLR``."""
    total = check_positive_int("total_epochs", total_epochs)

    def f(epoch: int) -> float:
        return max(0.0, 1.0 - epoch / total) ** power

    return f
