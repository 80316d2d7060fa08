# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Reusable pieces of classification workflows: checks, metrics, reports and handlers for MONAI/ignite engines.

Conventions: a classifier maps ``B x ...`` inputs to ``B x C`` logits; labels are class indices ``B`` (int64).
Engines run with ``decollate=False``, so ``engine.state.output`` holds batched tensors under ``"pred"``,
``"label"`` and (training) ``"loss"``, and ``engine.state.batch`` is the loader's dict (``"image"``, ``"label"``,
optionally ``"name"``).

Per-class accuracy of class ``i`` is ``#correct samples of class i / #samples of class i``, i.e. the recall of
class ``i``, read from ignite's ``ConfusionMatrix`` (rows = true class, columns = predicted class) with
``ignite.metrics.confusion_matrix.cmRecall``; :func:`per_class_accuracy` builds it.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import ConfusionMatrix, MetricsLambda
from ignite.metrics.confusion_matrix import cmRecall

from tlk_components.engines.checkpoint import unwrap_model
from tlk_components.engines.reporting import save_bar_chart, save_figure
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.io import atomic_write_text, load_weights
from tlk_components.utils.validation import check_in_range, check_positive_int

__all__ = [
    "ClassificationReport",
    "PredictionsCSVWriter",
    "ProgressBarHandler",
    "WeightLoader",
    "check_hyperparameters",
    "check_network_input",
    "confusion_matrix",
    "per_class_accuracy",
    "write_predictions_csv",
]

logger = logging.getLogger(__name__)


def _is_rank0() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


# ------------------------------------------------------------------------------------------------------ checks
#: hyperparameter name -> kind checked by :func:`check_hyperparameters`.
_INT_KEYS = {"epochs", "batch_size", "val_interval", "num_models"}
_POSITIVE_FLOAT_KEYS = {"learning_rate", "lr"}


def check_hyperparameters(**values: Any) -> dict[str, Any]:
    """Check named hyperparameters when a config is parsed, before any compute.

    ``epochs``, ``batch_size``, ``val_interval`` and ``num_models`` must be integers >= 1; ``learning_rate``/``lr``
    a finite number > 0; ``val_fraction`` in (0, 1); ``num_workers`` an integer >= 0. Other names are returned
    unchecked.

    Args:
        values: ``name=value`` pairs, e.g. ``check_hyperparameters(epochs=@epochs, batch_size=@batch_size)``.

    Returns:
        ``values`` unchanged.

    Raises:
        ConfigError: naming the key, the value received, the valid range and the override that fixes it.

    Example:
        >>> check_hyperparameters(epochs=3, batch_size=32, learning_rate=1e-3)
        {'epochs': 3, 'batch_size': 32, 'learning_rate': 0.001}
    """
    for name, value in values.items():
        if name in _INT_KEYS:
            check_positive_int(name, value)
        elif name == "num_workers":
            check_positive_int(name, value, minimum=0)
        elif name in _POSITIVE_FLOAT_KEYS:
            v = check_in_range(name, value, 0.0, None, low_inclusive=False)
            if v == float("inf"):
                raise ConfigError(f"{name}={value!r}: expected a finite number > 0, e.g. --{name} 0.001")
        elif name == "val_fraction":
            if check_in_range(name, value, 0.0, 1.0, low_inclusive=False) >= 1.0:
                raise ConfigError(f"{name}={value!r}: expected a number in (0, 1) (the held-out share), e.g. 0.1")
    return values


def check_network_input(
    network: torch.nn.Module, dataset: Any, num_classes: int | None = None, key: str = "network_def"
) -> torch.nn.Module:
    """Run one sample of ``dataset`` through ``network`` and check that its size and the class count fit.

    Catches, before training starts, a network whose input size does not match the images (e.g.
    ``dims[0]=100`` for 28x28 images) and one with fewer outputs than the labels need.

    Args:
        network: the classifier (in any mode; left unchanged).
        dataset: with ``tensors()`` (``"image"``, optional ``"label"``) or ``__getitem__`` returning such a dict.
        num_classes: expected number of outputs; default: ``max(label) + 1`` when labels exist, else unchecked.
        key: config key named in the error (default ``network_def``).

    Returns:
        ``network``.

    Raises:
        ConfigError: the forward pass fails on the sample, or the output has the wrong number of classes.
    """
    if hasattr(dataset, "tensors"):
        tensors = dataset.tensors()
        sample, labels = tensors["image"][:1], tensors.get("label")
    else:
        item = dataset[0]
        sample, labels = item["image"][None], None
    if num_classes is None and labels is not None and len(labels):
        num_classes = int(labels.max()) + 1
    net = unwrap_model(network)
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(sample.to(device))
    except RuntimeError as e:
        per_sample = int(np.prod(sample.shape[1:]))
        raise ConfigError(
            f"{key}: the network does not accept the data: one image is {tuple(sample.shape[1:])} = {per_sample} "
            f"values ({type(e).__name__}: {str(e).splitlines()[0][:160]}). Make the first layer size match, "
            f'e.g. --{key}#dims "[{per_sample}, 32, 32, 32, 10]", or use images of the size the network expects'
        ) from None
    finally:
        net.train(was_training)
    if out.ndim != 2:
        raise ConfigError(f"{key}: expected B x num_classes logits, the network returned shape {tuple(out.shape)}")
    if num_classes is not None and out.shape[1] < num_classes:
        raise ConfigError(
            f"{key}: the network has {out.shape[1]} outputs but the labels need {num_classes} classes; "
            f"set the last layer size to {num_classes}"
        )
    return network


# ----------------------------------------------------------------------------------------------------- metrics
def per_class_accuracy(cm: ConfusionMatrix, average: bool = False) -> MetricsLambda:
    """Per-class accuracy (recall of each class) from an ignite ``ConfusionMatrix``.

    ``acc_i = cm[i, i] / sum_j cm[i, j]`` (0 for a class without samples).

    Args:
        cm: ``ignite.metrics.ConfusionMatrix`` (counts; rows = true class).
        average: True gives the mean over classes (balanced accuracy). Default False.

    Returns:
        A ``MetricsLambda`` computing a ``C`` tensor (or a float when ``average``).
    """
    return cmRecall(cm, average=average)


def confusion_matrix(
    network: torch.nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    num_classes: int,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Confusion matrix of ``network`` over ``loader`` (batches with ``"image"`` and ``"label"``), eval mode.

    Args:
        network: the classifier (restored to its previous mode afterwards).
        loader: iterable of dict batches.
        num_classes: C, >= 2.
        device: where to run (default: the network's device).

    Returns:
        int64 ``C x C`` counts, rows = true class, columns = predicted class.
    """
    num_classes = check_positive_int("num_classes", num_classes, minimum=2)
    net = unwrap_model(network)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    cm = ConfusionMatrix(num_classes=num_classes, device=device)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                cm.update((net(batch["image"].to(device)), batch["label"].to(device)))
    finally:
        net.train(was_training)
    return cm.confusion_matrix.to(torch.int64).cpu()


# ----------------------------------------------------------------------------------------------------- reports
def _class_labels(class_names: Sequence[str] | None, n: int) -> list[str]:
    return [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(n)]


def _plot_confusion(cm: np.ndarray, labels: Sequence[str], path: str | os.PathLike, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(labels), 0.8 + 0.5 * len(labels)))
    im = ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7, color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


class ClassificationReport:
    """Write ``per_class_accuracy.png`` (bar chart) and ``confusion_matrix.png`` when an evaluator completes.

    Reads ``engine.state.metrics[per_class_key]`` (a ``C`` tensor, see :func:`per_class_accuracy`) and
    ``engine.state.metrics[confusion_key]`` (``C x C``); either may be None to skip that figure. Rank 0 only.

    Args:
        output_dir: folder of the PNGs (created).
        class_names: axis labels (default ``0..C-1``).
        per_class_key: metric name of the per-class accuracy. Default ``"per_class_accuracy"``.
        confusion_key: metric name of the confusion matrix. Default ``"confusion_matrix"``.
        title: prefix of the figure titles.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str] | None = None,
        per_class_key: str | None = "per_class_accuracy",
        confusion_key: str | None = "confusion_matrix",
        title: str = "",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names) if class_names is not None else None
        self.per_class_key, self.confusion_key, self.title = per_class_key, confusion_key, title

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not _is_rank0():
            return
        metrics = engine.state.metrics
        for key in (self.per_class_key, self.confusion_key):
            if key is not None and key not in metrics:
                raise KeyError(f"ClassificationReport: metric {key!r} not computed; computed: {sorted(metrics)}")
        if self.per_class_key is not None:
            acc = torch.as_tensor(metrics[self.per_class_key]).double().cpu().numpy()
            labels = _class_labels(self.class_names, acc.size)
            mean = metrics.get("accuracy")
            title = f"{self.title} per-class accuracy" + (f" (overall {float(mean):.4f})" if mean is not None else "")
            save_bar_chart(acc.tolist(), labels, self.output_dir / "per_class_accuracy.png", title.strip(), "accuracy")
        if self.confusion_key is not None:
            cm = torch.as_tensor(metrics[self.confusion_key]).cpu().numpy()
            labels = _class_labels(self.class_names, cm.shape[0])
            _plot_confusion(
                cm, labels, self.output_dir / "confusion_matrix.png", f"{self.title} confusion matrix".strip()
            )


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
    labels = _class_labels(class_names, probs.shape[1])
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
        if _is_rank0() and self.probs:
            write_predictions_csv(self.path, self.names, torch.cat(self.probs), self.class_names)
            logger.info(f"wrote {len(self.names)} predictions to {self.path}")


# ----------------------------------------------------------------------------------------------------- handlers
class WeightLoader:
    """Load a ``state_dict`` file into a network when the engine starts (``weights_only=True``, clear errors).

    MONAI's ``CheckpointLoader`` with two differences: a missing or damaged file raises a
    :class:`~tlk_components.utils.errors.DatasetError` naming the file and the fix (train first), and
    ``DistributedDataParallel`` wrappers are looked through.

    Args:
        load_path: the weights (``model.pt`` as written by ``AtomicCheckpointSaver``: a plain ``state_dict``, or
            a dict holding it under ``key``).
        network: the module to load into.
        key: entry of a checkpoint dict holding the weights (e.g. ``"model"`` for ``checkpoint_last.pt``);
            None loads the file as the state_dict itself.
        map_location: default ``"cpu"``.
        strict: passed to ``load_state_dict``. Default True.
    """

    def __init__(
        self,
        load_path: str | os.PathLike,
        network: torch.nn.Module,
        key: str | None = None,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
    ) -> None:
        self.load_path, self.network, self.key = Path(load_path), network, key
        self.map_location, self.strict = map_location, strict

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        state = load_weights(self.load_path, map_location=self.map_location)
        if self.key is not None:
            if self.key not in state:
                raise KeyError(f"{self.load_path}: no entry {self.key!r} (entries: {sorted(state)}); pass key=None")
            state = state[self.key]
        try:
            unwrap_model(self.network).load_state_dict(state, strict=self.strict)
        except RuntimeError as e:
            raise ConfigError(
                f"{self.load_path}: weights do not fit the network ({str(e).splitlines()[0][:200]}); the configs' "
                "network_def must be the one the weights were trained with"
            ) from None
        logger.info(f"loaded weights from {self.load_path}")


class ProgressBarHandler:
    """An ignite ``ProgressBar`` that shows the running loss and redraws every ``every`` iterations.

    ignite's bar redraws at every iteration, which costs more than a whole training step of a small network;
    redrawing every 10 iterations keeps the progress visible at a negligible cost. Attaches on rank 0 only.

    Args:
        every: redraw interval in iterations, >= 1. Default 10.
        output_key: entry of ``engine.state.output`` shown (``"loss"``); None shows no value.
        persist: keep the bar after each epoch. Default False.
    """

    def __init__(self, every: int = 10, output_key: str | None = "loss", persist: bool = False) -> None:
        self.every = check_positive_int("every", every)
        self.output_key, self.persist = output_key, bool(persist)

    def _transform(self, output: Any) -> dict[str, float]:
        if isinstance(output, list):  # a decollated batch
            output = output[0]
        value = output[self.output_key] if isinstance(output, Mapping) else output
        return {self.output_key: float(value.item() if isinstance(value, torch.Tensor) else value)}

    def attach(self, engine: Engine) -> None:
        from ignite.handlers import ProgressBar

        if not _is_rank0():
            return
        transform: Callable[[Any], Any] | None = self._transform if self.output_key is not None else None
        ProgressBar(persist=self.persist).attach(
            engine, output_transform=transform, event_name=Events.ITERATION_COMPLETED(every=self.every)
        )
