# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""One co-training round of one view's model: MONAI's ``SupervisedTrainer`` validated after each epoch.

:class:`ViewTrainingRound` builds and runs the engines of one round of
:class:`~tlk_components.engines.trainers.cotraining.CoTrainer` for one view: the training data order (seeded per round
and view), validation after every epoch, the learning-rate schedule, early stopping, the best-model file, a stop on a
non-finite loss, and the per-epoch log. :class:`LabelledView` is the dataset it trains on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Accuracy, Loss
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlk_components.engines.handlers.checkpoint import AtomicCheckpointSaver
from tlk_components.engines.handlers.training import StopOnNonFiniteLoss
from tlk_components.engines.trainers.cotraining_log import CoTrainingLog
from tlk_components.engines.trainers.cotraining_state import CoTrainingSettings
from tlk_components.utils.distributed import is_rank0, unwrap_model

__all__ = ["LabelledView", "ViewTrainingRound"]


class LabelledView(Dataset):
    """``{"image", "label"}`` items for the samples ``ids`` of one view (the labels may be pseudo-labels).

    Args:
        images: the view's images, indexed by sample id (``C, H, W`` tensors; a
            :class:`~tlk_components.engines.trainers.cotraining.ViewImages`).
        ids: the sample ids, in item order.
        labels: the class of each of those samples, aligned with ``ids``.
        augmentation: optional random transform of an image tensor (training only).
    """

    def __init__(self, images: Any, ids: np.ndarray, labels: np.ndarray, augmentation: Callable | None) -> None:
        self.images, self.ids, self.labels, self.augmentation = (
            images,
            np.asarray(ids),
            np.asarray(labels),
            augmentation,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.images[int(self.ids[i])]
        if self.augmentation is not None:
            x = torch.as_tensor(self.augmentation(x), dtype=torch.float32)
        return {"image": x, "label": torch.tensor(int(self.labels[i]), dtype=torch.long)}


def _pred_label(out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return out["pred"], out["label"]


@dataclass
class ViewTrainingRound:
    """Up to ``settings.max_epochs`` epochs of model ``view`` on its training set, validating after each epoch.

    After each validation the scheduler steps (with the validation accuracy when its ``mode`` is ``"max"``, else the
    validation loss), the round stops early after ``settings.patience`` epochs without a lower validation loss
    (0: never), and ``saver`` keeps the weights of the best validation accuracy. The training order is seeded by
    ``settings.seed``, ``iteration`` and ``view`` (a ``DistributedSampler`` when ``settings.distributed``).

    Args:
        view: 0 or 1.
        iteration: the co-training round, from 0.
        network: the view's classifier (logits), on ``device``; may be wrapped in DDP.
        optimizer: its optimizer.
        lr_scheduler: its scheduler (e.g. ``ReduceLROnPlateau``), or None for a constant learning rate.
        saver: writes the view's best model (attached to the evaluator).
        loss_function: training loss and validation ``val_loss``.
        inferer: runs the network (a MONAI ``Inferer``).
        device: where the network runs.
        amp: mixed precision (CUDA only; the caller decides).
        settings: ``batch_size``, ``num_workers``, ``max_epochs``, ``patience``, ``seed``, ``distributed`` and
            ``progress`` of the run.
        log: receives each epoch's losses, validation metrics and learning rate.

    Raises:
        NonFiniteLossError: (in :meth:`run`) a training loss became NaN/Inf.
    """

    view: int
    iteration: int
    network: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    saver: AtomicCheckpointSaver
    loss_function: Callable
    inferer: Callable
    device: torch.device
    amp: bool
    settings: CoTrainingSettings
    log: CoTrainingLog

    def run(self, train_set: Dataset, val_set: Dataset) -> dict[str, Any]:
        """Train the round; returns ``{"epochs": epochs run, "lr": learning rate at the end}``."""
        loader = self._train_loader(train_set)
        val_loader = DataLoader(val_set, batch_size=max(self.settings.batch_size, 64), shuffle=False)
        evaluator, trainer = self._engines(loader, val_loader)
        self._attach_validation(trainer, evaluator)
        self._attach_logging(trainer, evaluator)
        trainer.run()
        return {"epochs": int(trainer.state.epoch), "lr": float(self.optimizer.param_groups[0]["lr"])}

    def _train_loader(self, train_set: Dataset) -> DataLoader:
        """Shuffled batches, the order seeded per round and view (sharded under ``distributed``)."""
        s, offset = self.settings, self.iteration * 2 + self.view
        gen = torch.Generator().manual_seed(s.seed * 1000 + offset)
        sampler = None
        if s.distributed:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(train_set, shuffle=True, seed=s.seed + offset)
        return DataLoader(
            train_set,
            batch_size=s.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=gen if sampler is None else None,
            num_workers=s.num_workers,
        )

    def _engines(self, loader: DataLoader, val_loader: DataLoader) -> tuple[Engine, Engine]:
        """The evaluator (``val_accuracy`` key metric, ``val_loss``) and the trainer."""
        from monai.engines import SupervisedEvaluator, SupervisedTrainer

        evaluator = SupervisedEvaluator(
            device=self.device,
            val_data_loader=val_loader,
            network=unwrap_model(self.network),
            inferer=self.inferer,
            amp=self.amp,
            decollate=False,
            key_val_metric={"val_accuracy": Accuracy(output_transform=_pred_label)},
            additional_metrics={"val_loss": Loss(self.loss_function, output_transform=_pred_label)},
        )
        trainer = SupervisedTrainer(
            device=self.device,
            max_epochs=self.settings.max_epochs,
            train_data_loader=loader,
            network=self.network,
            optimizer=self.optimizer,
            loss_function=self.loss_function,
            inferer=self.inferer,
            amp=self.amp,
            decollate=False,
        )
        return evaluator, trainer

    def _attach_validation(self, trainer: Engine, evaluator: Engine) -> None:
        """Stop on a non-finite loss; validate each epoch; then schedule, stop early, save the best model."""
        from monai.handlers import EarlyStopHandler, LrScheduleHandler, ValidationHandler

        StopOnNonFiniteLoss().attach(trainer)
        ValidationHandler(interval=1, validator=evaluator, epoch_level=True).attach(trainer)
        sched = self.lr_scheduler
        if sched is not None:
            metric = "val_accuracy" if getattr(sched, "mode", "min") == "max" else "val_loss"
            LrScheduleHandler(sched, print_lr=False, step_transform=lambda e: e.state.metrics[metric]).attach(evaluator)
        if self.settings.patience:
            EarlyStopHandler(
                patience=self.settings.patience,
                score_function=lambda e: -float(e.state.metrics["val_loss"]),
                trainer=trainer,
            ).attach(evaluator)
        self.saver.attach(evaluator)

    def _attach_logging(self, trainer: Engine, evaluator: Engine) -> None:
        """Each epoch's batch losses and validation metrics to :attr:`log`; a progress bar on rank 0 if asked."""
        losses: list[float] = []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"].detach()))
        )

        def log_epoch(e: Engine) -> None:
            lr = float(self.optimizer.param_groups[0]["lr"])
            self.log.epoch(self.view, self.iteration, e.state.epoch, losses, evaluator.state.metrics, lr)
            losses.clear()

        trainer.add_event_handler(Events.EPOCH_COMPLETED, log_epoch)
        if self.settings.progress and is_rank0():
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False, desc=f"iter {self.iteration + 1} model {self.view}").attach(
                trainer, output_transform=lambda out: {"loss": float(out["loss"].detach())}
            )
