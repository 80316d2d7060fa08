# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Inference with two-view co-training models: class probabilities of the combined views per sample, as a CSV."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from tlk_components.engines.evaluators.cotraining import view_probabilities
from tlk_components.engines.trainers.cotraining import (
    TwoViewDataset,
    as_two_view_network,
    load_two_view_model,
    read_class_names,
)
from tlk_components.networks.two_view import ensemble_probabilities
from tlk_components.utils.distributed import is_rank0
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import (
    atomic_write_text,
)
from tlk_components.utils.validation import check_positive_int

__all__ = ["CoTrainingPredictor"]

logger = logging.getLogger(__name__)


class CoTrainingPredictor:
    """Predictions of both models and the ensemble for view pairs, written as a CSV: the inference engine.

    Loads ``<ckpt_dir>/model.pt`` into ``network`` (a :class:`~tlk_components.networks.two_view.TwoViewClassifier`)
    and runs it through ``inferer`` on every item of ``dataset`` (both views stacked as channels). Output CSV
    columns: ``view0, view1, pred_view0, pred_view1, pred, confidence`` (``pred`` = ensemble class name,
    ``confidence`` = its probability, the mean of the two models' softmax outputs: ``network``'s output), plus
    ``label`` when the input has one. Paths are written relative to the input CSV's folder.

    Args:
        dataset: the view pairs: a :class:`TwoViewDataset` built from ``<input_dir>/samples.csv``
            (header ``view0,view1[,label]``).
        output_csv: where predictions go (written atomically).
        network: the two-view network (a DDP wrapper is removed).
        ckpt_dir: folder of ``model.pt`` and ``classes.json``.
        inferer: runs the network (a MONAI ``Inferer``; default ``SimpleInferer()``).
        class_names: class name per index; default: ``<ckpt_dir>/classes.json`` written by training, read when
            :meth:`run` starts (so the network can be built, e.g. by ``tlk verify``, before any training).
        device: where the network runs.
        batch_size: samples per forward pass, >= 1 (default 256).

    Raises:
        ConfigError: ``dataset`` is not a ``TwoViewDataset``, ``network`` not a ``TwoViewClassifier``, or a bad
            ``batch_size``.
    """

    def __init__(
        self,
        dataset: TwoViewDataset,
        output_csv: str | os.PathLike,
        network: nn.Module,
        ckpt_dir: str | os.PathLike,
        inferer: Callable | None = None,
        class_names: Sequence[str] | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 256,
    ) -> None:
        from monai.inferers import SimpleInferer

        if not isinstance(dataset, TwoViewDataset):
            raise ConfigError(
                "dataset: expected a TwoViewDataset of the view pairs (tlk_components.engines.trainers.cotraining."
                f"TwoViewDataset, data=<input_dir>/samples.csv), got {type(dataset).__name__}"
            )
        self.dataset, self.output_csv = dataset, Path(output_csv)
        self.network = as_two_view_network(network)
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.ckpt_dir, self.device = Path(ckpt_dir), torch.device(device)
        self.class_names = list(class_names) if class_names is not None else None
        self.batch_size = check_positive_int("batch_size", batch_size)

    def run(self) -> Path:
        """Predict every pair; returns the output path.

        Raises:
            DatasetError: the dataset is empty, or ``model.pt`` / ``classes.json`` are missing or unreadable.
            ConfigError: ``model.pt`` does not fit the network, or its class count differs from the class map.
        """
        ds = self.dataset
        if len(ds) == 0:
            raise DatasetError(f"{ds.root or 'dataset'}: no view pairs to predict")
        load_two_view_model(self.network, self.ckpt_dir, self.device)
        names = self.class_names if self.class_names is not None else read_class_names(self.ckpt_dir)
        p0, p1 = view_probabilities(self.network, ds, self.inferer, self.device, self.batch_size)
        if p0.shape[1] != len(names):
            raise ConfigError(
                f"the network predicts {p0.shape[1]} classes but the class map has {len(names)} "
                f"({self.ckpt_dir / 'classes.json'} or class_names); set num_classes to {len(names)} (as trained)"
            )
        conf, pred = ensemble_probabilities(p0, p1).max(1)
        has_label = any(ds.raw_labels)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            ["view0", "view1", "pred_view0", "pred_view1", "pred", "confidence"] + (["label"] if has_label else [])
        )

        def rel(path: str) -> str:
            return os.path.relpath(path, ds.root) if ds.root is not None else path

        for i in range(len(ds)):
            row = [
                rel(ds.view0[i]),
                rel(ds.view1[i]),
                names[int(p0[i].argmax())],
                names[int(p1[i].argmax())],
                names[int(pred[i])],
                f"{float(conf[i]):.4f}",
            ]
            w.writerow(row + ([ds.raw_labels[i]] if has_label else []))
        if is_rank0():
            atomic_write_text(self.output_csv, buf.getvalue())
        logger.info(f"wrote {len(ds)} predictions to {self.output_csv}")
        return self.output_csv
