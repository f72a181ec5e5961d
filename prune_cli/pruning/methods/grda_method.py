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

from prune_cli.errors import ConfigError
from prune_cli.pruning.grda import GRDA
from prune_cli.pruning.method import METHODS, MethodConfig, PruningMethod


@dataclass
class GrdaConfig(MethodConfig):
    name: str = "grda"
    #: c: the scale of the soft threshold (small: <= 0.005)
    c: float = 0.005
    #: mu: the growth exponent of the threshold (0.5 < mu < 1: 0.501, 0.51, 0.55)
    mu: float = 0.55

    def __post_init__(self) -> None:
        if self.c < 0:
            raise ConfigError(f"method.c must be >= 0, got {self.c}")
        if self.mu <= 0:
            raise ConfigError(f"method.mu must be > 0, got {self.mu}")


@METHODS.register("grda")
class DirectionalPruning(PruningMethod):
    Config = GrdaConfig
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
