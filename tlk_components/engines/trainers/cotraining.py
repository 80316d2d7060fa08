# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Two-view co-training (Blum & Mitchell, COLT 1998): the trainer and its datasets.

:class:`CoTrainer` trains one network per view on the labelled samples, then repeatedly lets each network label
the unlabelled samples it is most confident about for the other (see
:mod:`tlk_components.engines.trainers.pseudo_label`), with a run lock, checkpoints and resume, a log of every round
(CSV + PNG) and the modes ``cotraining``, ``labelled_only`` (the supervised baseline) and ``all_labels``
(the upper bound).
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
from ignite.engine import Engine, Events
from ignite.metrics import Accuracy, Loss
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlk_components.data.cotraining import TwoViewSamples, TwoViewSplits, read_pairs_csv
from tlk_components.engines.handlers.checkpoint import (
    AtomicCheckpointSaver,
    RunLock,
    _schedule_settings,
    check_same_run,
    unwrap_model,
)
from tlk_components.engines.handlers.reporting import save_figure, to_jsonable
from tlk_components.engines.handlers.training import StopOnNonFiniteLoss
from tlk_components.engines.trainers.pseudo_label import exchange_pseudo_labels
from tlk_components.networks.two_view import TwoViewClassifier, ensemble_probabilities, two_view_state_dict
from tlk_components.utils.distributed import is_rank0
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    load_state_dict_checked,
    load_weights,
    move_aside,
)
from tlk_components.utils.runtime import run_fingerprint
from tlk_components.utils.validation import check_positive_int, check_probability, look_up_option

__all__ = [
    "LOG_FIELDS",
    "LOG_NAME",
    "MODEL_NAME",
    "MODES",
    "PLOT_NAME",
    "CoTrainer",
    "TwoViewDataset",
    "ViewImages",
    "accuracy_or_none",
    "as_two_view_network",
    "check_two_view_dataset",
    "load_two_view_model",
    "model_filename",
    "plot_cotraining_log",
    "predict_proba",
    "read_class_names",
]

logger = logging.getLogger(__name__)


MODES = ("cotraining", "labelled_only", "all_labels")


#: File name of both best models together: the state dict of the bundle's ``network_def`` (``TwoViewClassifier``).
MODEL_NAME = "model.pt"


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


def _pair(name: str, value: Any, allow_none: bool = False) -> list[Any]:
    """One object per view: a sequence of two, or one object shared by both views."""
    if value is None:
        if allow_none:
            return [None, None]
        raise ConfigError(f"{name}: required, one per view (a list of two)")
    if isinstance(value, Sequence) and not isinstance(value, str | nn.Module):
        if len(value) != 2:
            raise ConfigError(f"{name}: expected two entries (view 0, view 1), got {len(value)}")
        return list(value)
    return [value, value]


class ViewImages:
    """The images of one view, read once through ``transform`` (path -> tensor ``C, H, W``) and kept in memory.

    Args:
        paths: image path per sample id.
        transform: MONAI transform chain reading one path (e.g. ``LoadImage`` + ``ScaleIntensityRange``).
        cache: True (default) loads all images at construction; False loads on access (large datasets).

    Raises:
        DatasetError: an image cannot be read, naming the file.
    """

    def __init__(self, paths: Sequence[str], transform: Callable[[str], Any], cache: bool = True) -> None:
        self.paths = list(paths)
        self.transform = transform
        self._cache: list[torch.Tensor] | None = [self._load(p) for p in self.paths] if cache else None

    def _load(self, path: str) -> torch.Tensor:
        try:
            x = self.transform(path)
        except Exception as e:  # MONAI wraps reader errors in RuntimeError; name the file
            raise DatasetError(f"{path}: cannot be read as an image ({type(e).__name__}: {str(e)[:200]})") from None
        return torch.as_tensor(x, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._cache[i] if self._cache is not None else self._load(self.paths[i])


class TwoViewDataset(Dataset):
    """Aligned view pairs as one dataset: item ``i`` is ``{"image": both views stacked as channels, "label": class}``.

    ``image`` is view 0 then view 1 of sample ``i`` concatenated along the channel axis (``c0 + c1, H, W``): the
    input of the bundle's ``network_def``
    (:class:`~tlk_components.networks.two_view.TwoViewClassifier`); ``label`` is the class index (int64), -1 where
    it is unknown. The co-training engine reads each view on its own through :attr:`views` (one model per view) and
    indexes the dataset with the ids of :class:`~tlk_components.data.cotraining.TwoViewSplits`; the evaluator and
    the predictor batch its items.

    Args:
        data: the aligned sample table (:class:`~tlk_components.data.cotraining.TwoViewSamples`, e.g.
            ``splits.samples``), or the path of a CSV of view pairs (header ``view0,view1[,label]``, paths relative
            to the CSV; for inference: its labels are kept as text in :attr:`raw_labels` and ``label`` is -1).
        transform: path -> tensor ``C, H, W`` (a MONAI transform chain), one for both views or one per view.
        cache: keep every image in memory once the views are first read (default True); False reads on access.

    Attributes:
        view0, view1: absolute image paths per view.
        labels: class index per sample, -1 where unknown.
        raw_labels: the label of each sample as text: the CSV's label column, or the class name from the sample
            table; ``""`` where unknown.
        root: the CSV's folder (paths in it are relative to it), or None for a sample table.

    Raises:
        ConfigError: ``data`` is neither a sample table nor a CSV path.
        DatasetError: the CSV is malformed or image files it lists are missing (every one named).
    """

    def __init__(
        self,
        data: TwoViewSamples | str | os.PathLike,
        transform: Callable | Sequence[Callable],
        cache: bool = True,
    ) -> None:
        self.root: Path | None = None
        if isinstance(data, TwoViewSamples):
            self.view0, self.view1 = list(data.view0), list(data.view1)
            self.labels = np.asarray(data.labels, dtype=np.int64)
            self.raw_labels = [data.class_names[c] if c >= 0 else "" for c in self.labels.tolist()]
        elif isinstance(data, str | os.PathLike):
            self.view0, self.view1, self.raw_labels = read_pairs_csv(data)
            self.root = Path(data).parent
            missing = [
                f"{os.path.relpath(p, self.root)}: image file missing"
                for p in self.view0 + self.view1
                if not os.path.isfile(p)
            ]
            if missing:
                raise DatasetError(f"{data}: {len(missing)} image file(s) missing", missing)
            self.labels = np.full(len(self.view0), -1, dtype=np.int64)
        else:
            raise ConfigError(
                "data: expected TwoViewSamples (e.g. $@splits.samples) or the path of a view0,view1[,label] CSV, "
                f"got {type(data).__name__}"
            )
        self.transform = _pair("transform", transform)
        self.cache = bool(cache)
        self._views: list[ViewImages] | None = None

    @property
    def views(self) -> list[ViewImages]:
        """The images of view 0 and of view 1 (:class:`ViewImages`; read on first use, then cached)."""
        if self._views is None:
            self._views = [
                ViewImages(paths, t, self.cache)
                for paths, t in zip((self.view0, self.view1), self.transform, strict=True)
            ]
        return self._views

    def __len__(self) -> int:
        return len(self.view0)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x0, x1 = self.views[0][i], self.views[1][i]
        if x0.shape[1:] != x1.shape[1:]:
            raise DatasetError(
                f"sample {i}: view 0 ({self.view0[i]}) is {list(x0.shape)} but view 1 ({self.view1[i]}) is "
                f"{list(x1.shape)}; the two-view network takes both views stacked as channels, so they need the same "
                "spatial size: add a Resize to the preprocessing"
            )
        return {"image": torch.cat([x0, x1]), "label": torch.tensor(int(self.labels[i]), dtype=torch.long)}


class _LabelledView(Dataset):
    """``{"image", "label"}`` items for sample ids ``ids`` of one view (labels may be pseudo-labels)."""

    def __init__(self, images: ViewImages, ids: np.ndarray, labels: np.ndarray, augmentation: Callable | None) -> None:
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


@torch.no_grad()
def predict_proba(
    network: nn.Module,
    images: ViewImages,
    ids: Sequence[int] | np.ndarray,
    device: torch.device | str,
    batch_size: int = 256,
    inferer: Callable | None = None,
) -> torch.Tensor:
    """Softmax class probabilities of ``network`` on samples ``ids`` of one view, in eval mode.

    Args:
        network: the classifier of the view (logits).
        images: the view's images.
        ids: sample ids to score.
        device: where ``network`` runs.
        batch_size: images per forward pass (default 256).
        inferer: ``inferer(x, network)`` runs the network (a MONAI ``Inferer``); default a direct call.

    Shape:
        returns ``len(ids), C`` (float32, on CPU).
    """
    net = unwrap_model(network)
    was_training = net.training
    net.eval()
    out = []
    ids = np.asarray(ids, dtype=np.int64)
    for s in range(0, len(ids), batch_size):
        x = torch.stack([images[int(i)] for i in ids[s : s + batch_size]]).to(device)
        logits = inferer(x, net) if inferer is not None else net(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    net.train(was_training)
    if not out:
        n_cls = getattr(net, "num_classes", None)
        return torch.zeros(0, n_cls or 0)
    return torch.cat(out)


def model_filename(view: int) -> str:
    """File name of the best weights of model ``view`` in ``ckpt_dir``: ``model_view<view>.pt``.

    The state dict of that view's network alone; :data:`MODEL_NAME` (``model.pt``) holds both, as the state dict of
    the bundle's ``network_def`` (``TwoViewClassifier``).

    Args:
        view: 0 or 1.

    Returns:
        ``"model_view0.pt"`` or ``"model_view1.pt"``.
    """
    return f"model_view{int(view)}.pt"


def read_class_names(ckpt_dir: str | os.PathLike) -> list[str]:
    """Class names in index order from ``<ckpt_dir>/classes.json`` (written by :class:`CoTrainer` next to the models).

    Raises:
        DatasetError: the file is missing or malformed, with the fix.
    """
    import json

    path = Path(ckpt_dir) / "classes.json"
    try:
        cmap = json.loads(path.read_text())
        return [str(n) for n, _ in sorted(cmap.items(), key=lambda kv: int(kv[1]))]
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise DatasetError(
            f"{path}: class map of the trained models not readable ({type(e).__name__}); train the bundle first "
            f"(training writes it next to {MODEL_NAME}) or copy the dataset's classes.json there"
        ) from None


def accuracy_or_none(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Share of correct predictions over the samples with a known label (``truth >= 0``); None when none is known."""
    known = truth >= 0
    return float((pred[known] == truth[known]).mean()) if known.any() else None


def plot_cotraining_log(history: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """PNG per co-training iteration: validation accuracy of each model and the ensemble, the accuracy of the
    pseudo-labels added (where their true class is known), and the pool / training-set sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for a in (ax, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    its = [h["iteration"] for h in history]
    for key, label in (
        ("val_accuracy_view0", "model 0 (view 0)"),
        ("val_accuracy_view1", "model 1 (view 1)"),
        ("val_accuracy_ensemble", "ensemble"),
        ("pseudo_label_accuracy", "pseudo-labels added this iteration (vs. true labels)"),
    ):
        ys = [np.nan if h.get(key) is None else h[key] for h in history]
        ax.plot(its, ys, marker="o", label=label, linestyle="--" if key.startswith("pseudo") else "-")
    ax.set_xlabel("co-training iteration")
    ax.set_ylabel("accuracy")
    ax.set_title("validation accuracy (solid) and pseudo-label accuracy (dashed)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    ax2.plot(its, [h["pool_size"] for h in history], marker="o", label="unlabelled pool")
    ax2.plot(its, [h["train_size_view0"] for h in history], marker="o", label="train set, view 0")
    ax2.plot(its, [h["train_size_view1"] for h in history], marker="o", label="train set, view 1")
    ax2.set_xlabel("co-training iteration")
    ax2.set_ylabel("samples")
    ax2.set_title("pool and training-set sizes (after the exchange)")
    ax2.legend(fontsize="small")
    ax2.grid(alpha=0.3)
    return save_figure(fig, path)


#: Entries of a ``ReduceLROnPlateau`` state that record progress, not settings.
_PLATEAU_PROGRESS = frozenset({"best", "num_bad_epochs", "cooldown_counter"})


def _plateau_free(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A scheduler's settings without its progress (so two states compare equal when only progress differs)."""
    if state is None:
        return None
    return {k: v for k, v in _schedule_settings(state).items() if k not in _PLATEAU_PROGRESS}


class CoTrainer:
    """Two-view co-training as an engine a config instantiates with keyword arguments (module docstring).

    Args:
        splits: aligned samples and ``train``/``val``/``test``/``unlabelled`` ids
            (:func:`tlk_components.data.cotraining.load_splits`).
        dataset: the images of ``splits.samples`` (:class:`TwoViewDataset` built with ``data=splits.samples``): the
            engine draws each model's training set, the validation set and the unlabelled pool from its views.
        networks: one classifier per view (``[network0, network1]``, e.g. ``network_def.view0`` and ``.view1`` of a
            :class:`~tlk_components.networks.two_view.TwoViewClassifier`), on ``device``.
        optimizers: one optimizer per view.
        lr_schedulers: one ``ReduceLROnPlateau`` (or other scheduler) per view, stepped after each validation with
            the validation loss (``mode="min"``) or accuracy (``mode="max"``); None: constant learning rate.
        loss_function: default ``nn.CrossEntropyLoss()``.
        inferer: runs a view's network in training, validation and pool scoring (a MONAI ``Inferer``; default
            ``SimpleInferer()``).
        augmentation: optional random transform of a training image tensor, one per view or one for both.
        device: where the networks run.
        mode: ``"cotraining"`` (default), ``"labelled_only"`` (baseline) or ``"all_labels"`` (fully supervised).
        iterations: co-training rounds, >= 1 (default 10).
        max_epochs: maximum epochs per model per round, >= 1 (default 10).
        k: pseudo-labels each model picks per round, >= 1 and <= the initial pool (default 50).
        threshold: optional minimum confidence of a pick, in [0, 1] (default None).
        class_balance: at most ``k // C`` picks per predicted class (default False).
        batch_size: training batch size, >= 1 (default 32).
        num_workers: data-loader workers, >= 0 (default 0).
        patience: early stopping: stop a model's round after this many epochs without a lower validation loss;
            0 disables (default 5).
        iteration_patience: stop co-training after this many rounds without a better ensemble validation accuracy;
            0 disables (default 0).
        ckpt_dir: folder of ``model_view0.pt``, ``model_view1.pt`` (best validation accuracy of each model),
            ``model.pt`` (both, as the state dict of a ``TwoViewClassifier``), ``classes.json`` and
            ``checkpoint_last.pt``.
        output_dir: folder of the log (JSON/CSV), the PNG and TensorBoard event files.
        resume: continue from ``checkpoint_last.pt`` when it exists (default True) and was written by the same run
            (same configs and overrides, apart from ``--epochs``, ``--learning_rate``, ``--device`` ...; see
            :func:`~tlk_components.utils.runtime.run_fingerprint`). A checkpoint of another run is refused with the
            fix; a new run (resume off, or nothing to resume) first renames an earlier run's ``model.pt`` /
            ``model_view<v>.pt`` to ``<name>.bak-<time>``. Resuming with another learning rate or scheduler setting
            keeps the optimizer state and starts the learning-rate schedule afresh from the config.
        run_info: what identifies the run; default :func:`~tlk_components.utils.runtime.run_fingerprint` of the
            command line (None when run from Python: no comparison).
        lock: hold ``<ckpt_dir>/.lock`` while running, so a second run on the same folder is refused (default True).
        amp: mixed precision on CUDA (ignored on CPU).
        seed: seed of the training data order.
        progress: show ignite progress bars.
        distributed: shard training batches with a ``DistributedSampler`` (under torchrun).

    Raises:
        ConfigError: bad hyperparameters, ``k`` larger than the unlabelled pool, an empty validation split, a
            ``dataset`` that is not the images of ``splits.samples``, or a labelled sample set that is empty; (in
            :meth:`run`) the folder is locked by another run, or the checkpoint belongs to another run or does not
            fit the networks.
        NonFiniteLossError: (in :meth:`run`) a training loss became NaN/Inf; nothing of that epoch is saved.
    """

    def __init__(
        self,
        splits: TwoViewSplits,
        dataset: TwoViewDataset,
        networks: Sequence[nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
        ckpt_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        lr_schedulers: Sequence[Any] | Any | None = None,
        loss_function: Callable | None = None,
        inferer: Callable | None = None,
        augmentation: Callable | Sequence[Callable | None] | None = None,
        device: torch.device | str = "cpu",
        mode: str = "cotraining",
        iterations: int = 10,
        max_epochs: int = 10,
        k: int = 50,
        threshold: float | None = None,
        class_balance: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        patience: int = 5,
        iteration_patience: int = 0,
        resume: bool = True,
        run_info: Mapping[str, Any] | None = None,
        lock: bool = True,
        amp: bool = False,
        seed: int = 0,
        progress: bool = True,
        distributed: bool = False,
    ) -> None:
        from monai.inferers import SimpleInferer

        if not isinstance(splits, TwoViewSplits):
            raise ConfigError(
                "splits: expected TwoViewSplits (from tlk_components.data.cotraining.load_splits), "
                f"got {type(splits).__name__}"
            )
        self.splits = splits
        self.samples: TwoViewSamples = splits.samples
        self.dataset = check_two_view_dataset(dataset, self.samples)
        self.networks = _pair("networks", networks)
        self.optimizers = _pair("optimizers", optimizers)
        if self.networks[0] is self.networks[1] or self.optimizers[0] is self.optimizers[1]:
            raise ConfigError(
                "networks/optimizers: each view needs its own network and optimizer (got the same object twice)"
            )
        self.lr_schedulers = _pair("lr_schedulers", lr_schedulers, allow_none=True)
        self.loss_function = loss_function if loss_function is not None else nn.CrossEntropyLoss()
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.augmentation = _pair("augmentation", augmentation, allow_none=True)
        self.device = torch.device(device)
        self.mode = look_up_option("mode", mode, MODES)
        self.iterations = check_positive_int("iterations", iterations)
        self.max_epochs = check_positive_int("max_epochs", max_epochs)
        self.k = check_positive_int("k", k)
        self.threshold = None if threshold is None else check_probability("threshold", threshold)
        self.class_balance = bool(class_balance)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_workers = check_positive_int("num_workers", num_workers, minimum=0)
        self.patience = check_positive_int("patience", patience, minimum=0)
        self.iteration_patience = check_positive_int("iteration_patience", iteration_patience, minimum=0)
        self.ckpt_dir, self.output_dir = Path(ckpt_dir), Path(output_dir)
        self.resume = bool(resume)
        self.run_info = dict(run_info) if run_info is not None else run_fingerprint()
        self._lock = RunLock(self.ckpt_dir) if lock else None
        # the learning rates the config asks for (resuming compares them with those of the run that was saved)
        self._config_lrs = [[float(g["lr"]) for g in o.param_groups] for o in self.optimizers]
        self.amp = bool(amp) and self.device.type == "cuda"
        self.seed = int(seed)
        self.progress = bool(progress)
        self.distributed = bool(distributed)
        if len(splits.val) == 0:
            raise ConfigError("the validation split is empty; raise val_fraction (or use more samples)")
        pool = len(splits.unlabelled)
        if self.mode == "cotraining" and pool and self.k > pool:
            raise ConfigError(
                f"k={self.k} is larger than the unlabelled pool ({pool} samples); choose k <= {pool} "
                f"(the source notebook used 5% of the pool: k={max(1, pool // 20)})"
            )
        self.last_path = self.ckpt_dir / "checkpoint_last.pt"
        self.savers = [
            AtomicCheckpointSaver(
                save_dir=self.ckpt_dir,
                save_dict={"model": self.networks[v]},
                save_last=False,
                key_metric_name="val_accuracy",
                key_metric_filename=model_filename(v),
            )
            for v in (0, 1)
        ]
        for saver in self.savers:
            # the best accuracy per model lives in this engine's own checkpoint (state_dict "best<v>"); starting from
            # -inf (not None) keeps the saver from taking the evaluator's MONAI ``state.best_metric`` as a restored
            # value (that one already holds the current epoch's accuracy, so nothing would ever be saved)
            saver.best = float("-inf")
        self.history: list[dict[str, Any]] = []
        self._writer: Any = None
        self._global_epoch = [0, 0]

    # ----------------------------------------------------------------------------------------- state

    def _initial_state(self) -> None:
        s, labels = self.splits, self.samples.labels
        train_ids = s.train
        if self.mode == "all_labels":
            known = s.unlabelled[labels[s.unlabelled] >= 0]
            if len(s.unlabelled) and not len(known):
                logger.warning(
                    "mode all_labels: no unlabelled sample has a true class (a hidden_label column), so this run is "
                    "the labelled-only baseline"
                )
            train_ids = np.sort(np.concatenate([s.train, known]))
        self.train_ids = [train_ids.copy(), train_ids.copy()]
        self.train_labels = [labels[train_ids].copy(), labels[train_ids].copy()]
        self.train_pseudo = [np.zeros(len(train_ids), bool), np.zeros(len(train_ids), bool)]
        self.pool = s.unlabelled.copy() if self.mode == "cotraining" else np.zeros(0, np.int64)
        self.start_iteration = 0
        self.finished = False
        self.best_ensemble = -1.0
        self.stale = 0

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as tensors and plain types (loadable with ``weights_only=True``)."""
        out: dict[str, Any] = {
            "n_samples": len(self.samples),
            "mode": self.mode,
            "iteration": self.start_iteration,
            "finished": self.finished,
            "best_ensemble": self.best_ensemble,
            "stale": self.stale,
            "pool": torch.as_tensor(self.pool, dtype=torch.long),
            "history": to_jsonable(self.history),
            "global_epoch": list(self._global_epoch),
            "run_info": self.run_info,
        }
        for v in (0, 1):
            out[f"model{v}"] = unwrap_model(self.networks[v]).state_dict()
            out[f"optimizer{v}"] = self.optimizers[v].state_dict()
            if self.lr_schedulers[v] is not None:
                out[f"lr_scheduler{v}"] = self.lr_schedulers[v].state_dict()
            out[f"train_ids{v}"] = torch.as_tensor(self.train_ids[v], dtype=torch.long)
            out[f"train_labels{v}"] = torch.as_tensor(self.train_labels[v], dtype=torch.long)
            out[f"train_pseudo{v}"] = torch.as_tensor(self.train_pseudo[v], dtype=torch.bool)
            out[f"best{v}"] = self.savers[v].best
            out[f"config_lr{v}"] = list(self._config_lrs[v])
        return out

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (raises ConfigError for a checkpoint of another dataset or mode)."""
        if ckpt.get("n_samples") != len(self.samples) or ckpt.get("mode") != self.mode:
            raise ConfigError(
                f"{self.last_path}: written for {ckpt.get('n_samples')} samples in mode {ckpt.get('mode')!r}, this run "
                f"has {len(self.samples)} in mode {self.mode!r}; delete it (or pass --resume false) to start over"
            )
        check_same_run(self.last_path, ckpt.get("run_info"), self.run_info)
        fix = f"Pass --resume false to start over (or delete {self.last_path})"
        for v in (0, 1):
            load_state_dict_checked(unwrap_model(self.networks[v]), ckpt[f"model{v}"], self.last_path, f"model{v}", fix)
            opt, sched = self.optimizers[v], self.lr_schedulers[v]
            config_lrs = self._config_lrs[v]
            sched_config = None if sched is None else _schedule_settings(sched.state_dict())
            load_state_dict_checked(opt, ckpt[f"optimizer{v}"], self.last_path, f"optimizer{v}", fix)
            saved_sched = ckpt.get(f"lr_scheduler{v}")
            lr_changed = list(ckpt.get(f"config_lr{v}", config_lrs)) != config_lrs
            sched_changed = (
                sched is not None
                and saved_sched is not None
                and _plateau_free(saved_sched) != _plateau_free(sched_config)
            )
            if lr_changed or sched_changed:
                for g, lr in zip(opt.param_groups, config_lrs, strict=False):
                    g["lr"] = lr
                logger.warning(
                    f"resume: the learning rate or scheduler settings of model {v} changed since {self.last_path} was "
                    f"written; kept the optimizer state and restarted the learning-rate schedule from the config "
                    f"(learning rate {config_lrs})"
                )
            elif sched is not None and saved_sched is not None:
                load_state_dict_checked(sched, saved_sched, self.last_path, f"lr_scheduler{v}", fix)
            self.train_ids[v] = ckpt[f"train_ids{v}"].numpy()
            self.train_labels[v] = ckpt[f"train_labels{v}"].numpy()
            self.train_pseudo[v] = ckpt[f"train_pseudo{v}"].numpy()
            best = ckpt.get(f"best{v}")
            self.savers[v].best = float("-inf") if best is None else float(best)
        self.pool = ckpt["pool"].numpy()
        self.start_iteration = int(ckpt["iteration"])
        self.finished = bool(ckpt["finished"])
        self.best_ensemble = float(ckpt["best_ensemble"])
        self.stale = int(ckpt["stale"])
        self.history = list(ckpt["history"])
        self._global_epoch = list(ckpt.get("global_epoch", [0, 0]))

    # ----------------------------------------------------------------------------------------- pieces

    @property
    def images(self) -> list[ViewImages]:
        """The images of view 0 and view 1 (``dataset.views``)."""
        return self.dataset.views

    def _write_model(self) -> None:
        """``model.pt``: both best models as the state dict of a ``TwoViewClassifier``, written atomically (rank 0)."""
        paths = [self.ckpt_dir / model_filename(v) for v in (0, 1)]
        if not is_rank0() or not all(p.is_file() for p in paths):
            return
        states = [load_weights(p) for p in paths]
        atomic_torch_save(two_view_state_dict(states[0], states[1]), self.ckpt_dir / MODEL_NAME)

    def _scalar(self, tag: str, value: float | None, step: int) -> None:
        if self._writer is not None and value is not None:
            self._writer.add_scalar(tag, value, step)

    def _train_view(self, v: int, iteration: int) -> dict[str, Any]:
        """Up to ``max_epochs`` epochs of model ``v`` on its training set, validating after each epoch."""
        from ignite.handlers import ProgressBar
        from monai.engines import SupervisedEvaluator, SupervisedTrainer
        from monai.handlers import EarlyStopHandler, LrScheduleHandler, ValidationHandler

        net, opt, sched = self.networks[v], self.optimizers[v], self.lr_schedulers[v]
        ds = _LabelledView(self.images[v], self.train_ids[v], self.train_labels[v], self.augmentation[v])
        gen = torch.Generator().manual_seed(self.seed * 1000 + iteration * 2 + v)
        sampler = None
        if self.distributed:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(ds, shuffle=True, seed=self.seed + iteration * 2 + v)
        loader = DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=gen if sampler is None else None,
            num_workers=self.num_workers,
        )
        val_ds = _LabelledView(self.images[v], self.splits.val, self.samples.labels[self.splits.val], None)
        val_loader = DataLoader(val_ds, batch_size=max(self.batch_size, 64), shuffle=False)

        def pred_label(out: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            return out["pred"], out["label"]

        evaluator = SupervisedEvaluator(
            device=self.device,
            val_data_loader=val_loader,
            network=unwrap_model(net),
            inferer=self.inferer,
            amp=self.amp,
            decollate=False,
            key_val_metric={"val_accuracy": Accuracy(output_transform=pred_label)},
            additional_metrics={"val_loss": Loss(self.loss_function, output_transform=pred_label)},
        )
        trainer = SupervisedTrainer(
            device=self.device,
            max_epochs=self.max_epochs,
            train_data_loader=loader,
            network=net,
            optimizer=opt,
            loss_function=self.loss_function,
            inferer=self.inferer,
            amp=self.amp,
            decollate=False,
        )
        StopOnNonFiniteLoss().attach(trainer)
        ValidationHandler(interval=1, validator=evaluator, epoch_level=True).attach(trainer)
        if sched is not None:
            metric = "val_accuracy" if getattr(sched, "mode", "min") == "max" else "val_loss"
            LrScheduleHandler(sched, print_lr=False, step_transform=lambda e: e.state.metrics[metric]).attach(evaluator)
        if self.patience:
            EarlyStopHandler(
                patience=self.patience, score_function=lambda e: -float(e.state.metrics["val_loss"]), trainer=trainer
            ).attach(evaluator)
        self.savers[v].attach(evaluator)
        losses: list[float] = []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"].detach()))
        )

        def log_epoch(e: Engine) -> None:
            self._global_epoch[v] += 1
            step = self._global_epoch[v]
            m = evaluator.state.metrics
            if losses:
                self._scalar(f"train_loss/view{v}", float(np.mean(losses)), step)
            self._scalar(f"val_accuracy/view{v}", float(m["val_accuracy"]), step)
            self._scalar(f"val_loss/view{v}", float(m["val_loss"]), step)
            self._scalar(f"learning_rate/view{v}", float(opt.param_groups[0]["lr"]), step)
            logger.info(
                f"iteration {iteration + 1} model {v} epoch {e.state.epoch}: train loss "
                f"{np.mean(losses) if losses else float('nan'):.4f}, val accuracy {m['val_accuracy']:.4f}, "
                f"val loss {m['val_loss']:.4f}"
            )
            losses.clear()

        trainer.add_event_handler(Events.EPOCH_COMPLETED, log_epoch)
        if self.progress and is_rank0():
            ProgressBar(persist=False, desc=f"iter {iteration + 1} model {v}").attach(
                trainer, output_transform=lambda out: {"loss": float(out["loss"].detach())}
            )
        trainer.run()
        return {"epochs": int(trainer.state.epoch), "lr": float(opt.param_groups[0]["lr"])}

    def _exchange(self, row: dict[str, Any]) -> None:
        k = min(self.k, len(self.pool))
        if k < self.k:
            logger.info(
                f"unlabelled pool ({len(self.pool)}) is smaller than k={self.k}; this round picks {k} per model"
            )
        p0 = predict_proba(self.networks[0], self.images[0], self.pool, self.device, inferer=self.inferer)
        p1 = predict_proba(self.networks[1], self.images[1], self.pool, self.device, inferer=self.inferer)
        r = exchange_pseudo_labels(self.pool, p0, p1, k, self.threshold, self.class_balance)
        truth = self.samples.labels
        adds = ((0, r.to_view0_ids, r.to_view0_labels), (1, r.to_view1_ids, r.to_view1_labels))
        for v, ids, labs in adds:
            self.train_ids[v] = np.concatenate([self.train_ids[v], ids])
            self.train_labels[v] = np.concatenate([self.train_labels[v], labs])
            self.train_pseudo[v] = np.concatenate([self.train_pseudo[v], np.ones(len(ids), bool)])
            row[f"added_view{v}"] = int(len(ids))
            row[f"pseudo_label_accuracy_view{v}"] = accuracy_or_none(labs, truth[ids])
        all_labs = np.concatenate([r.to_view0_labels, r.to_view1_labels])
        all_ids = np.concatenate([r.to_view0_ids, r.to_view1_ids])
        row["pseudo_label_accuracy"] = accuracy_or_none(all_labs, truth[all_ids]) if len(all_ids) else None
        row["conflicts"] = int(len(r.conflict_ids))
        row["k"] = k
        self.pool = r.pool

    def _write_log(self) -> None:
        if not is_rank0():
            return
        atomic_write_json(self.output_dir / f"{LOG_NAME}.json", to_jsonable(self.history))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(LOG_FIELDS), extrasaction="ignore")
        w.writeheader()
        for h in self.history:
            w.writerow({k: ("" if h.get(k) is None else h.get(k)) for k in LOG_FIELDS})
        atomic_write_text(self.output_dir / f"{LOG_NAME}.csv", buf.getvalue())
        plot_cotraining_log(self.history, self.output_dir / PLOT_NAME)

    # ----------------------------------------------------------------------------------------- loop

    def run(self) -> list[dict[str, Any]]:
        """Run (or resume) co-training; returns the per-iteration log (also written to ``output_dir``)."""
        if self._lock is not None:
            self._lock.acquire()
        try:
            return self._run()
        finally:
            if self._lock is not None:
                self._lock.release()

    def _keep_earlier_models(self) -> None:
        """A new run: rename an earlier run's model files to ``<name>.bak-<time>`` before this run writes its own."""
        if not is_rank0():
            return
        for name in (MODEL_NAME, model_filename(0), model_filename(1)):
            kept = move_aside(self.ckpt_dir / name)
            if kept is not None:
                logger.warning(
                    f"{self.ckpt_dir / name} was written by an earlier run; kept it as {kept} (this run writes its own "
                    f"{name}; pass --ckpt_dir <folder> to keep runs apart)"
                )

    def _run(self) -> list[dict[str, Any]]:
        self._initial_state()
        if self.resume and self.last_path.is_file():
            self.load_state_dict(load_weights(self.last_path))
            logger.info(f"resumed from {self.last_path} after iteration {self.start_iteration}")
            if self.finished or self.start_iteration >= self.iterations:
                logger.info("co-training already finished; delete checkpoint_last.pt (or --resume false) to redo it")
                self._write_model()  # a run trained before model.pt existed gets it from model_view0/1.pt
                return self.history
        else:
            self._keep_earlier_models()
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if is_rank0():
            names = self.samples.class_names
            atomic_write_json(self.ckpt_dir / "classes.json", {n: i for i, n in enumerate(names)})
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        logger.info(
            f"{self.mode}: train {len(self.train_ids[0])}, val {len(self.splits.val)}, "
            f"unlabelled pool {len(self.pool)}, {self.iterations} iterations x {self.max_epochs} epochs, k={self.k}"
        )
        try:
            for it in range(self.start_iteration, self.iterations):
                row: dict[str, Any] = {
                    "iteration": it + 1,
                    "mode": self.mode,
                    "k": 0,
                    "added_view0": 0,
                    "added_view1": 0,
                    "conflicts": 0,
                    "pseudo_label_accuracy": None,
                    "pseudo_label_accuracy_view0": None,
                    "pseudo_label_accuracy_view1": None,
                }
                for v in (0, 1):
                    info = self._train_view(v, it)
                    row[f"epochs_view{v}"], row[f"lr_view{v}"] = info["epochs"], info["lr"]
                val = self.splits.val
                probs = [
                    predict_proba(self.networks[v], self.images[v], val, self.device, inferer=self.inferer)
                    for v in (0, 1)
                ]
                truth = self.samples.labels[val]
                for v in (0, 1):
                    row[f"val_accuracy_view{v}"] = accuracy_or_none(probs[v].argmax(1).numpy(), truth)
                ens = accuracy_or_none(ensemble_probabilities(probs[0], probs[1]).argmax(1).numpy(), truth)
                row["val_accuracy_ensemble"] = ens
                last = it == self.iterations - 1
                stop_reason = None
                if self.mode == "cotraining" and not last:
                    if len(self.pool):
                        self._exchange(row)
                    if not len(self.pool) and not row["added_view0"] and not row["added_view1"]:
                        stop_reason = "the unlabelled pool is empty"
                for v in (0, 1):
                    row[f"train_size_view{v}"] = int(len(self.train_ids[v]))
                row["pool_size"] = int(len(self.pool))
                if ens is not None and ens > self.best_ensemble:
                    self.best_ensemble, self.stale = ens, 0
                else:
                    self.stale += 1
                if self.iteration_patience and self.stale >= self.iteration_patience:
                    stop_reason = f"no better ensemble validation accuracy for {self.stale} iterations"
                self.history.append(row)
                for key in (
                    "val_accuracy_view0",
                    "val_accuracy_view1",
                    "val_accuracy_ensemble",
                    "pseudo_label_accuracy",
                    "pool_size",
                    "added_view0",
                    "added_view1",
                    "conflicts",
                ):
                    self._scalar(f"cotraining/{key}", row.get(key), it + 1)
                pla = row["pseudo_label_accuracy"]
                logger.info(
                    f"iteration {it + 1}/{self.iterations}: val accuracy {row['val_accuracy_view0']:.4f} / "
                    f"{row['val_accuracy_view1']:.4f} / ensemble {ens:.4f}; added {row['added_view0']} + "
                    f"{row['added_view1']} pseudo-labels (accuracy {'n/a' if pla is None else f'{pla:.3f}'}), "
                    f"{row['conflicts']} conflicts, pool {row['pool_size']}"
                )
                self.start_iteration = it + 1
                self.finished = stop_reason is not None
                self._write_model()
                if is_rank0():
                    atomic_torch_save(self.state_dict(), self.last_path)
                self._write_log()
                if stop_reason is not None:
                    logger.info(f"co-training stops after iteration {it + 1}: {stop_reason}")
                    break
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        return self.history


def check_two_view_dataset(dataset: Any, samples: TwoViewSamples) -> TwoViewDataset:
    """``dataset`` is a :class:`TwoViewDataset` of exactly ``samples`` (so split ids index the right images)."""
    if not isinstance(dataset, TwoViewDataset):
        raise ConfigError(
            "dataset: expected a TwoViewDataset of splits.samples "
            f"(tlk_components.engines.trainers.cotraining.TwoViewDataset, data=$@splits.samples), got {type(dataset).__name__}"
        )
    if dataset.view0 != samples.view0 or dataset.view1 != samples.view1:
        raise ConfigError(
            f"dataset: its {len(dataset)} view pairs are not the {len(samples)} samples of splits; build it with "
            "data=$@splits.samples so the split ids index the right images"
        )
    return dataset


def as_two_view_network(network: Any) -> TwoViewClassifier:
    """The ``TwoViewClassifier`` inside ``network`` (DDP wrappers removed), or a ConfigError naming the fix."""
    net = unwrap_model(network)
    if not isinstance(net, TwoViewClassifier):
        raise ConfigError(
            "network: expected the bundle's network_def, a tlk_components.networks.two_view.TwoViewClassifier "
            f"holding both view networks, got {type(net).__name__}"
        )
    return net


def load_two_view_model(network: TwoViewClassifier, ckpt_dir: str | os.PathLike, device: torch.device) -> None:
    """Load ``<ckpt_dir>/model.pt`` (weights only) into the two-view network and switch it to eval mode."""
    path = Path(ckpt_dir) / MODEL_NAME
    state = load_weights(path, map_location=device)
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{path} does not fit the two-view network ({first}); the config's network_def (view0_network, "
            "view1_network, num_classes) must match the trained one: set num_classes to the number of classes in "
            "classes.json"
        ) from None
    network.eval()
