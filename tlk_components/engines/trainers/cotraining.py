# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Two-view co-training (Blum & Mitchell, COLT 1998): the trainer and its datasets.

:class:`CoTrainer` trains one network per view on the labelled samples, then repeatedly lets each network label
the unlabelled samples it is most confident about for the other (see
:mod:`tlk_components.engines.trainers.pseudo_label`), with a run lock, checkpoints and resume, a log of every round
(CSV + PNG) and the modes ``cotraining``, ``labelled_only`` (the supervised baseline) and ``all_labels``
(the upper bound).

The engine is put together from smaller pieces: its settings, training sets, unlabelled pool and progress
(:mod:`~tlk_components.engines.trainers.cotraining_state`), one view's training round
(:mod:`~tlk_components.engines.trainers.cotraining_view`) and its log
(:mod:`~tlk_components.engines.trainers.cotraining_log`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from tlk_components.data.cotraining import TwoViewSamples, TwoViewSplits, read_pairs_csv
from tlk_components.engines.handlers.checkpoint import AtomicCheckpointSaver, RunLock, check_same_run
from tlk_components.engines.handlers.reporting import save_figure
from tlk_components.engines.trainers.cotraining_log import LOG_FIELDS, LOG_NAME, PLOT_NAME, CoTrainingLog
from tlk_components.engines.trainers.cotraining_state import (
    MODES,
    CoTrainingPools,
    CoTrainingProgress,
    CoTrainingSettings,
    accuracy_or_none,
    restore_optimizer,
)
from tlk_components.engines.trainers.cotraining_view import LabelledView, ViewTrainingRound
from tlk_components.networks.two_view import TwoViewClassifier, ensemble_probabilities, two_view_state_dict
from tlk_components.utils.distributed import is_rank0, unwrap_model
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import (
    atomic_torch_save,
    atomic_write_json,
    load_state_dict_checked,
    load_weights,
    move_aside,
)
from tlk_components.utils.runtime import run_fingerprint

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


#: File name of both best models together: the state dict of the bundle's ``network_def`` (``TwoViewClassifier``).
MODEL_NAME = "model.pt"


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


def plot_cotraining_log(history: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """PNG per co-training iteration: validation accuracy of each model and the ensemble, the accuracy of the
    pseudo-labels added (where their true class is known), and the pool / training-set sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5))
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
    ax.set_title("validation accuracy (solid),\npseudo-label accuracy (dashed)", fontsize="medium")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)  # below: never over a line
    ax.grid(alpha=0.3)
    ax2.plot(its, [h["pool_size"] for h in history], marker="o", label="unlabelled pool")
    ax2.plot(its, [h["train_size_view0"] for h in history], marker="o", label="train set, view 0")
    ax2.plot(its, [h["train_size_view1"] for h in history], marker="o", label="train set, view 1")
    ax2.set_xlabel("co-training iteration")
    ax2.set_ylabel("samples")
    ax2.set_title("pool and training-set sizes\n(after the exchange)", fontsize="medium")
    ax2.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    ax2.grid(alpha=0.3)
    return save_figure(fig, path)


def _one_per_view(networks: Any, optimizers: Any) -> tuple[list[nn.Module], list[torch.optim.Optimizer]]:
    """The network and the optimizer of each view, two distinct objects each.

    Raises:
        ConfigError: not one per view, or the same object given for both views.
    """
    nets, opts = _pair("networks", networks), _pair("optimizers", optimizers)
    if nets[0] is nets[1] or opts[0] is opts[1]:
        raise ConfigError(
            "networks/optimizers: each view needs its own network and optimizer (got the same object twice)"
        )
    return nets, opts


def _best_model_savers(ckpt_dir: Path, networks: Sequence[nn.Module]) -> list[AtomicCheckpointSaver]:
    """Per view, the saver of ``<ckpt_dir>/model_view<v>.pt``: the weights of the best validation accuracy."""
    savers = [
        AtomicCheckpointSaver(
            save_dir=ckpt_dir,
            save_dict={"model": networks[v]},
            save_last=False,
            key_metric_name="val_accuracy",
            key_metric_filename=model_filename(v),
        )
        for v in (0, 1)
    ]
    for saver in savers:
        # the best accuracy per model lives in the engine's own checkpoint (state_dict "best<v>"); starting from
        # -inf (not None) keeps the saver from taking the evaluator's MONAI ``state.best_metric`` as a restored
        # value (that one already holds the current epoch's accuracy, so nothing would ever be saved)
        saver.best = float("-inf")
    return savers


def _new_row(iteration: int, mode: str) -> dict[str, Any]:
    """The log row of round ``iteration`` (from 0) before it is measured: nothing exchanged yet."""
    return {
        "iteration": iteration + 1,
        "mode": mode,
        "k": 0,
        "added_view0": 0,
        "added_view1": 0,
        "conflicts": 0,
        "pseudo_label_accuracy": None,
        "pseudo_label_accuracy_view0": None,
        "pseudo_label_accuracy_view1": None,
    }


class CoTrainer:
    """Two-view co-training as an engine a config instantiates with keyword arguments (module docstring).

    Each round trains both models (:class:`~tlk_components.engines.trainers.cotraining_view.ViewTrainingRound`),
    validates them and their ensemble, lets them exchange pseudo-labels
    (:class:`~tlk_components.engines.trainers.cotraining_state.CoTrainingPools`), logs the round
    (:class:`~tlk_components.engines.trainers.cotraining_log.CoTrainingLog`) and saves ``model.pt`` and the
    resumable checkpoint.

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

    Attributes:
        settings: the scalar hyperparameters above, validated
            (:class:`~tlk_components.engines.trainers.cotraining_state.CoTrainingSettings`).
        pools: each model's training set and the unlabelled pool (set when :meth:`run` starts).
        rounds: where the rounds stand
            (:class:`~tlk_components.engines.trainers.cotraining_state.CoTrainingProgress`).
        log: the per-round rows (``history``), TensorBoard scalars and log files.

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
        self.networks, self.optimizers = _one_per_view(networks, optimizers)
        self.lr_schedulers = _pair("lr_schedulers", lr_schedulers, allow_none=True)
        self.loss_function = loss_function if loss_function is not None else nn.CrossEntropyLoss()
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.augmentation = _pair("augmentation", augmentation, allow_none=True)
        self.device = torch.device(device)
        self.settings = CoTrainingSettings(
            mode=mode,
            iterations=iterations,
            max_epochs=max_epochs,
            k=k,
            threshold=threshold,
            class_balance=class_balance,
            batch_size=batch_size,
            num_workers=num_workers,
            patience=patience,
            iteration_patience=iteration_patience,
            resume=resume,
            amp=amp,
            seed=seed,
            progress=progress,
            distributed=distributed,
        )
        self.ckpt_dir, self.output_dir = Path(ckpt_dir), Path(output_dir)
        self.run_info = dict(run_info) if run_info is not None else run_fingerprint()
        self._lock = RunLock(self.ckpt_dir) if lock else None
        # the learning rates the config asks for (resuming compares them with those of the run that was saved)
        self._config_lrs = [[float(g["lr"]) for g in o.param_groups] for o in self.optimizers]
        self.amp = self.settings.amp and self.device.type == "cuda"
        self.settings.check_splits(splits)
        self.last_path = self.ckpt_dir / "checkpoint_last.pt"
        self.savers = _best_model_savers(self.ckpt_dir, self.networks)
        self.log = CoTrainingLog(self.output_dir, plot=plot_cotraining_log)
        self.pools: CoTrainingPools | None = None
        self.rounds = CoTrainingProgress()

    # ----------------------------------------------------------------------------------------- views of the parts

    @property
    def mode(self) -> str:
        """``settings.mode``."""
        return self.settings.mode

    @property
    def iterations(self) -> int:
        """``settings.iterations``."""
        return self.settings.iterations

    @property
    def max_epochs(self) -> int:
        """``settings.max_epochs`` (a MONAI workflow reads the trainer's ``max_epochs``)."""
        return self.settings.max_epochs

    @property
    def history(self) -> list[dict[str, Any]]:
        """The per-round log rows (``log.history``)."""
        return self.log.history

    @property
    def pool(self) -> np.ndarray:
        """Sample ids of the unlabelled pool (``pools.pool``; after :meth:`run` started)."""
        return self.pools.pool

    @property
    def train_ids(self) -> list[np.ndarray]:
        """Per view, the sample ids of the model's training set (``pools.train_ids``)."""
        return self.pools.train_ids

    @property
    def train_labels(self) -> list[np.ndarray]:
        """Per view, the classes of those samples (``pools.train_labels``)."""
        return self.pools.train_labels

    @property
    def train_pseudo(self) -> list[np.ndarray]:
        """Per view, True where the class is a pseudo-label (``pools.train_pseudo``)."""
        return self.pools.train_pseudo

    @property
    def images(self) -> list[ViewImages]:
        """The images of view 0 and view 1 (``dataset.views``)."""
        return self.dataset.views

    # ----------------------------------------------------------------------------------------- state

    def _initial_state(self) -> None:
        """The pools and progress a run starts from (:meth:`load_state_dict` then replaces them when resuming)."""
        self.pools = CoTrainingPools.initial(self.splits, self.settings.mode)
        self.rounds = CoTrainingProgress()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as tensors and plain types (loadable with ``weights_only=True``)."""
        pools = self.pools.state_dict()
        out: dict[str, Any] = {
            "n_samples": len(self.samples),
            "mode": self.settings.mode,
            **self.rounds.state_dict(),
            "pool": pools["pool"],
            **self.log.state_dict(),
            "run_info": self.run_info,
        }
        for v in (0, 1):
            out[f"model{v}"] = unwrap_model(self.networks[v]).state_dict()
            out[f"optimizer{v}"] = self.optimizers[v].state_dict()
            if self.lr_schedulers[v] is not None:
                out[f"lr_scheduler{v}"] = self.lr_schedulers[v].state_dict()
            for key in ("train_ids", "train_labels", "train_pseudo"):
                out[f"{key}{v}"] = pools[f"{key}{v}"]
            out[f"best{v}"] = self.savers[v].best
            out[f"config_lr{v}"] = list(self._config_lrs[v])
        return out

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (raises ConfigError for a checkpoint of another dataset or mode)."""
        mode = self.settings.mode
        if ckpt.get("n_samples") != len(self.samples) or ckpt.get("mode") != mode:
            raise ConfigError(
                f"{self.last_path}: written for {ckpt.get('n_samples')} samples in mode {ckpt.get('mode')!r}, this run "
                f"has {len(self.samples)} in mode {mode!r}; delete it (or pass --resume false) to start over"
            )
        check_same_run(self.last_path, ckpt.get("run_info"), self.run_info)
        fix = f"Pass --resume false to start over (or delete {self.last_path})"
        for v in (0, 1):
            load_state_dict_checked(unwrap_model(self.networks[v]), ckpt[f"model{v}"], self.last_path, f"model{v}", fix)
            restore_optimizer(
                self.optimizers[v], self.lr_schedulers[v], ckpt, v, self._config_lrs[v], self.last_path, fix
            )
            best = ckpt.get(f"best{v}")
            self.savers[v].best = float("-inf") if best is None else float(best)
        self.pools = CoTrainingPools.from_state_dict(ckpt)
        self.rounds = CoTrainingProgress.from_state_dict(ckpt)
        self.log.load_state_dict(ckpt)

    # ----------------------------------------------------------------------------------------- files

    def _write_model(self) -> None:
        """``model.pt``: both best models as the state dict of a ``TwoViewClassifier``, written atomically (rank 0)."""
        paths = [self.ckpt_dir / model_filename(v) for v in (0, 1)]
        if not is_rank0() or not all(p.is_file() for p in paths):
            return
        states = [load_weights(p) for p in paths]
        atomic_torch_save(two_view_state_dict(states[0], states[1]), self.ckpt_dir / MODEL_NAME)

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

    def _open_outputs(self) -> None:
        """Create the folders; on rank 0 write ``classes.json`` and start the TensorBoard log."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if is_rank0():
            names = self.samples.class_names
            atomic_write_json(self.ckpt_dir / "classes.json", {n: i for i, n in enumerate(names)})
            self.log.open_tensorboard()

    # ----------------------------------------------------------------------------------------- one round

    def _train_view(self, v: int, iteration: int) -> dict[str, Any]:
        """Up to ``max_epochs`` epochs of model ``v`` on its training set, validating after each epoch."""
        val = self.splits.val
        train_set = LabelledView(
            self.images[v], self.pools.train_ids[v], self.pools.train_labels[v], self.augmentation[v]
        )
        val_set = LabelledView(self.images[v], val, self.samples.labels[val], None)
        return ViewTrainingRound(
            view=v,
            iteration=iteration,
            network=self.networks[v],
            optimizer=self.optimizers[v],
            lr_scheduler=self.lr_schedulers[v],
            saver=self.savers[v],
            loss_function=self.loss_function,
            inferer=self.inferer,
            device=self.device,
            amp=self.amp,
            settings=self.settings,
            log=self.log,
        ).run(train_set, val_set)

    def _validate(self, row: dict[str, Any]) -> None:
        """Validation accuracy of each model and of their ensemble (mean softmax) into ``row``."""
        val = self.splits.val
        probs = [
            predict_proba(self.networks[v], self.images[v], val, self.device, inferer=self.inferer) for v in (0, 1)
        ]
        truth = self.samples.labels[val]
        for v in (0, 1):
            row[f"val_accuracy_view{v}"] = accuracy_or_none(probs[v].argmax(1).numpy(), truth)
        ensemble = ensemble_probabilities(probs[0], probs[1])
        row["val_accuracy_ensemble"] = accuracy_or_none(ensemble.argmax(1).numpy(), truth)

    def _exchange(self, row: dict[str, Any]) -> None:
        """Each model labels its most confident pool samples for the other; the exchange's figures into ``row``."""
        s, pools = self.settings, self.pools
        k = pools.picks_this_round(s.k)
        probs = [
            predict_proba(self.networks[v], self.images[v], pools.pool, self.device, inferer=self.inferer)
            for v in (0, 1)
        ]
        row.update(pools.exchange(probs[0], probs[1], k, s.threshold, s.class_balance, self.samples.labels))

    def _round(self, it: int) -> tuple[dict[str, Any], str | None]:
        """Round ``it`` (from 0): train both models, validate, exchange pseudo-labels (not after the last round).

        Returns:
            The round's log row, and why co-training stops after it (None: it goes on).
        """
        s, pools = self.settings, self.pools
        row = _new_row(it, s.mode)
        for v in (0, 1):
            info = self._train_view(v, it)
            row[f"epochs_view{v}"], row[f"lr_view{v}"] = info["epochs"], info["lr"]
        self._validate(row)
        stop_reason = None
        if s.mode == "cotraining" and it != s.iterations - 1:
            if len(pools.pool):
                self._exchange(row)
            if not len(pools.pool) and not row["added_view0"] and not row["added_view1"]:
                stop_reason = "the unlabelled pool is empty"
        for v in (0, 1):
            row[f"train_size_view{v}"] = int(len(pools.train_ids[v]))
        row["pool_size"] = int(len(pools.pool))
        return row, self.rounds.record(row["val_accuracy_ensemble"], s.iteration_patience) or stop_reason

    def _end_round(self, row: dict[str, Any], stop_reason: str | None) -> None:
        """Log the round, then save ``model.pt``, the resumable checkpoint and the log files."""
        self.log.round(row, self.settings.iterations)
        self.rounds.iteration = row["iteration"]
        self.rounds.finished = stop_reason is not None
        self._write_model()
        if is_rank0():
            atomic_torch_save(self.state_dict(), self.last_path)
        self.log.write()

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

    def _start(self) -> bool:
        """Start afresh or resume; False when the resumed run has no round left (then only ``model.pt`` is written)."""
        s = self.settings
        self._initial_state()
        if s.resume and self.last_path.is_file():
            self.load_state_dict(load_weights(self.last_path))
            logger.info(f"resumed from {self.last_path} after iteration {self.rounds.iteration}")
            if self.rounds.finished or self.rounds.iteration >= s.iterations:
                logger.info("co-training already finished; delete checkpoint_last.pt (or --resume false) to redo it")
                self._write_model()  # a run trained before model.pt existed gets it from model_view0/1.pt
                return False
        else:
            self._keep_earlier_models()
        self._open_outputs()
        if self._exchange_skipped():
            self._catch_up_exchange()
        logger.info(
            f"{s.mode}: train {len(self.pools.train_ids[0])}, val {len(self.splits.val)}, "
            f"unlabelled pool {len(self.pools.pool)}, {s.iterations} iterations x {s.max_epochs} epochs, k={s.k}"
        )
        return True

    def _exchange_skipped(self) -> bool:
        """Whether the resumed run's last round was the last of a shorter run and so exchanged nothing.

        A run resumed with more ``--iterations`` goes on past that round; the exchange it skipped (its row has
        ``k`` 0 while the pool still holds samples) is owed before the next round trains.
        """
        history = self.log.history
        return (
            self.settings.mode == "cotraining"
            and bool(history)
            and history[-1]["k"] == 0
            and len(self.pools.pool) > 0
            and self.rounds.iteration < self.settings.iterations
        )

    def _catch_up_exchange(self) -> None:
        """Run the exchange the resumed run's last round skipped, into that round's row; save and rewrite the log.

        The networks are those the round ended with (restored from ``checkpoint_last.pt``), so the pools are those
        an uninterrupted run with the new ``--iterations`` would have had.
        """
        row = self.log.history[-1]
        logger.info(
            f"iteration {row['iteration']} ended the earlier run without exchanging pseudo-labels; exchanging them "
            f"now, before iteration {row['iteration'] + 1}"
        )
        self._exchange(row)
        for v in (0, 1):
            row[f"train_size_view{v}"] = int(len(self.pools.train_ids[v]))
        row["pool_size"] = int(len(self.pools.pool))
        if is_rank0():
            atomic_torch_save(self.state_dict(), self.last_path)
        self.log.write()

    def _run(self) -> list[dict[str, Any]]:
        if not self._start():
            return self.log.history
        try:
            for it in range(self.rounds.iteration, self.settings.iterations):
                row, stop_reason = self._round(it)
                self._end_round(row, stop_reason)
                if stop_reason is not None:
                    logger.info(f"co-training stops after iteration {it + 1}: {stop_reason}")
                    break
        finally:
            self.log.close()
        return self.log.history


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
