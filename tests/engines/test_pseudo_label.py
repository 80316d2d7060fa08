# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Top-k selection, conflict removal (the source notebook's worked examples) and the pseudo-label exchange."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlk_components.engines.trainers.pseudo_label import exchange_pseudo_labels, remove_conflicts, top_k_confident
from tlk_components.utils.errors import ConfigError

# The notebook's out0 = torch.rand((4, 3)) under torch.manual_seed(13), as printed there.
OUT0 = torch.tensor(
    [[0.0918, 0.4794, 0.8106], [0.0151, 0.0153, 0.6036], [0.2318, 0.8633, 0.9859], [0.1975, 0.0830, 0.4253]]
)


def test_top_k_matches_notebook():
    t = top_k_confident(OUT0, 3)
    assert torch.allclose(t.confidence, torch.tensor([0.9859, 0.8106, 0.6036]))
    assert t.label.tolist() == [2, 2, 2]
    assert t.index.tolist() == [2, 0, 1]


def test_top_k_threshold_and_class_balance():
    probs = torch.tensor([[0.99, 0.01], [0.98, 0.02], [0.97, 0.03], [0.40, 0.60], [0.20, 0.80]])
    assert top_k_confident(probs, 4).index.tolist() == [0, 1, 2, 4]
    assert top_k_confident(probs, 4, threshold=0.975).index.tolist() == [0, 1]
    # at most k // C = 2 per predicted class: two of class 0, then the class-1 picks
    t = top_k_confident(probs, 4, class_balance=True)
    assert t.index.tolist() == [0, 1, 4, 3]
    assert t.label.tolist() == [0, 0, 1, 1]


# (labels of model 1, ids of model 1) -> (kept0 labels, kept0 ids, kept1 labels, kept1 ids, conflict ids, pairs)
WORKED_EXAMPLES = [
    # notebook cell 10: disjoint picks -> nothing removed
    ([1, 0, 1], [5, 3, 4], [2, 2, 2], [2, 0, 1], [1, 0, 1], [5, 3, 4], [], []),
    # cell 11: samples 0 and 1 conflict; both models say class 2 for sample 2, which survives. The notebook's
    # position-wise mask dropped sample 2 as well (see tlk_components.engines.trainers.pseudo_label docstring).
    ([1, 2, 0], [1, 2, 0], [2], [2], [2], [2], [0, 1], [(2, 0), (2, 1)]),
    # cell 12: sample 2 conflicts; samples 0, 1 agree (notebook: kept ids [0 1] for both, conflicts [2])
    ([1, 2, 2], [2, 0, 1], [2, 2], [0, 1], [2, 2], [0, 1], [2], [(2, 1)]),
    # cell 13: every pick conflicts -> everything removed (notebook: empty arrays, conflicts [0 1 2])
    ([0, 0, 0], [2, 0, 1], [], [], [], [], [0, 1, 2], [(2, 0), (2, 0), (2, 0)]),
]


@pytest.mark.parametrize("labs1, idxs1, kl0, ki0, kl1, ki1, conflicts, pairs", WORKED_EXAMPLES)
def test_remove_conflicts_worked_examples(labs1, idxs1, kl0, ki0, kl1, ki1, conflicts, pairs):
    t0 = top_k_confident(OUT0, 3)
    r = remove_conflicts(t0.label, t0.index, torch.tensor(labs1), torch.tensor(idxs1))
    assert r.label0.tolist() == kl0 and r.index0.tolist() == ki0
    assert r.label1.tolist() == kl1 and r.index1.tolist() == ki1
    assert r.conflict_index.tolist() == conflicts
    assert r.conflict_labels == pairs


def test_exchange_cross_feeds_and_shrinks_pool():
    pool = np.array([10, 11, 12, 13, 14, 15])
    # model 0 is sure about 10 (class 0) and 11 (class 1); model 1 about 11 (class 0: conflict), 15 (class 1)
    p0 = torch.tensor([[0.99, 0.01], [0.02, 0.98], [0.6, 0.4], [0.55, 0.45], [0.5, 0.5], [0.45, 0.55]])
    p1 = torch.tensor([[0.6, 0.4], [0.97, 0.03], [0.5, 0.5], [0.55, 0.45], [0.6, 0.4], [0.01, 0.99]])
    r = exchange_pseudo_labels(pool, p0, p1, k=2)
    assert r.conflict_ids.tolist() == [11]
    # model 0's pick (10, class 0) goes to view 1's training set; model 1's pick (15, class 1) to view 0's
    assert r.to_view1_ids.tolist() == [10] and r.to_view1_labels.tolist() == [0]
    assert r.to_view0_ids.tolist() == [15] and r.to_view0_labels.tolist() == [1]
    # picks leave the pool, the conflicting sample stays
    assert r.pool.tolist() == [11, 12, 13, 14]
    assert r.removed == 2


def test_exchange_agreeing_pick_goes_to_both():
    pool = np.array([0, 1, 2])
    p = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    r = exchange_pseudo_labels(pool, p, p.clone(), k=1)
    assert r.to_view0_ids.tolist() == [0] and r.to_view1_ids.tolist() == [0]
    assert r.pool.tolist() == [1, 2]


def test_ill_k_larger_than_pool():
    with pytest.raises(ConfigError, match=r"k=5 is larger than the unlabelled pool \(4 samples\)"):
        top_k_confident(OUT0, 5)
    with pytest.raises(ConfigError, match="k=0"):
        top_k_confident(OUT0, 0)


def test_ill_shapes():
    with pytest.raises(ConfigError, match="shape"):
        top_k_confident(torch.rand(4), 1)
    with pytest.raises(ConfigError, match="same samples"):
        exchange_pseudo_labels(np.arange(3), torch.rand(3, 2), torch.rand(4, 2), k=1)
    with pytest.raises(ConfigError, match="label0 has 2 entries but index0 has 3"):
        remove_conflicts([1, 2], [0, 1, 2], [1], [0])
    with pytest.raises(ConfigError, match="threshold"):
        top_k_confident(OUT0, 1, threshold=1.5)
