"""Filter pruning via geometric median (FPGM: He et al., "Filter Pruning via Geometric Median for
Deep Convolutional Neural Networks Acceleration", CVPR 2019).

A filter close to the geometric median of its layer's filters is the one the others can best
stand in for. The authors approximate the distance to the geometric median by the sum of the
Euclidean distances to the other filters of the layer: score_f = sum_j ||W_f - W_j||_2 over the
rows of ``W.view(out, -1)`` (their ``distance.cdist(..., 'euclidean').sum(axis=0)``), the
smallest pruned first. Per filter only. For a unit of coupled tensors the scores of its tensors
add up (each tensor's filters are compared within that tensor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from prune_cli.pruning.measures import IMPORTANCE, Measure, Site


def distance_sums(rows: Tensor) -> Tensor:
    """sum_j ||r_i - r_j||_2 for every row i of ``rows`` (n, d), in float64 without the
    matrix-product shortcut (exact to round-off), returned in the rows' dtype."""
    r = rows.detach().to(torch.float64)
    d = torch.cdist(r, r, compute_mode="donot_use_mm_for_euclid_dist")
    return d.sum(dim=1).to(rows.dtype)


@IMPORTANCE.register("fpgm")
@dataclass
class GeometricMedian(Measure):
    per_weight: ClassVar[bool] = False

    def filter(self, site: Site) -> Tensor:
        return distance_sums(site.rows(site.theta))
