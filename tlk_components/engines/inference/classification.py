# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Classification outputs: the predicted class and its probabilities per image, as a CSV."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from tlk_components.engines.evaluators.classification import class_labels
from tlk_components.utils.distributed import is_rank0
from tlk_components.utils.io import atomic_write_text

__all__ = ["PredictionsCSVWriter", "write_predictions_csv"]

logger = logging.getLogger(__name__)


def write_predictions_csv(
    path: str | os.PathLike, names: Sequence[str], probabilities: torch.Tensor, class_names: Sequence[str] | None = None
) -> Path:
    """Write one row per sample, atomically: ``image, prediction, probability, prob_<class>...``.

    Args:
        path: the CSV file.
        names: sample identifiers (file names), N.
        probabilities: ``N x C`` class probabilities.
        class_names: label of each class (default ``0..C-1``), used for ``prediction`` and the column names.

    Returns:
        The path written.

    Raises:
        ValueError: ``names`` and ``probabilities`` differ in length.
    """
    probs = torch.as_tensor(probabilities).detach().float().cpu()
    if probs.ndim != 2 or probs.shape[0] != len(names):
        raise ValueError(f"write_predictions_csv: {len(names)} names but probabilities of shape {tuple(probs.shape)}")
    labels = class_labels(class_names, probs.shape[1])
    conf, pred = probs.max(dim=1)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "prediction", "probability"] + [f"prob_{c}" for c in labels])
    for name, p, c, row in zip(names, pred.tolist(), conf.tolist(), probs.tolist(), strict=True):
        w.writerow([name, labels[p], f"{c:.6f}"] + [f"{v:.6f}" for v in row])
    return atomic_write_text(path, buf.getvalue())


class PredictionsCSVWriter:
    """Collect softmax predictions per iteration and write ``<output_dir>/<filename>`` when the engine completes.

    Sample names come from ``engine.state.batch["name"]`` (running numbers when absent); logits from
    ``engine.state.output["pred"]`` (set ``decollate=False`` on the evaluator). Rank 0 writes.

    Args:
        output_dir: folder of the CSV (created).
        filename: default ``predictions.csv``.
        class_names: class labels (default ``0..C-1``).
    """

    def __init__(
        self, output_dir: str | os.PathLike, filename: str = "predictions.csv", class_names: Sequence[str] | None = None
    ) -> None:
        self.path = Path(output_dir) / filename
        self.class_names = list(class_names) if class_names is not None else None
        self.names: list[str] = []
        self.probs: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.names, self.probs = [], []

    def _collect(self, engine: Engine) -> None:
        logits = engine.state.output["pred"]
        batch = engine.state.batch
        names = batch.get("name") if isinstance(batch, Mapping) else None
        if names is None:
            start = len(self.names)
            names = [str(start + i) for i in range(logits.shape[0])]
        self.names += list(names)
        self.probs.append(torch.softmax(logits.detach().float(), dim=1).cpu())

    def _write(self, engine: Engine) -> None:
        if is_rank0() and self.probs:
            write_predictions_csv(self.path, self.names, torch.cat(self.probs), self.class_names)
            logger.info(f"wrote {len(self.names)} predictions to {self.path}")
