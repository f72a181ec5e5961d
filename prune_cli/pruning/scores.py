"""Per-weight scores by name: the registered importance measures
(``prune_cli.pruning.measures``) as functions ``(model, params, ctx) -> {name: scores}``, with
their default settings and the gradient-flow sample. Higher = more important.

``SCORES.get(name)`` is what the level methods' ``score`` names; it holds no list of its own, so a
new measure is scorable here as soon as it is registered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING

from torch import Tensor, nn

from prune_cli.pruning.measures import IMPORTANCE, Site, build, weight_scores
from prune_cli.pruning.measures.gradient_flow import Undecayed

if TYPE_CHECKING:
    from prune_cli.pruning.method import PruneContext

ScoreFn = Callable[[nn.Module, Mapping[str, nn.Parameter], "PruneContext"], dict[str, Tensor]]


class _Scores:
    """The registry of measures seen as per-weight score functions."""

    def get(self, name: str) -> ScoreFn:
        return partial(weight_scores, build(name))

    def names(self) -> list[str]:
        return [n for n in IMPORTANCE.names() if IMPORTANCE.get(n).per_weight]

    def __contains__(self, name: object) -> bool:
        return name in self.names()


SCORES = _Scores()


def undecayed_score(
    params: Mapping[str, Tensor], grads: Mapping[str, Tensor], eps: float
) -> dict[str, Tensor]:
    """|-theta * g + eps * theta^2| of each tensor, given g (Undecayed Pruning)."""
    return Undecayed(eps=eps).weights(
        {k: Site(p.detach(), g=grads[k]) for k, p in params.items()}, None
    )
