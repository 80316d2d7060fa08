# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Evaluation of two-view co-training models: per-view and combined accuracy on a split
(:class:`CoTrainingEvaluator`), and the side-by-side comparison of the modes (:class:`CoTrainingComparison`).
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
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from tlk_components.data.cotraining import TwoViewSplits
from tlk_components.engines.handlers.reporting import save_bar_chart, to_jsonable
from tlk_components.engines.trainers.cotraining import (
    LOG_NAME,
    MODEL_NAME,
    PLOT_NAME,
    TwoViewDataset,
    accuracy_or_none,
    as_two_view_network,
    check_two_view_dataset,
    load_two_view_model,
    plot_cotraining_log,
)
from tlk_components.networks.two_view import TwoViewClassifier, ensemble_probabilities
from tlk_components.utils.distributed import is_rank0
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import (
    atomic_write_json,
    atomic_write_text,
)
from tlk_components.utils.validation import check_positive_int, look_up_option

__all__ = ["CoTrainingComparison", "CoTrainingEvaluator", "pseudo_label_summary", "view_probabilities"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def view_probabilities(
    network: TwoViewClassifier,
    dataset: Dataset,
    inferer: Callable,
    device: torch.device,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities of each view's model on every item of ``dataset`` (stacked views), on CPU."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out0, out1 = [], []
    for batch in loader:
        p0, p1 = inferer(batch["image"].to(device), network.view_probabilities)
        out0.append(p0.cpu())
        out1.append(p1.cpu())
    return torch.cat(out0), torch.cat(out1)


def _per_class(pred: np.ndarray, truth: np.ndarray, n: int) -> list[float | None]:
    return [float((pred[truth == c] == c).mean()) if (truth == c).any() else None for c in range(n)]


class CoTrainingEvaluator:
    """Test accuracy of both models and their ensemble, per-class accuracy, confusion matrix and plots.

    Loads ``<ckpt_dir>/model.pt`` into ``network`` (a
    :class:`~tlk_components.networks.two_view.TwoViewClassifier`), runs it through ``inferer`` on the split's
    items of ``dataset`` (both views stacked as channels) and scores each view's model and the ensemble (the mean
    of their softmax probabilities, ``network``'s output).

    Writes ``<output_dir>/metrics.json`` with ``test_accuracy_view0``, ``test_accuracy_view1``,
    ``test_accuracy_ensemble``, ``per_class_accuracy`` (per model and ensemble), ``confusion_matrix_ensemble`` and
    ``n_test``; ``per_class_accuracy.png``; and redraws ``cotraining_accuracy.png`` from the training log when the
    log is in ``output_dir``.

    Args:
        splits: as for :class:`CoTrainer`.
        dataset: :class:`TwoViewDataset` of ``splits.samples``.
        network: the two-view network (architecture as trained; a DDP wrapper is removed).
        ckpt_dir: folder of ``model.pt``.
        output_dir: where the files go.
        inferer: runs the network (a MONAI ``Inferer``; default ``SimpleInferer()``).
        split: ``"test"`` (default) or ``"val"``.
        device: where the network runs.
        keys: metric names that must be present (metadata ``eval_metrics``).
        filename: name of the metrics file (default ``metrics.json``).
        batch_size: samples per forward pass, >= 1 (default 256).

    Raises:
        ConfigError: a ``dataset`` of other samples, a ``network`` that is not a ``TwoViewClassifier``, an empty
            split or a bad ``split``/``batch_size``.
    """

    def __init__(
        self,
        splits: TwoViewSplits,
        dataset: TwoViewDataset,
        network: nn.Module,
        ckpt_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        inferer: Callable | None = None,
        split: str = "test",
        device: torch.device | str = "cpu",
        keys: Sequence[str] | None = None,
        filename: str = "metrics.json",
        batch_size: int = 256,
    ) -> None:
        from monai.inferers import SimpleInferer

        self.filename = str(filename)
        self.splits = splits
        self.dataset = check_two_view_dataset(dataset, splits.samples)
        self.network = as_two_view_network(network)
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.ckpt_dir, self.output_dir = Path(ckpt_dir), Path(output_dir)
        self.split = look_up_option("split", split, ("test", "val"))
        self.device = torch.device(device)
        self.keys = list(keys) if keys is not None else None
        self.batch_size = check_positive_int("batch_size", batch_size)
        if len(getattr(splits, self.split)) == 0:
            raise ConfigError(f"the {self.split} split is empty; raise test_fraction (or use more samples)")

    def run(self) -> dict[str, Any]:
        """Evaluate and write the files; returns the metrics."""
        load_two_view_model(self.network, self.ckpt_dir, self.device)
        s = self.splits.samples
        ids = getattr(self.splits, self.split)
        truth = s.labels[ids]
        p0, p1 = view_probabilities(
            self.network, Subset(self.dataset, ids.tolist()), self.inferer, self.device, self.batch_size
        )
        preds = {
            "view0": p0.argmax(1).numpy(),
            "view1": p1.argmax(1).numpy(),
            "ensemble": ensemble_probabilities(p0, p1).argmax(1).numpy(),
        }
        from sklearn.metrics import confusion_matrix

        n = s.num_classes
        out: dict[str, Any] = {f"{self.split}_accuracy_{k}": accuracy_or_none(p, truth) for k, p in preds.items()}
        out["per_class_accuracy"] = {
            k: dict(zip(s.class_names, _per_class(p, truth, n), strict=True)) for k, p in preds.items()
        }
        out["confusion_matrix_ensemble"] = confusion_matrix(truth, preds["ensemble"], labels=list(range(n))).tolist()
        out[f"n_{self.split}"] = int(len(ids))
        if self.keys is not None:
            missing = [k for k in self.keys if k not in out]
            if missing:
                raise KeyError(f"metrics {missing} named in eval_metrics were not computed; computed: {sorted(out)}")
        if is_rank0():
            atomic_write_json(self.output_dir / self.filename, to_jsonable(out))
            series = {k: [np.nan if a is None else a for a in _per_class(p, truth, n)] for k, p in preds.items()}
            save_bar_chart(
                series,
                s.class_names,
                self.output_dir / f"{self.split}_per_class_accuracy.png",
                title=f"{self.split} accuracy per class",
                ylabel="accuracy",
            )
            log = self.output_dir / f"{LOG_NAME}.json"
            if log.is_file():
                import json

                plot_cotraining_log(json.loads(log.read_text()), self.output_dir / PLOT_NAME)
        logger.info(", ".join(f"{k}={out[k]:.4f}" for k in out if "_accuracy_" in k and out[k] is not None))
        return out


def pseudo_label_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pseudo-labels a co-training run added and their accuracy, from its per-iteration log.

    Args:
        history: rows of ``cotraining_log.json``.

    Returns:
        ``{"pseudo_labels": n added (both models), "pseudo_label_accuracy": share correct among those whose true
        class is known, or None}``.
    """
    added = sum(int(h.get("added_view0") or 0) + int(h.get("added_view1") or 0) for h in history)
    scored = [
        (h["pseudo_label_accuracy"], int(h.get("added_view0") or 0) + int(h.get("added_view1") or 0))
        for h in history
        if h.get("pseudo_label_accuracy") is not None
    ]
    n = sum(w for _, w in scored)
    return {"pseudo_labels": added, "pseudo_label_accuracy": sum(a * w for a, w in scored) / n if n else None}


class CoTrainingComparison:
    """Side by side: labelled-only baseline, co-training and full supervision, scored on the same split.

    Each run is a trained ``ckpt_dir`` (``model.pt``) plus the ``output_dir`` of its training (its
    ``cotraining_log.json`` gives the pseudo-labels added and their accuracy). Every run is evaluated by
    :class:`CoTrainingEvaluator` (its ``metrics.json`` goes to the run's output folder), then ``output_dir`` gets
    ``comparison.json``, ``comparison.csv``, ``comparison.md`` (a markdown table) and ``comparison.png`` (grouped
    bars: accuracy of the ensemble and of each view per run, and the pseudo-label accuracy). A run that was not
    trained (no ``model.pt``) is listed under ``missing`` with the config that trains it; none trained is an error.

    Args:
        splits: as for :class:`CoTrainer`.
        dataset: :class:`TwoViewDataset` of ``splits.samples``.
        network: the two-view network (architecture as trained).
        runs: run name -> ``{"ckpt_dir": ..., "output_dir": ..., "config": how to train it}``, in table order.
        output_dir: where the comparison files go.
        inferer: runs the network (default ``SimpleInferer()``).
        split: ``"test"`` (default) or ``"val"``.
        device: where the network runs.
        batch_size: samples per forward pass, >= 1 (default 256).

    Raises:
        ConfigError: ``runs`` empty or malformed; DatasetError: no run has been trained.
    """

    def __init__(
        self,
        splits: TwoViewSplits,
        dataset: TwoViewDataset,
        network: nn.Module,
        runs: Mapping[str, Mapping[str, Any]],
        output_dir: str | os.PathLike,
        inferer: Callable | None = None,
        split: str = "test",
        device: torch.device | str = "cpu",
        batch_size: int = 256,
    ) -> None:
        if not isinstance(runs, Mapping) or not runs:
            raise ConfigError("runs: expected {name: {ckpt_dir, output_dir, config}} for at least one run")
        for name, run in runs.items():
            if not isinstance(run, Mapping) or not {"ckpt_dir", "output_dir"} <= set(run):
                raise ConfigError(f"runs#{name}: expected a dict with ckpt_dir and output_dir (and config)")
        self.splits, self.dataset, self.network = splits, dataset, network
        self.runs = {str(k): dict(v) for k, v in runs.items()}
        self.output_dir = Path(output_dir)
        self.inferer, self.split, self.device, self.batch_size = inferer, split, device, batch_size

    def run(self) -> dict[str, Any]:
        """Evaluate every trained run and write the comparison files; returns ``comparison.json``'s content."""
        import json

        rows, missing = [], {}
        acc = f"{self.split}_accuracy"
        for name, run in self.runs.items():
            if not (Path(run["ckpt_dir"]) / MODEL_NAME).is_file():
                missing[name] = f"{Path(run['ckpt_dir']) / MODEL_NAME} not found; train it with {run.get('config', '')}"
                continue
            m = CoTrainingEvaluator(
                self.splits,
                self.dataset,
                self.network,
                ckpt_dir=run["ckpt_dir"],
                output_dir=run["output_dir"],
                inferer=self.inferer,
                split=self.split,
                device=self.device,
                batch_size=self.batch_size,
            ).run()
            log = Path(run["output_dir"]) / f"{LOG_NAME}.json"
            history = json.loads(log.read_text()) if log.is_file() else []
            row = {
                "run": name,
                f"{acc}_ensemble": m[f"{acc}_ensemble"],
                f"{acc}_view0": m[f"{acc}_view0"],
                f"{acc}_view1": m[f"{acc}_view1"],
                "train_size_view0": history[-1].get("train_size_view0") if history else None,
                "train_size_view1": history[-1].get("train_size_view1") if history else None,
                **pseudo_label_summary(history),
            }
            rows.append(row)
        if not rows:
            raise DatasetError(
                "no run to compare has been trained: " + "; ".join(f"{k}: {v}" for k, v in missing.items())
            )
        out = {"split": self.split, f"n_{self.split}": int(len(getattr(self.splits, self.split))), "runs": rows}
        if missing:
            out["missing"] = missing
            for name, why in missing.items():
                logger.warning(f"comparison without {name!r}: {why}")
        if is_rank0():
            self._write(out, rows, acc)
        return out

    def _write(self, out: dict[str, Any], rows: list[dict[str, Any]], acc: str) -> None:
        cols = list(rows[0])
        atomic_write_json(self.output_dir / "comparison.json", to_jsonable(out))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r[k] is None else r[k] for k in cols})
        atomic_write_text(self.output_dir / "comparison.csv", buf.getvalue())

        def cell(v: Any) -> str:
            return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

        md = [f"| {' | '.join(cols)} |", "|" + "---|" * len(cols)]
        md += [f"| {' | '.join(cell(r[k]) for k in cols)} |" for r in rows]
        md.append("")
        md.append(
            f"{self.split} split: {out[f'n_{self.split}']} samples. pseudo_label_accuracy: share of the pseudo-labels "
            "co-training added whose hidden true class matches (n/a: no true class known, or no exchange)."
        )
        atomic_write_text(self.output_dir / "comparison.md", "\n".join(md) + "\n")
        series = {
            f"{self.split} accuracy, ensemble": [r[f"{acc}_ensemble"] for r in rows],
            f"{self.split} accuracy, view 0": [r[f"{acc}_view0"] for r in rows],
            f"{self.split} accuracy, view 1": [r[f"{acc}_view1"] for r in rows],
            "pseudo-label accuracy": [
                np.nan if r["pseudo_label_accuracy"] is None else r["pseudo_label_accuracy"] for r in rows
            ],
        }
        save_bar_chart(
            series,
            [r["run"] for r in rows],
            self.output_dir / "comparison.png",
            title=f"{self.split} accuracy per run, and accuracy of the pseudo-labels added",
            ylabel="accuracy",
        )
