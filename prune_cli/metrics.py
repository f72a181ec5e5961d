"""Sparsity and classification metrics shared by pruning methods and reports.

PQ Index (Diao et al., "Pruning Deep Neural Networks from a Sparsity Perspective", ICLR 2023):
for 0 < p < q and the d entries of w that are still unmasked,

    I_{p,q}(w) = 1 - (mean |w_i|^p)^(1/p) / (mean |w_i|^q)^(1/q)

which lies in [0, 1 - d^(1/q - 1/p)]; larger means sparser. Edge cases, as the paper's reference
sheet fixes them: d = 0 gives 0; a vector of equal magnitudes gives 0; tiny negative round-off is
clamped to 0. An unmasked vector that is all zeros (the formula is 0/0) also gives 0.

Gini index of |w| (Hurley and Rickard, 2009), logged beside the PQI by the paper's reference code.

Disconnected units (``unconnected_units``): what pruning can cut off without anyone noticing
in the accuracy of the other classes (issue 9's collapse check).
"""

from __future__ import annotations

import torch
from torch import Tensor


def pq_index_rows(weights: Tensor, mask: Tensor | None, p: float, q: float) -> Tensor:
    """PQ index of each row of ``weights`` (R, n) over the entries where ``mask`` is True.

    Returns a float64 tensor of shape (R,). Computed in float64 after dividing each row by its
    largest unmasked magnitude: the index is scale-invariant, and the scaling keeps |w|^p and
    |w|^q away from under- and overflow.
    """
    if not 0 < p < q:
        raise ValueError(f"the PQ index needs 0 < p < q, got p={p}, q={q}")
    a = weights.detach().abs().to(torch.float64)
    if mask is None:
        mask = torch.ones_like(a, dtype=torch.bool)
    a = torch.where(mask, a, torch.zeros_like(a))
    d = mask.sum(dim=1).to(torch.float64)  # (R,)
    scale = a.amax(dim=1, keepdim=True)
    a = a / torch.where(scale > 0, scale, torch.ones_like(scale))
    safe_d = d.clamp(min=1.0)
    mean_p = (a.pow(p) * mask).sum(dim=1) / safe_d
    mean_q = (a.pow(q) * mask).sum(dim=1) / safe_d
    norm_p = mean_p.pow(1.0 / p)
    norm_q = mean_q.pow(1.0 / q)
    valid = (d > 0) & (norm_q > 0)
    ratio = norm_p / torch.where(valid, norm_q, torch.ones_like(norm_q))
    index = torch.where(valid, 1.0 - ratio, torch.zeros_like(ratio))
    return index.clamp(min=0.0)


def pq_index(weights: Tensor, mask: Tensor | None = None, p: float = 0.5, q: float = 1.0) -> float:
    """PQ index of all entries of ``weights`` (any shape) where ``mask`` is True."""
    flat = weights.reshape(1, -1)
    flat_mask = None if mask is None else mask.reshape(1, -1)
    return float(pq_index_rows(flat, flat_mask, p, q)[0])


def gini_index(weights: Tensor, mask: Tensor | None = None) -> float:
    """Gini index of |w| over unmasked entries: 0 for equal magnitudes, -> 1 for one non-zero.

    G = 1 - 2 * sum_k (c_k / ||c||_1) * (N - k + 1/2) / N with c sorted ascending, k = 1..N.
    """
    a = weights.detach().abs().reshape(-1).to(torch.float64)
    if mask is not None:
        a = a[mask.reshape(-1)]
    n = a.numel()
    total = a.sum()
    if n == 0 or total <= 0:
        return 0.0
    c, _ = torch.sort(a)
    k = torch.arange(1, n + 1, dtype=torch.float64, device=c.device)
    return float(1.0 - 2.0 * torch.sum((c / total) * (n - k + 0.5) / n))


def unconnected_units(weight: Tensor) -> tuple[int, int]:
    """(outputs with no non-zero incoming weight, inputs with no non-zero outgoing weight) of one
    conv or linear weight (out, in, *kernel).

    An output unit (filter, neuron) whose row is all zeros computes a constant (its bias at
    most): it carries no information forward. An input unit (channel, feature) whose column
    is all zeros is not read by this layer. Depthwise and grouped convolutions count the
    ``in / groups`` inputs of the weight tensor. Tensors of fewer than two dimensions have no
    units: (0, 0).
    """
    if weight.dim() < 2:
        return 0, 0
    alive = weight.detach() != 0
    rows = alive.reshape(alive.shape[0], -1).any(dim=1)  # (out,)
    cols = alive.transpose(0, 1).reshape(alive.shape[1], -1).any(dim=1)  # (in,)
    return int((~rows).sum()), int((~cols).sum())


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """(C, C) counts, rows = true class, columns = predicted class; stays on the tensors' device."""
    idx = targets.to(torch.long) * num_classes + preds.to(torch.long)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, -1)


def per_class_recall(confusion: Tensor) -> tuple[Tensor, Tensor]:
    """(recall, support) per class from a confusion matrix; recall is 0 where support is 0."""
    support = confusion.sum(dim=1)
    correct = confusion.diagonal()
    recall = correct.to(torch.float64) / support.clamp(min=1).to(torch.float64)
    return recall, support
