# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The record of a co-training run: one row per round, TensorBoard scalars, and the log files.

:class:`CoTrainingLog` keeps the rows of :class:`~tlk_components.engines.trainers.cotraining.CoTrainer` (its
``history``), writes ``<output_dir>/cotraining_log.json`` / ``.csv``, the PNG, and the TensorBoard scalars per epoch
(``train_loss/view<v>``, ``val_accuracy/view<v>``, ``val_loss/view<v>``, ``learning_rate/view<v>``) and per round
(``cotraining/<key>``), and sends the progress lines to the engine's logger.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlk_components.engines.handlers.reporting import to_jsonable
from tlk_components.utils.distributed import is_rank0
from tlk_components.utils.io import atomic_write_json, atomic_write_text

__all__ = ["LOG_FIELDS", "LOG_NAME", "PLOT_NAME", "CoTrainingLog"]

# every co-training message goes out under the engine's logger name, wherever the code that writes it lives
logger = logging.getLogger("tlk_components.engines.trainers.cotraining")


LOG_NAME = "cotraining_log"


PLOT_NAME = "cotraining_accuracy.png"


LOG_FIELDS = (
    "iteration",
    "mode",
    "train_size_view0",
    "train_size_view1",
    "epochs_view0",
    "epochs_view1",
    "lr_view0",
    "lr_view1",
    "val_accuracy_view0",
    "val_accuracy_view1",
    "val_accuracy_ensemble",
    "k",
    "added_view0",
    "added_view1",
    "pseudo_label_accuracy_view0",
    "pseudo_label_accuracy_view1",
    "pseudo_label_accuracy",
    "conflicts",
    "pool_size",
)


#: Entries of a round's row that also go to TensorBoard, as ``cotraining/<key>``.
ROUND_SCALARS = (
    "val_accuracy_view0",
    "val_accuracy_view1",
    "val_accuracy_ensemble",
    "pseudo_label_accuracy",
    "pool_size",
    "added_view0",
    "added_view1",
    "conflicts",
)


class CoTrainingLog:
    """One row per co-training round (:attr:`history`), TensorBoard scalars and the log files in ``output_dir``.

    Files (on rank 0 only): ``<LOG_NAME>.json`` (every row), ``<LOG_NAME>.csv`` (the columns :data:`LOG_FIELDS`),
    :data:`PLOT_NAME` (drawn by ``plot``) and ``tensorboard/`` (between :meth:`open_tensorboard` and :meth:`close`).

    Args:
        output_dir: folder of the files (must exist when :meth:`write` runs).
        plot: ``plot(history, path)`` draws the PNG (the engine passes
            :func:`~tlk_components.engines.trainers.cotraining.plot_cotraining_log`); None writes no PNG.

    Attributes:
        history: the rows of the rounds so far, oldest first (carried over a resume).
        global_epoch: per view, the epochs trained so far (the step of the per-epoch scalars; carried over a resume).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        plot: Callable[[Sequence[Mapping[str, Any]], Path], Any] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.plot = plot
        self.history: list[dict[str, Any]] = []
        self.global_epoch = [0, 0]
        self._writer: Any = None

    def open_tensorboard(self) -> None:
        """Start writing TensorBoard event files to ``<output_dir>/tensorboard`` (call on rank 0)."""
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))

    def close(self) -> None:
        """Flush and close the TensorBoard writer (a no-op when none is open)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        """One TensorBoard scalar; skipped when ``value`` is None or no writer is open."""
        if self._writer is not None and value is not None:
            self._writer.add_scalar(tag, value, step)

    def epoch(
        self,
        view: int,
        iteration: int,
        epoch: int,
        losses: Sequence[float],
        metrics: Mapping[str, Any],
        lr: float,
    ) -> None:
        """Log an epoch of model ``view``: its scalars (at the view's next global epoch) and a progress line.

        Args:
            view: 0 or 1.
            iteration: the round, from 0.
            epoch: the epoch within the round, from 1.
            losses: the training loss of each batch of the epoch (may be empty).
            metrics: the validation metrics after the epoch (``val_accuracy``, ``val_loss``).
            lr: the learning rate of the first parameter group after the epoch.
        """
        self.global_epoch[view] += 1
        step = self.global_epoch[view]
        if losses:
            self.scalar(f"train_loss/view{view}", float(np.mean(losses)), step)
        self.scalar(f"val_accuracy/view{view}", float(metrics["val_accuracy"]), step)
        self.scalar(f"val_loss/view{view}", float(metrics["val_loss"]), step)
        self.scalar(f"learning_rate/view{view}", lr, step)
        logger.info(
            f"iteration {iteration + 1} model {view} epoch {epoch}: train loss "
            f"{np.mean(losses) if losses else float('nan'):.4f}, val accuracy {metrics['val_accuracy']:.4f}, "
            f"val loss {metrics['val_loss']:.4f}"
        )

    def round(self, row: dict[str, Any], iterations: int) -> None:
        """Add a round's row to :attr:`history`, its :data:`ROUND_SCALARS` to TensorBoard, and a progress line.

        Args:
            row: the round's entries (:data:`LOG_FIELDS`; ``iteration`` counts from 1).
            iterations: the number of rounds of the run (for the progress line).
        """
        self.history.append(row)
        step = row["iteration"]
        for key in ROUND_SCALARS:
            self.scalar(f"cotraining/{key}", row.get(key), step)
        pla = row["pseudo_label_accuracy"]
        logger.info(
            f"iteration {step}/{iterations}: val accuracy {row['val_accuracy_view0']:.4f} / "
            f"{row['val_accuracy_view1']:.4f} / ensemble {row['val_accuracy_ensemble']:.4f}; added "
            f"{row['added_view0']} + {row['added_view1']} pseudo-labels "
            f"(accuracy {'n/a' if pla is None else f'{pla:.3f}'}), {row['conflicts']} conflicts, pool {row['pool_size']}"
        )

    def write(self) -> None:
        """Write the JSON and CSV logs and the PNG of :attr:`history` (rank 0; each file replaced atomically)."""
        if not is_rank0():
            return
        atomic_write_json(self.output_dir / f"{LOG_NAME}.json", to_jsonable(self.history))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(LOG_FIELDS), extrasaction="ignore")
        w.writeheader()
        for h in self.history:
            w.writerow({k: ("" if h.get(k) is None else h.get(k)) for k in LOG_FIELDS})
        atomic_write_text(self.output_dir / f"{LOG_NAME}.csv", buf.getvalue())
        if self.plot is not None:
            self.plot(self.history, self.output_dir / PLOT_NAME)

    def state_dict(self) -> dict[str, Any]:
        """``history`` (JSON types) and ``global_epoch``, for the engine's checkpoint."""
        return {"history": to_jsonable(self.history), "global_epoch": list(self.global_epoch)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (``global_epoch`` defaults to ``[0, 0]`` for older checkpoints)."""
        self.history = list(state["history"])
        self.global_epoch = list(state.get("global_epoch", [0, 0]))
