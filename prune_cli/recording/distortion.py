"""Recall distortion (Good et al., "Recall Distortion in Neural Network Pruning and the
Undecayed Pruning Algorithm", NeurIPS 2022; METHODS.md section 2).

For a model of accuracy A with recall R^c of class c, the normalised recall balance is
B^c = (R^c - A) / A. Comparing a pruned model (B_t) with its dense parent (B):
the intensification ratio I^c_t = B^c_t / B^c, and the per-model statistic

    alpha_t = sum_c B^c * B^c_t / sum_c (B^c)^2

(the no-intercept least-squares slope of B_t on B over the classes): alpha > 1 means the pruned
model favours the already favoured classes more (intensification), alpha < 1 less.
"""

from __future__ import annotations

from collections.abc import Sequence

DISTORTION_HEADER = (
    "level",
    "class",
    "recall_dense",
    "recall",
    "balance_dense",
    "balance",
    "intensification",
)


def recall_balance(recall: Sequence[float], accuracy: float) -> list[float]:
    """B^c = (R^c - A) / A for every class (A > 0)."""
    return [(r - accuracy) / accuracy for r in recall]


def alpha(balance_dense: Sequence[float], balance: Sequence[float]) -> float | None:
    """No-intercept slope of ``balance`` on ``balance_dense``; None when all B^c are 0."""
    denominator = sum(b * b for b in balance_dense)
    if denominator == 0:
        return None
    return sum(b0 * b for b0, b in zip(balance_dense, balance, strict=True)) / denominator


def distortion_rows(
    level: int,
    recall_dense: Sequence[float],
    accuracy_dense: float,
    recall: Sequence[float],
    accuracy: float,
) -> tuple[list[tuple], float | None]:
    """Rows of ``recall_distortion.csv`` for one pruned level, and its alpha.

    Undefined values (a model with accuracy 0, a class whose dense balance is 0) are None,
    written as empty cells.
    """
    if accuracy_dense <= 0 or accuracy <= 0:
        rows = [
            (level, c, r0, r, None, None, None)
            for c, (r0, r) in enumerate(zip(recall_dense, recall, strict=True))
        ]
        return rows, None
    b0 = recall_balance(recall_dense, accuracy_dense)
    b = recall_balance(recall, accuracy)
    rows = [
        (level, c, recall_dense[c], recall[c], b0[c], b[c], None if b0[c] == 0 else b[c] / b0[c])
        for c in range(len(b0))
    ]
    return rows, alpha(b0, b)
