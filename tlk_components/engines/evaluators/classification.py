# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Classification metrics and their report: per-class accuracy and the confusion matrix from ignite's
``ConfusionMatrix`` (rows = true class, columns = predicted class), and :class:`ClassificationReport`
(``metrics.json``, a per-class bar chart and the confusion-matrix PNG).

Per-class accuracy of class ``i`` is ``cm[i, i] / sum_j cm[i, j]`` (recall of class ``i``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import ConfusionMatrix, MetricsLambda
from ignite.metrics.confusion_matrix import cmRecall

from tlk_components.engines.handlers.reporting import save_bar_chart, save_figure
from tlk_components.utils.distributed import is_rank0, unwrap_model
from tlk_components.utils.validation import check_positive_int

__all__ = ["ClassificationReport", "class_labels", "confusion_matrix", "per_class_accuracy"]


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
def class_labels(class_names: Sequence[str] | None, n: int) -> list[str]:
    """The ``n`` class names as strings, or ``"0".."n-1"`` when there are none."""
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
        if not is_rank0():
            return
        metrics = engine.state.metrics
        for key in (self.per_class_key, self.confusion_key):
            if key is not None and key not in metrics:
                raise KeyError(f"ClassificationReport: metric {key!r} not computed; computed: {sorted(metrics)}")
        if self.per_class_key is not None:
            acc = torch.as_tensor(metrics[self.per_class_key]).double().cpu().numpy()
            labels = class_labels(self.class_names, acc.size)
            mean = metrics.get("accuracy")
            title = f"{self.title} per-class accuracy" + (f" (overall {float(mean):.4f})" if mean is not None else "")
            save_bar_chart(acc.tolist(), labels, self.output_dir / "per_class_accuracy.png", title.strip(), "accuracy")
        if self.confusion_key is not None:
            cm = torch.as_tensor(metrics[self.confusion_key]).cpu().numpy()
            labels = class_labels(self.class_names, cm.shape[0])
            _plot_confusion(
                cm, labels, self.output_dir / "confusion_matrix.png", f"{self.title} confusion matrix".strip()
            )
