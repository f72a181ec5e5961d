"""SAP: Sparsity-informed Adaptive Pruning (Diao et al., "Pruning Deep Neural Networks from a
Sparsity Perspective", ICLR 2023, arXiv 2302.05601; METHODS.md section 1).

At the start of level t, within each scope group of d_t unmasked weights w_t (the model selected
at the end of the previous level):

    r_t = ceil( d_t * (1 + eta_r)^(-q/(q-p)) * (1 - I_{p,q}(w_t))^(q*p/(q-p)) )
    c_t = floor( d_t * clamp( gamma * (1 - r_t / d_t), 0, beta ) )

and the c_t smallest-magnitude unmasked weights of the group are pruned; then the survivors and
all other parameters rewind to the initialisation and retrain. With (p, q) = (0.5, 1), eta_r = 0
and gamma = 1, the pruned fraction equals the PQ index (capped at beta).

Differences from the paper's reference code: the reference code selected each round's checkpoint
on test accuracy; here it is chosen on the held-out validation split (``train.select``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prune_cli.errors import ConfigError
from prune_cli.metrics import pq_index_rows
from prune_cli.pruning.level import IterativeConfig, IterativePruning
from prune_cli.pruning.method import METHODS, check_range
from prune_cli.pruning.results import Results
from prune_cli.pruning.scope import CountRule, Groups

SLACK = 1e-9


@dataclass
class SapConfig(IterativeConfig):
    name: str = "sap"
    p: float = 0.5
    q: float = 1.0
    #: error-tolerance rate eta_r >= 0 (larger prunes less)
    eta_r: float = 0.0
    #: scaling factor gamma of the pruned fraction
    gamma: float = 1.0
    #: the most of a group's unmasked weights one level may prune, in (0, 1]
    beta: float = 0.9
    levels: int = 5
    rewind: str = "init"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.p < self.q:
            raise ConfigError(f"SAP needs 0 < method.p < method.q, got p={self.p}, q={self.q}")
        check_range("eta_r", self.eta_r, 0.0)
        check_range("gamma", self.gamma, 0.0)
        check_range("beta", self.beta, 0.0, 1.0, low_open=True, high_open=False)


def sap_count(p: float, q: float, eta_r: float, gamma: float, beta: float) -> CountRule:
    """SAP's count rule: c_t per group from the PQ index of its unmasked weights."""

    def rule(groups: Groups) -> Tensor:
        d = groups.mask.sum(dim=1).to(torch.float64)
        index = pq_index_rows(groups.weights, groups.mask, p, q).to(d.device)
        bound = (1.0 + eta_r) ** (-q / (q - p)) * (1.0 - index) ** (q * p / (q - p))
        # d * clamp(gamma (1 - r/d), 0, beta) = clamp(gamma (d - r), 0, beta d): the second form
        # keeps d - r an exact integer; the slack keeps exact integers exact under round-off.
        r = torch.ceil(d * bound - SLACK)
        c = torch.minimum((gamma * (d - r)).clamp(min=0.0), beta * d)
        return torch.floor(c + SLACK).to(torch.long)

    return rule


@METHODS.register("sap")
class SparsityInformedAdaptivePruning(IterativePruning):
    Config = SapConfig
    #: no target: its sparsity follows from the PQ index
    results = Results(target=None)
    score = "magnitude"
    cfg: SapConfig

    def shares_dense(self) -> bool:
        # level 0 is the plain dense training; a late rewind saves a level-0 epoch of its own
        return self.rewind().kind != "epoch"

    def count_rule(self, level: int) -> CountRule:
        c = self.cfg
        return sap_count(c.p, c.q, c.eta_r, c.gamma, c.beta)
