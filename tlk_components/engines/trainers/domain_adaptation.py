# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The domain-adaptation trainer and its paired loader.

:class:`DomainAdaptationTrainer` (a MONAI ``Trainer``) draws ``{"source": batch, "target": batch}`` pairs from a
:class:`PairedLoader`, computes a :class:`~tlk_components.adaptation.transferrable.TransferrableModel`'s weighted
losses with :meth:`~tlk_components.adaptation.transferrable.TransferrableModel.compute_losses`, back-propagates the
weighted total (AMP on CUDA, gradient clipping) and steps the adversaries' warm-start GRL schedules once per
iteration. Target labels are never read unless ``target_seg`` has a weight; the loader draws only the domains the
model's active terms need.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines import Trainer
from monai.engines.utils import IterationEvents

from tlk_components.adaptation.transferrable import TransferrableModel
from tlk_components.engines.handlers.training import EpochSetter
from tlk_components.utils.distributed import unwrap_model
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, check_positive_int

__all__ = ["DomainAdaptationTrainer", "PairedLoader"]


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

    def check_model(self, model: TransferrableModel) -> None:
        """Keep only the loaders ``model``'s active terms read (:attr:`TransferrableModel.needs_source`/``_target``).

        Raises:
            ConfigError: the model needs a domain's batches and that loader is None.
        """
        for name, needed in (("source", model.needs_source), ("target", model.needs_target)):
            if needed and self.loaders[name] is None:
                active = [k for k, w in model.loss_weights.items() if w > 0]
                raise ConfigError(
                    f"the active loss terms {active} need {name} batches but the PairedLoader has no {name}_loader; "
                    f"give it one, or set the loss_weights of the terms that need the {name} domain to 0"
                )
            if not needed:
                self.loaders[name] = None

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
        strong_view_key: key of a strongly perturbed copy of the target image in the target batches (mean-teacher
            self-training: the backbone sees it, the teacher the plain image), or None / "" (default None) to use
            none ("" is how a ``monai.bundle run`` command line says none: it drops ``None`` overrides).
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
        strong_view_key: str | None = None,
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
        self.strong_view_key = strong_view_key or None
        if isinstance(train_data_loader, PairedLoader):
            train_data_loader.check_model(unwrap_model(model))
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
        xt_strong = None
        if self.strong_view_key is not None and tgt is not None:
            if self.strong_view_key not in tgt:
                raise ConfigError(
                    f"strong_view_key {self.strong_view_key!r} is not in the target batch (keys {sorted(tgt)}); add the "
                    "strong view to the target preprocessing (tlk_components.data.transforms.strong_intensity_view) "
                    'or set strong_view_key to null ("" on the command line)'
                )
            xt_strong = self._to(tgt, self.strong_view_key)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.state.device.type, enabled=self.amp):
            losses = model.compute_losses(xs, ys, xt, yt, target_image_strong=xt_strong)
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
