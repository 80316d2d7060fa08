# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Pseudo-label selection and exchange for two-view co-training (Blum & Mitchell, COLT 1998).

One exchange round, given each model's class probabilities on its own view of the unlabelled pool:

1. :func:`top_k_confident`: each model picks its ``k`` most confident samples (``max_c p(c|x)``), optionally only
   those with confidence ``>= threshold`` (FixMatch-style, e.g. 0.95) and optionally at most ``k // C`` per
   predicted class (per-class balance).
2. :func:`remove_conflicts`: a sample picked by both models with *different* labels is dropped from both pick
   lists and stays in the pool (a later round may settle it). Picked by both with the same label, it is kept.
3. :func:`exchange_pseudo_labels`: model 0's picks, with model 0's labels, join model **1**'s training set, and
   vice versa; every kept pick leaves the unlabelled pool.

Differences from the source notebook (document 003): its ``remove_collisions`` combined the two models' keep-masks
position by position, which also drops agreeing picks whenever the conflicts sit at different positions of the two
top-k lists (its worked example 2 drops sample 2, on which both models say class 2), and it returned the labels of
the non-conflicting picks as the "collision labels". Here the conflicts are found by sample id, so agreeing picks
survive, and ``conflict_labels`` holds the two models' labels for each conflicting sample. Scores are softmax
probabilities here (the notebook ranked raw outputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_positive_int, check_probability

__all__ = ["ConflictResult", "ExchangeResult", "TopK", "exchange_pseudo_labels", "remove_conflicts", "top_k_confident"]


@dataclass(frozen=True)
class TopK:
    """The picks of one model, most confident first.

    Attributes:
        confidence: ``max_c p(c|x)`` of each pick (float, shape ``K``).
        label: the predicted class of each pick (int64, ``K``).
        index: the row of each pick in the scored matrix (int64, ``K``).
    """

    confidence: torch.Tensor
    label: torch.Tensor
    index: torch.Tensor


def top_k_confident(scores: torch.Tensor, k: int, threshold: float | None = None, class_balance: bool = False) -> TopK:
    """The ``k`` rows of ``scores`` whose top score is highest, with their argmax class.

    Args:
        scores: class probabilities (or any scores; ranking uses ``max`` over classes), shape ``N, C``.
        k: number of picks, ``1 <= k <= N``.
        threshold: when given, in [0, 1]: only rows with top score ``>= threshold`` are picked (so fewer than
            ``k`` may come back). Default None (no threshold).
        class_balance: when True at most ``max(1, k // C)`` picks per predicted class, taken in order of
            confidence, so one easy class cannot fill the whole budget. Default False.

    Shape:
        ``scores``: ``N, C`` -> each field of the result: ``K`` with ``K <= k``.

    Returns:
        :class:`TopK`, sorted by confidence, descending (ties keep row order).

    Raises:
        ConfigError: ``scores`` not 2-D, ``k`` not in ``[1, N]`` (the message names the pool size and the fix), or
            ``threshold`` outside [0, 1].

    Example:
        >>> top_k_confident(torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.6, 0.4]]), k=2).index
        tensor([0, 1])
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ConfigError(f"scores: expected a tensor of shape (N, C), got {shape}")
    k = check_positive_int("k", k)
    n = scores.shape[0]
    if k > n:
        raise ConfigError(
            f"k={k} is larger than the unlabelled pool ({n} samples); choose k <= {n} (e.g. 5% of the pool)"
        )
    if threshold is not None:
        threshold = check_probability("threshold", threshold)
    conf, label = scores.detach().float().max(dim=1)
    order = torch.argsort(conf, descending=True, stable=True)
    if threshold is not None:
        order = order[conf[order] >= threshold]
    if class_balance:
        cap = max(1, k // scores.shape[1])
        counts: dict[int, int] = {}
        keep = []
        for i in order.tolist():
            c = int(label[i])
            if counts.get(c, 0) < cap:
                counts[c] = counts.get(c, 0) + 1
                keep.append(i)
                if len(keep) == k:
                    break
        order = torch.tensor(keep, dtype=torch.long)
    else:
        order = order[:k]
    return TopK(confidence=conf[order], label=label[order].long(), index=order.long())


@dataclass(frozen=True)
class ConflictResult:
    """Both models' picks after removing conflicts.

    Attributes:
        label0, index0: model 0's kept labels and sample ids (order kept).
        label1, index1: model 1's kept labels and sample ids.
        conflict_index: sorted sample ids both models picked with different labels.
        conflict_labels: ``(label by model 0, label by model 1)`` for each conflicting id.
    """

    label0: np.ndarray
    index0: np.ndarray
    label1: np.ndarray
    index1: np.ndarray
    conflict_index: np.ndarray
    conflict_labels: list[tuple[int, int]] = field(default_factory=list)


def _as_int_array(name: str, x: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 1:
        raise ConfigError(f"{name}: expected a 1-D sequence, got shape {arr.shape}")
    return arr.astype(np.int64)


def remove_conflicts(
    label0: torch.Tensor | np.ndarray | Sequence[int],
    index0: torch.Tensor | np.ndarray | Sequence[int],
    label1: torch.Tensor | np.ndarray | Sequence[int],
    index1: torch.Tensor | np.ndarray | Sequence[int],
) -> ConflictResult:
    """Drop the samples both models picked with different labels.

    Args:
        label0, index0: model 0's picked labels and sample ids (same length; ids unique).
        label1, index1: model 1's picked labels and sample ids.

    Returns:
        :class:`ConflictResult`. Samples picked by both models with the same label stay in both lists.

    Raises:
        ConfigError: a label list and its id list differ in length.

    Example (the notebook's worked example 3):
        >>> r = remove_conflicts([2, 2, 2], [2, 0, 1], [1, 2, 2], [2, 0, 1])
        >>> r.index0.tolist(), r.conflict_index.tolist(), r.conflict_labels
        ([0, 1], [2], [(2, 1)])
    """
    l0, i0, l1, i1 = (
        _as_int_array(n, x) for n, x in (("label0", label0), ("index0", index0), ("label1", label1), ("index1", index1))
    )
    for a, b, name in ((l0, i0, "0"), (l1, i1, "1")):
        if len(a) != len(b):
            raise ConfigError(f"label{name} has {len(a)} entries but index{name} has {len(b)}; pass one label per id")
    by_id1 = dict(zip(i1.tolist(), l1.tolist(), strict=True))
    conflicts = sorted(
        int(s) for s, lab in zip(i0.tolist(), l0.tolist(), strict=True) if s in by_id1 and by_id1[s] != lab
    )
    by_id0 = dict(zip(i0.tolist(), l0.tolist(), strict=True))
    bad = np.asarray(conflicts, dtype=np.int64)
    keep0, keep1 = ~np.isin(i0, bad), ~np.isin(i1, bad)
    return ConflictResult(
        label0=l0[keep0],
        index0=i0[keep0],
        label1=l1[keep1],
        index1=i1[keep1],
        conflict_index=bad,
        conflict_labels=[(int(by_id0[s]), int(by_id1[s])) for s in conflicts],
    )


@dataclass(frozen=True)
class ExchangeResult:
    """One exchange round, in sample ids of the whole dataset.

    Attributes:
        to_view0_ids, to_view0_labels: samples (and model 1's labels) added to model 0's training set.
        to_view1_ids, to_view1_labels: samples (and model 0's labels) added to model 1's training set.
        pool: the unlabelled pool after the round (sorted).
        conflict_ids: samples dropped because the two models disagreed (they stay in ``pool``).
        k: the number of picks each model was allowed this round.
    """

    to_view0_ids: np.ndarray
    to_view0_labels: np.ndarray
    to_view1_ids: np.ndarray
    to_view1_labels: np.ndarray
    pool: np.ndarray
    conflict_ids: np.ndarray
    k: int

    @property
    def removed(self) -> int:
        """How many samples left the pool."""
        return int(len(np.union1d(self.to_view0_ids, self.to_view1_ids)))


def exchange_pseudo_labels(
    pool: np.ndarray | Sequence[int],
    probs0: torch.Tensor,
    probs1: torch.Tensor,
    k: int,
    threshold: float | None = None,
    class_balance: bool = False,
) -> ExchangeResult:
    """Select, de-conflict and cross-feed pseudo-labels (module docstring, steps 1-3).

    Args:
        pool: sample ids of the unlabelled pool, aligned with the rows of ``probs0``/``probs1``.
        probs0: model 0's class probabilities on view 0 of the pool, ``P, C``.
        probs1: model 1's class probabilities on view 1 of the pool, ``P, C``.
        k: picks per model, ``1 <= k <= P`` (the engine clamps ``k`` to the pool as it shrinks).
        threshold: optional minimum confidence in [0, 1].
        class_balance: at most ``k // C`` picks per predicted class.

    Returns:
        :class:`ExchangeResult`.

    Raises:
        ConfigError: ``probs0``/``probs1``/``pool`` disagree in length, or ``k`` is out of range.
    """
    pool = _as_int_array("pool", pool)
    if probs0.shape != probs1.shape or probs0.shape[0] != len(pool):
        raise ConfigError(
            f"probs0 {tuple(probs0.shape)}, probs1 {tuple(probs1.shape)} and pool ({len(pool)}) must describe the same "
            "samples: one row per pool sample, the same classes"
        )
    t0 = top_k_confident(probs0, k, threshold, class_balance)
    t1 = top_k_confident(probs1, k, threshold, class_balance)
    r = remove_conflicts(t0.label, pool[t0.index.numpy()], t1.label, pool[t1.index.numpy()])
    taken = np.union1d(r.index0, r.index1)
    return ExchangeResult(
        to_view0_ids=r.index1,
        to_view0_labels=r.label1,
        to_view1_ids=r.index0,
        to_view1_labels=r.label0,
        pool=np.setdiff1d(pool, taken),
        conflict_ids=r.conflict_index,
        k=int(k),
    )
