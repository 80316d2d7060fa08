# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""What co-training knows between rounds: its settings, the labelled sets and the unlabelled pool, its progress.

The pieces of :class:`~tlk_components.engines.trainers.cotraining.CoTrainer` that hold no network:

* :class:`CoTrainingSettings`: the scalar hyperparameters, validated once;
* :class:`CoTrainingPools`: each model's training set and the unlabelled pool, and the pseudo-label exchange between
  them;
* :class:`CoTrainingProgress`: where the rounds stand (resume, and the stop on no better ensemble);
* :func:`restore_optimizer`: resuming one view's optimizer and learning-rate schedule.

Pools and progress round-trip through the engine's ``checkpoint_last.pt`` as tensors and plain types.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tlk_components.data.cotraining import TwoViewSplits
from tlk_components.engines.handlers.checkpoint import schedule_settings
from tlk_components.engines.trainers.pseudo_label import exchange_pseudo_labels
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.io import load_state_dict_checked
from tlk_components.utils.validation import check_positive_int, check_probability, look_up_option

__all__ = [
    "MODES",
    "CoTrainingPools",
    "CoTrainingProgress",
    "CoTrainingSettings",
    "accuracy_or_none",
    "restore_optimizer",
]

# every co-training message goes out under the engine's logger name, wherever the code that writes it lives
logger = logging.getLogger("tlk_components.engines.trainers.cotraining")


MODES = ("cotraining", "labelled_only", "all_labels")


def accuracy_or_none(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Share of correct predictions over the samples with a known label (``truth >= 0``); None when none is known."""
    known = truth >= 0
    return float((pred[known] == truth[known]).mean()) if known.any() else None


@dataclass(frozen=True)
class CoTrainingSettings:
    """The scalar hyperparameters of co-training, checked and normalised at construction.

    Args:
        mode: ``"cotraining"`` (default), ``"labelled_only"`` (baseline) or ``"all_labels"`` (fully supervised).
        iterations: co-training rounds, >= 1 (default 10).
        max_epochs: maximum epochs per model per round, >= 1 (default 10).
        k: pseudo-labels each model picks per round, >= 1 (default 50); :meth:`check_splits` bounds it by the pool.
        threshold: optional minimum confidence of a pick, in [0, 1] (default None).
        class_balance: at most ``k // C`` picks per predicted class (default False).
        batch_size: training batch size, >= 1 (default 32).
        num_workers: data-loader workers, >= 0 (default 0).
        patience: epochs without a lower validation loss before a model's round stops, >= 0; 0 disables (default 5).
        iteration_patience: rounds without a better ensemble validation accuracy before co-training stops, >= 0;
            0 disables (default 0).
        resume: continue from ``checkpoint_last.pt`` when it exists (default True).
        amp: mixed precision asked for (default False); the engine uses it on CUDA only.
        seed: seed of the training data order (an integer, default 0).
        progress: show ignite progress bars (default True).
        distributed: shard training batches with a ``DistributedSampler`` (default False).

    Raises:
        ConfigError: ``mode`` is not one of :data:`MODES` (with the closest one), or a number is out of its range
            (naming the argument, the value and the range).
    """

    mode: str = "cotraining"
    iterations: int = 10
    max_epochs: int = 10
    k: int = 50
    threshold: float | None = None
    class_balance: bool = False
    batch_size: int = 32
    num_workers: int = 0
    patience: int = 5
    iteration_patience: int = 0
    resume: bool = True
    amp: bool = False
    seed: int = 0
    progress: bool = True
    distributed: bool = False

    def __post_init__(self) -> None:
        checked = {
            "mode": look_up_option("mode", self.mode, MODES),
            "iterations": check_positive_int("iterations", self.iterations),
            "max_epochs": check_positive_int("max_epochs", self.max_epochs),
            "k": check_positive_int("k", self.k),
            "threshold": None if self.threshold is None else check_probability("threshold", self.threshold),
            "class_balance": bool(self.class_balance),
            "batch_size": check_positive_int("batch_size", self.batch_size),
            "num_workers": check_positive_int("num_workers", self.num_workers, minimum=0),
            "patience": check_positive_int("patience", self.patience, minimum=0),
            "iteration_patience": check_positive_int("iteration_patience", self.iteration_patience, minimum=0),
            "resume": bool(self.resume),
            "amp": bool(self.amp),
            "seed": int(self.seed),
            "progress": bool(self.progress),
            "distributed": bool(self.distributed),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # frozen: set once, here

    def check_splits(self, splits: TwoViewSplits) -> None:
        """Refuse splits these settings cannot co-train.

        Raises:
            ConfigError: the validation split is empty, or (mode ``cotraining``) ``k`` is larger than a non-empty
                unlabelled pool (naming a ``k`` that fits).
        """
        if len(splits.val) == 0:
            raise ConfigError("the validation split is empty; raise val_fraction (or use more samples)")
        pool = len(splits.unlabelled)
        if self.mode == "cotraining" and pool and self.k > pool:
            raise ConfigError(
                f"k={self.k} is larger than the unlabelled pool ({pool} samples); choose k <= {pool} "
                f"(the source notebook used 5% of the pool: k={max(1, pool // 20)})"
            )


class CoTrainingPools:
    """Each model's labelled training set and the unlabelled pool the two models label for each other.

    Model ``v`` trains on samples ``train_ids[v]`` (ids into the sample table) with classes ``train_labels[v]``;
    ``train_pseudo[v]`` marks the pseudo-labels among them (given by the other model). ``pool`` holds the ids not
    labelled yet. The lists are per view (two entries); the arrays are replaced, never changed in place.

    Args:
        train_ids: per view, the sample ids of the training set (int64).
        train_labels: per view, the class of each of those samples (int64), aligned with ``train_ids``.
        train_pseudo: per view, True where that class is a pseudo-label (bool), aligned with ``train_ids``.
        pool: sample ids of the unlabelled pool (int64).

    Raises:
        ConfigError: not two entries per view list, or labels / flags not aligned with the ids.
    """

    def __init__(
        self,
        train_ids: Sequence[np.ndarray],
        train_labels: Sequence[np.ndarray],
        train_pseudo: Sequence[np.ndarray],
        pool: np.ndarray,
    ) -> None:
        for name, per_view in (
            ("train_ids", train_ids),
            ("train_labels", train_labels),
            ("train_pseudo", train_pseudo),
        ):
            if len(per_view) != 2:
                raise ConfigError(f"{name}: expected one array per view (two), got {len(per_view)}")
        for v in (0, 1):
            if not len(train_ids[v]) == len(train_labels[v]) == len(train_pseudo[v]):
                raise ConfigError(
                    f"view {v}: {len(train_ids[v])} training ids but {len(train_labels[v])} labels and "
                    f"{len(train_pseudo[v])} pseudo-label flags; they must be aligned (from a damaged checkpoint: pass "
                    "--resume false to start over)"
                )
        self.train_ids = list(train_ids)
        self.train_labels = list(train_labels)
        self.train_pseudo = list(train_pseudo)
        self.pool = pool

    @classmethod
    def initial(cls, splits: TwoViewSplits, mode: str) -> CoTrainingPools:
        """The sets a run starts from: both models train on the ``train`` split; the pool is the ``unlabelled`` split.

        Args:
            splits: the aligned samples and their split ids.
            mode: one of :data:`MODES`. ``labelled_only``: no pool. ``all_labels``: no pool, and the training sets
                also hold every unlabelled sample whose true class is known (warns when none is).
        """
        labels = splits.samples.labels
        train_ids = splits.train
        if mode == "all_labels":
            known = splits.unlabelled[labels[splits.unlabelled] >= 0]
            if len(splits.unlabelled) and not len(known):
                logger.warning(
                    "mode all_labels: no unlabelled sample has a true class (a hidden_label column), so this run is "
                    "the labelled-only baseline"
                )
            train_ids = np.sort(np.concatenate([splits.train, known]))
        return cls(
            train_ids=[train_ids.copy(), train_ids.copy()],
            train_labels=[labels[train_ids].copy(), labels[train_ids].copy()],
            train_pseudo=[np.zeros(len(train_ids), bool), np.zeros(len(train_ids), bool)],
            pool=splits.unlabelled.copy() if mode == "cotraining" else np.zeros(0, np.int64),
        )

    def picks_this_round(self, k: int) -> int:
        """Picks per model this round: ``k``, or the whole pool when fewer samples are left (logged)."""
        picks = min(k, len(self.pool))
        if picks < k:
            logger.info(f"unlabelled pool ({len(self.pool)}) is smaller than k={k}; this round picks {picks} per model")
        return picks

    def add_pseudo_labels(self, view: int, ids: np.ndarray, labels: np.ndarray) -> None:
        """Append samples ``ids`` with pseudo-labels ``labels`` to the training set of model ``view``."""
        self.train_ids[view] = np.concatenate([self.train_ids[view], ids])
        self.train_labels[view] = np.concatenate([self.train_labels[view], labels])
        self.train_pseudo[view] = np.concatenate([self.train_pseudo[view], np.ones(len(ids), bool)])

    def exchange(
        self,
        probs0: torch.Tensor,
        probs1: torch.Tensor,
        k: int,
        threshold: float | None,
        class_balance: bool,
        truth: np.ndarray,
    ) -> dict[str, Any]:
        """One exchange: each model's confident picks from the pool become the other model's pseudo-labels.

        Args:
            probs0, probs1: class probabilities of model 0 (view 0) and model 1 (view 1) on the pool, ``P, C``.
            k: picks per model, ``1 <= k <= P`` (:meth:`picks_this_round`).
            threshold: optional minimum confidence of a pick, in [0, 1].
            class_balance: at most ``k // C`` picks per predicted class.
            truth: the true class of every sample of the table (-1 where unknown), to score the pseudo-labels.

        Returns:
            The round's log entries: ``added_view<v>``, ``pseudo_label_accuracy_view<v>``, ``pseudo_label_accuracy``
            (None where no true class is known), ``conflicts`` and ``k``.

        Raises:
            ConfigError: the probabilities do not describe the pool, or ``k`` is out of range.
        """
        r = exchange_pseudo_labels(self.pool, probs0, probs1, k, threshold, class_balance)
        stats: dict[str, Any] = {}
        for v, ids, labs in ((0, r.to_view0_ids, r.to_view0_labels), (1, r.to_view1_ids, r.to_view1_labels)):
            self.add_pseudo_labels(v, ids, labs)
            stats[f"added_view{v}"] = int(len(ids))
            stats[f"pseudo_label_accuracy_view{v}"] = accuracy_or_none(labs, truth[ids])
        all_labs = np.concatenate([r.to_view0_labels, r.to_view1_labels])
        all_ids = np.concatenate([r.to_view0_ids, r.to_view1_ids])
        stats["pseudo_label_accuracy"] = accuracy_or_none(all_labs, truth[all_ids]) if len(all_ids) else None
        stats["conflicts"] = int(len(r.conflict_ids))
        stats["k"] = k
        self.pool = r.pool
        return stats

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``pool`` and, per view ``v``, ``train_ids<v>``, ``train_labels<v>``, ``train_pseudo<v>`` as tensors."""
        out = {"pool": torch.as_tensor(self.pool, dtype=torch.long)}
        for v in (0, 1):
            out[f"train_ids{v}"] = torch.as_tensor(self.train_ids[v], dtype=torch.long)
            out[f"train_labels{v}"] = torch.as_tensor(self.train_labels[v], dtype=torch.long)
            out[f"train_pseudo{v}"] = torch.as_tensor(self.train_pseudo[v], dtype=torch.bool)
        return out

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> CoTrainingPools:
        """The pools saved by :meth:`state_dict` (extra entries ignored).

        Raises:
            KeyError: an entry is missing.
            ConfigError: the saved arrays are not aligned.
        """
        return cls(
            train_ids=[state[f"train_ids{v}"].numpy() for v in (0, 1)],
            train_labels=[state[f"train_labels{v}"].numpy() for v in (0, 1)],
            train_pseudo=[state[f"train_pseudo{v}"].numpy() for v in (0, 1)],
            pool=state["pool"].numpy(),
        )


@dataclass
class CoTrainingProgress:
    """Where the rounds stand.

    Attributes:
        iteration: rounds completed, >= 0 (the index of the next round).
        finished: co-training stopped early (empty pool, or no better ensemble for ``iteration_patience`` rounds).
        best_ensemble: the best ensemble validation accuracy so far, in [0, 1]; -1 before the first round.
        stale: rounds since it last improved, >= 0.
    """

    iteration: int = 0
    finished: bool = False
    best_ensemble: float = -1.0
    stale: int = 0

    def record(self, ensemble_accuracy: float | None, iteration_patience: int) -> str | None:
        """Count a round's ensemble validation accuracy (None: unknown, counts as no better).

        Args:
            ensemble_accuracy: this round's ensemble validation accuracy, or None.
            iteration_patience: rounds without a better accuracy that stop co-training; 0 never stops.

        Returns:
            Why co-training stops now (patience used up), or None.
        """
        if ensemble_accuracy is not None and ensemble_accuracy > self.best_ensemble:
            self.best_ensemble, self.stale = ensemble_accuracy, 0
        else:
            self.stale += 1
        if iteration_patience and self.stale >= iteration_patience:
            return f"no better ensemble validation accuracy for {self.stale} iterations"
        return None

    def state_dict(self) -> dict[str, Any]:
        """``iteration``, ``finished``, ``best_ensemble`` and ``stale``, as plain types."""
        return {
            "iteration": self.iteration,
            "finished": self.finished,
            "best_ensemble": self.best_ensemble,
            "stale": self.stale,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> CoTrainingProgress:
        """The progress saved by :meth:`state_dict` (extra entries ignored; KeyError for a missing one)."""
        return cls(
            iteration=int(state["iteration"]),
            finished=bool(state["finished"]),
            best_ensemble=float(state["best_ensemble"]),
            stale=int(state["stale"]),
        )


#: Entries of a ``ReduceLROnPlateau`` state that record progress, not settings.
_PLATEAU_PROGRESS = frozenset({"best", "num_bad_epochs", "cooldown_counter"})


def _plateau_free(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A scheduler's settings without its progress (so two states compare equal when only progress differs)."""
    if state is None:
        return None
    return {k: v for k, v in schedule_settings(state).items() if k not in _PLATEAU_PROGRESS}


def restore_optimizer(
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    ckpt: Mapping[str, Any],
    view: int,
    config_lrs: list[float],
    path: str | os.PathLike,
    fix: str,
) -> None:
    """Resume model ``view``'s optimizer and learning-rate schedule from the engine's checkpoint.

    The optimizer state is always restored. The scheduler's state is restored when the learning rates the config
    asks for and the scheduler's settings are those of the saved run; otherwise the optimizer runs at the config's
    learning rates and the schedule starts afresh (with a warning).

    Args:
        optimizer: the view's optimizer, built by the config.
        lr_scheduler: its scheduler, or None.
        ckpt: the checkpoint (``optimizer<view>``, optional ``lr_scheduler<view>`` and ``config_lr<view>``).
        view: 0 or 1.
        config_lrs: the learning rate of each parameter group as the config asks for it.
        path: the checkpoint file (for messages).
        fix: what to do when a state does not fit (for messages).

    Raises:
        ConfigError: a saved state does not fit the optimizer or the scheduler.
    """
    sched_config = None if lr_scheduler is None else schedule_settings(lr_scheduler.state_dict())
    load_state_dict_checked(optimizer, ckpt[f"optimizer{view}"], path, f"optimizer{view}", fix)
    saved_sched = ckpt.get(f"lr_scheduler{view}")
    lr_changed = list(ckpt.get(f"config_lr{view}", config_lrs)) != config_lrs
    sched_changed = (
        lr_scheduler is not None
        and saved_sched is not None
        and _plateau_free(saved_sched) != _plateau_free(sched_config)
    )
    if lr_changed or sched_changed:
        for g, lr in zip(optimizer.param_groups, config_lrs, strict=False):
            g["lr"] = lr
        logger.warning(
            f"resume: the learning rate or scheduler settings of model {view} changed since {path} was "
            f"written; kept the optimizer state and restarted the learning-rate schedule from the config "
            f"(learning rate {config_lrs})"
        )
    elif lr_scheduler is not None and saved_sched is not None:
        load_state_dict_checked(lr_scheduler, saved_sched, path, f"lr_scheduler{view}", fix)
