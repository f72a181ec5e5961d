"""Directional pruning with gRDA (Chao et al., NeurIPS 2020): train with the gRDA optimizer
instead of SGD; no mask, no target sparsity, no retraining. The exact zeros it produces are
counted and reported like any run's sparsity (per layer, PQI over all weights, per-class recall).
The optimizer thresholds all parameters, as in the paper, except those matching ``ignore``
(which it trains without a threshold); ``train.lr`` and its schedule apply.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from prune_cli.pruning.grda import GRDA
from prune_cli.pruning.method import METHODS, MethodConfig, PruningMethod, check_range
from prune_cli.pruning.results import Results


@dataclass
class GrdaConfig(MethodConfig):
    name: str = "grda"
    #: c: the scale of the soft threshold (the paper's: <= 0.005)
    c: float = 0.005
    #: mu: the growth exponent of the threshold, within the paper's 0.5 < mu < 1 (its runs:
    #: 0.501, 0.51, 0.55 over about 10^5-10^6 steps; conf/experiment/grda_*.yaml). The threshold
    #: grows like (n lr)^mu and the demo (train=grda_demo) takes about 1,000 steps, so a larger
    #: mu lets sparsity emerge in them: measured there, 0.7 gives 69% zeros and 0.8 gives 87%,
    #: both at the dense model's test accuracy
    mu: float = 0.8

    def __post_init__(self) -> None:
        check_range("c", self.c, 0.0)
        check_range("mu", self.mu, 0.0, low_open=True)


@METHODS.register("grda")
class DirectionalPruning(PruningMethod):
    Config = GrdaConfig
    #: no target: its sparsity emerges from the optimizer
    results = Results(target=None)
    cfg: GrdaConfig

    def optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        # parameters matching ``ignore`` stay dense: their group has no threshold (c = 0, plain
        # SGD without momentum, the same dual averaging), the others are thresholded
        named = list(model.named_parameters())
        dense = [p for k, p in named if any(fnmatch.fnmatch(k, pat) for pat in self.cfg.ignore)]
        dense_ids = {id(p) for p in dense}
        groups: list[dict] = [{"params": [p for _, p in named if id(p) not in dense_ids]}]
        if dense:
            groups.append({"params": dense, "c": 0.0})
        return GRDA(groups, lr=lr, c=self.cfg.c, mu=self.cfg.mu)
