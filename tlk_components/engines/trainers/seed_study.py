# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Seed study: how much do identical networks, trained identically, differ only by their random initialisation?

The experiment: ``K`` copies of one architecture, each initialised with its
own seed, are trained for the same number of epochs with the same optimizer settings on **one shared data order**
(the loader's order depends on its own seed and the epoch, never on the model). Outputs, in ``output_dir``:

* ``seed_study_loss_curves.png`` — the per-iteration training loss of every model, smoothed by a trailing moving
  average (window 25, as in the source) drawn from the first full window on, in one figure;
* ``seed_study_per_class_accuracy.png`` — grouped bars: per-class test accuracy of all ``K`` models;
* ``seed_study.json`` — per model: seed, accuracy, per-class accuracy, last loss and whether it is stuck
  (predicts one class for every test image); plus the spread across models.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from tlk_components.engines.evaluators.classification import confusion_matrix
from tlk_components.engines.handlers.progress import ProgressBarHandler
from tlk_components.engines.handlers.reporting import legend_outside, save_bar_chart, save_figure, smoothed_curve
from tlk_components.utils.io import atomic_write_json
from tlk_components.utils.validation import check_positive_int

__all__ = ["SeedStudy", "reinitialize"]

logger = logging.getLogger(__name__)


def reinitialize(template: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A deep copy of ``template`` whose parameters are drawn afresh with ``torch.manual_seed(seed)``.

    Every submodule with ``reset_parameters`` (``Linear``, ``Conv``, norms) is reset in module order, which draws
    the same numbers as constructing the network right after ``torch.manual_seed(seed)``.

    Args:
        template: the architecture (its own weights are not used).
        seed: the initialisation seed.

    Returns:
        The new module (on the template's device).
    """
    net = copy.deepcopy(template)
    torch.manual_seed(int(seed))
    for m in net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return net


class SeedStudy:
    """Train ``num_models`` copies of ``network`` with seeds ``first_seed, first_seed + 1, ...`` and compare them.

    Each model gets a MONAI ``SupervisedTrainer`` over the same ``train_loader`` (attach-able loaders, such as
    :class:`~tlk_components.data.mnist.TensorBatchLoader`, are attached so epoch ``e`` has the same order for
    every model), then is evaluated on ``eval_loader`` with ignite's ``ConfusionMatrix``.

    Args:
        network: the architecture (weights re-drawn per seed, see :func:`reinitialize`).
        train_loader: batches ``{"image", "label"}``, one shared order.
        eval_loader: held-out batches ``{"image", "label"}``.
        optimizer_fn: ``params -> Optimizer`` (in a config: ``{"_target_": "torch.optim.Adam", "_mode_":
            "callable", "lr": 0.04}``).
        loss_function: e.g. ``torch.nn.CrossEntropyLoss()``.
        num_models: K, >= 1. Default 10.
        first_seed: seed of model 1. Default 0.
        epochs: training epochs per model, >= 1. Default 1.
        num_classes: C, >= 2. Default 10.
        device: where to train. Default CPU.
        output_dir: folder of the PNGs and ``seed_study.json`` (created).
        smoothing: moving-average window of the loss curves, >= 1. Default 25.
        class_names: axis labels (default ``0..C-1``).
        xlabel: x-axis title of the per-class chart. Default ``"class"``.

    Raises:
        ConfigError: a count or window below 1.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        train_loader: Iterable[Any],
        eval_loader: Iterable[Any],
        optimizer_fn: Callable[[Any], torch.optim.Optimizer],
        loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        output_dir: str | os.PathLike,
        num_models: int = 10,
        first_seed: int = 0,
        epochs: int = 1,
        num_classes: int = 10,
        device: str | torch.device = "cpu",
        smoothing: int = 25,
        class_names: Sequence[str] | None = None,
        xlabel: str = "class",
    ) -> None:
        self.network = network
        self.train_loader, self.eval_loader = train_loader, eval_loader
        self.optimizer_fn, self.loss_function = optimizer_fn, loss_function
        self.num_models = check_positive_int("num_models", num_models)
        self.epochs = check_positive_int("epochs", epochs)
        self.num_classes = check_positive_int("num_classes", num_classes, minimum=2)
        self.smoothing = check_positive_int("smoothing", smoothing)
        self.first_seed = int(first_seed)
        self.device = torch.device(device)
        self.output_dir = Path(output_dir)
        self.class_names = [str(c) for c in class_names] if class_names is not None else None
        self.xlabel = str(xlabel)
        self.results: list[dict[str, Any]] = []

    def _train_one(self, seed: int) -> tuple[torch.nn.Module, list[float]]:
        from monai.engines import SupervisedTrainer

        net = reinitialize(self.network, seed).to(self.device)
        losses: list[float] = []
        handlers: list[Any] = [ProgressBarHandler(every=10)]
        if hasattr(self.train_loader, "attach"):
            handlers.append(self.train_loader)
        trainer = SupervisedTrainer(
            device=self.device,
            max_epochs=self.epochs,
            train_data_loader=self.train_loader,
            network=net,
            optimizer=self.optimizer_fn(net.parameters()),
            loss_function=self.loss_function,
            train_handlers=handlers,
            amp=False,
            decollate=False,
        )

        @trainer.on(Events.ITERATION_COMPLETED)
        def _record(engine: Engine) -> None:
            losses.append(float(engine.state.output["loss"].item()))

        trainer.run()
        return net, losses

    def run(self) -> list[dict[str, Any]]:
        """Train and evaluate all models, write the figures and ``seed_study.json``; returns the per-model results."""
        self.results = []
        curves: dict[str, list[float]] = {}
        for k in range(self.num_models):
            seed = self.first_seed + k
            net, losses = self._train_one(seed)
            cm = confusion_matrix(net, self.eval_loader, self.num_classes, self.device).double()
            per_class = (cm.diag() / cm.sum(dim=1).clamp_min(1)).tolist()
            acc = float(cm.diag().sum() / cm.sum().clamp_min(1))
            stuck = int((cm.sum(dim=0) > 0).sum()) <= 1  # one predicted class for every test image
            name = f"model {k + 1} (seed {seed})"
            curves[name] = losses
            self.results.append(
                {
                    "model": k + 1,
                    "seed": seed,
                    "accuracy": acc,
                    "per_class_accuracy": per_class,
                    "last_loss": losses[-1],
                    "stuck": stuck,
                }
            )
            note = " (stuck: predicts one class for every test image)" if stuck else ""
            logger.info(f"seed study: {name}: accuracy {acc:.4f}, last loss {losses[-1]:.4f}{note}")
        self._write(curves)
        return self.results

    def _write(self, curves: dict[str, list[float]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        fig, ax = plt.subplots(figsize=(10, 6))
        for name, losses in curves.items():
            x, y = smoothed_curve(losses, self.smoothing)  # from the first full window on: no start-up artefact
            ax.plot(x + 1, y, label=name, linewidth=1, marker="o" if len(y) == 1 else None)
        n_iter = max(len(v) for v in curves.values())
        ax.set_xlabel(f"training iteration ({n_iter // self.epochs} per epoch, {self.epochs} epoch(s))")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"training loss (moving average of the last {min(self.smoothing, n_iter)} iterations)")
        ax.set_title(f"{self.num_models} models, different seeds, one data order")
        ax.grid(True, alpha=0.3)
        legend_outside(ax, fontsize="small")
        save_figure(fig, self.output_dir / "seed_study_loss_curves.png")

        labels = self.class_names or [str(i) for i in range(self.num_classes)]
        bars = {
            f"model {r['model']}" + (" (stuck)" if r["stuck"] else ""): r["per_class_accuracy"] for r in self.results
        }
        save_bar_chart(
            bars,
            labels,
            self.output_dir / "seed_study_per_class_accuracy.png",
            title="per-class test accuracy of each model",
            ylabel="accuracy",
            xlabel=self.xlabel,
        )
        accs = np.array([r["accuracy"] for r in self.results])
        per_class = np.array([r["per_class_accuracy"] for r in self.results])
        summary = {
            "num_models": self.num_models,
            "epochs": self.epochs,
            "accuracy_mean": float(accs.mean()),
            "accuracy_std": float(accs.std()),
            "accuracy_min": float(accs.min()),
            "accuracy_max": float(accs.max()),
            "per_class_accuracy_range": (per_class.max(axis=0) - per_class.min(axis=0)).tolist(),
            "stuck_models": [r["model"] for r in self.results if r["stuck"]],
            "models": self.results,
        }
        atomic_write_json(self.output_dir / "seed_study.json", summary)
        stuck = summary["stuck_models"]
        logger.info(
            f"seed study: accuracy {summary['accuracy_mean']:.4f} +- {summary['accuracy_std']:.4f} "
            f"(min {summary['accuracy_min']:.4f}, max {summary['accuracy_max']:.4f}); "
            + (f"stuck models (one class predicted): {stuck}; " if stuck else "no model stuck; ")
            + f"figures in {self.output_dir}"
        )
