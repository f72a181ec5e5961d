"""PQ index, Gini index and per-class recall against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from prune_cli.metrics import (
    confusion_matrix,
    gini_index,
    per_class_recall,
    pq_index,
    pq_index_rows,
)


def test_pqi_one_hot_reaches_its_upper_bound():
    # w = (1, 0, 0, 0): mean|w|^0.5 = 1/4 -> (1/4)^2 = 1/16; mean|w| = 1/4; I = 1 - 1/4 = 3/4,
    # which is the bound 1 - d^(1/q - 1/p) = 1 - 4^(-1).
    w = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert pq_index(w, None, 0.5, 1.0) == pytest.approx(0.75, abs=1e-12)
    # (1, 2): mean|w| = 1/4, sqrt(mean w^2) = 1/2 -> I = 1 - 1/2
    assert pq_index(w, None, 1.0, 2.0) == pytest.approx(0.5, abs=1e-12)


def test_pqi_counts_only_unmasked_entries():
    w = torch.tensor([3.0, -1.0, 0.0, 5.0])
    mask = torch.tensor([True, True, False, False])
    # over (3, 1): ((sqrt 3 + 1) / 2)^2 = 1 + sqrt(3) / 2; mean = 2
    expected_05_1 = 1 - (1 + math.sqrt(3) / 2) / 2
    expected_1_2 = 1 - 2 / math.sqrt(5)
    assert pq_index(w, mask, 0.5, 1.0) == pytest.approx(expected_05_1, abs=1e-12)
    assert pq_index(w, mask, 1.0, 2.0) == pytest.approx(expected_1_2, abs=1e-12)


def test_pqi_edge_cases():
    assert pq_index(torch.ones(7) * 0.3, None, 0.5, 1.0) == 0.0  # all equal
    assert pq_index(torch.randn(5), torch.zeros(5, dtype=torch.bool)) == 0.0  # d = 0
    assert pq_index(torch.zeros(5)) == 0.0  # all unmasked entries zero: 0/0 -> 0
    # round-off on nearly equal values never goes negative
    w = torch.full((1000,), 0.1) + torch.randn(1000) * 1e-9
    assert pq_index(w) >= 0.0
    with pytest.raises(ValueError):
        pq_index(torch.ones(3), None, 1.0, 1.0)


def test_pqi_is_scale_invariant_and_stable_for_tiny_values():
    # float64 input: scaling a float32 tensor by 1e-30 already rounds each entry (~1e-7)
    w = torch.randn(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert pq_index(w * 1e-30) == pytest.approx(pq_index(w), rel=1e-9)
    assert pq_index(w * 1e30) == pytest.approx(pq_index(w), rel=1e-9)


def test_pqi_rows_match_the_vector_form():
    w = torch.randn(6, 10)
    mask = torch.rand(6, 10) > 0.3
    rows = pq_index_rows(w, mask, 0.5, 1.0)
    for r in range(6):
        assert rows[r].item() == pytest.approx(pq_index(w[r], mask[r], 0.5, 1.0), abs=1e-12)


def test_gini_hand_values():
    assert gini_index(torch.tensor([0.0, 0.0, 0.0, 1.0])) == pytest.approx(0.75)
    assert gini_index(torch.ones(9)) == pytest.approx(0.0, abs=1e-12)
    assert gini_index(torch.zeros(3)) == 0.0
    # masked entries are left out: over (2, 2) the index is 0
    w = torch.tensor([2.0, 0.0, 2.0])
    assert gini_index(w, torch.tensor([True, False, True])) == pytest.approx(0.0, abs=1e-12)


def test_confusion_and_recall():
    targets = torch.tensor([0, 0, 1, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(preds, targets, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    recall, support = per_class_recall(cm)
    assert support.tolist() == [2, 3, 1, 0]
    assert recall.tolist() == pytest.approx([0.5, 2 / 3, 1.0, 0.0])
