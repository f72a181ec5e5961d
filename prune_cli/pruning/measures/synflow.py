"""SynFlow (Tanaka et al., "Pruning neural networks without any data by iteratively conserving
synaptic flow", NeurIPS 2020).

R = 1^T f(1; |theta|): the all-ones input through the network with every parameter replaced by
its absolute value; the score of a weight is |theta dR/dtheta| (summed per filter). Data-free:
only the input's shape is read. Pruning by it is iterative: ``rounds`` (100) rescorings at one
pruning step, round k pruning to the exponential schedule's density (1 - s)^(k / rounds), each
round scoring the network pruned by the previous ones (``method=flow`` does this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from prune_cli.pruning.measures import IMPORTANCE, Measure, Site


@IMPORTANCE.register("synflow")
@dataclass
class SynFlow(Measure):
    needs: ClassVar[frozenset[str]] = frozenset({"synflow"})
    rounds: ClassVar[int] = 100

    def weight(self, site: Site) -> Tensor:
        return (site.theta * site.synflow).abs()
