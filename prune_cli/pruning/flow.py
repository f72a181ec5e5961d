"""Gradient-flow pruning (Lubana and Dick, "A Gradient Flow Framework For Analyzing Network
Pruning", ICLR 2021; METHODS.md section 6): the paper's measures and its early-pruning schedule.

The measures are registered classes of ``prune_cli.pruning.measures`` (``gradient_flow.py`` and
``basic.py``), their derivatives come from the providers of ``prune_cli.pruning.derivatives``
(``prune_cli.pruning.providers.gradients``: g, H g, Fisher's g2); this module names the paper's
table (``MEASURES``) and keeps the per-tensor functions ``filter_score`` and
``unstructured_score`` for callers that already hold g and H g.
"""

from __future__ import annotations

import math

from torch import Tensor

from prune_cli.pruning.measures import IMPORTANCE, Site

#: the measures of the paper's table (all registered in ``prune_cli.pruning.measures``)
MEASURES = (
    "magnitude",
    "loss_preservation",
    "biased_loss_preservation",
    "grasp",
    "gradient_norm",
    "taylor",
    "fisher",
    "bn_gamma",
)


def filter_score(
    measure: str, theta: Tensor, g: Tensor | None, hg: Tensor | None, g2: Tensor | None = None
) -> Tensor:
    """Score of each output filter (row of theta.view(out, -1)) by a registered measure."""
    return IMPORTANCE.get(measure)().filter(Site(theta.detach(), g=g, hg=hg, g2=g2))


def unstructured_score(
    measure: str, theta: Tensor, g: Tensor | None, hg: Tensor | None, g2: Tensor | None = None
) -> Tensor:
    """Score of each weight by a registered measure."""
    return IMPORTANCE.get(measure)().weight(Site(theta.detach(), g=g, hg=hg, g2=g2))


def early_round_fraction(k: int, n: int, p: float) -> float:
    """p_k = p / (k p + n (1 - p)): the fraction of the remaining pruned in round k = 1..n, so
    that after n rounds the pruned fraction is p (the product of (1 - p_k) telescopes to 1 - p)."""
    if not 1 <= k <= n:
        raise ValueError(f"round {k} is outside 1..{n}")
    denominator = k * p + n * (1 - p)
    return 0.0 if math.isclose(denominator, 0.0) else p / denominator
