"""Lottery-ticket baselines in SAP's loop (Frankle and Carbin, ICLR 2019; Diao et al. 2023):

- ``lt``: each level prunes ``rate`` (20%) of the remaining weights by their latest magnitude
  (the model selected at the end of the previous level), then rewinds to the initialisation;
- ``os`` (one-shot ranking): the weights are ranked once, by the dense level-0 model's
  magnitudes, and each level prunes ``rate`` more of the remaining in that fixed order.

After k levels both reach sparsity 1 - (1 - rate)^k.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from prune_cli.pruning.level import LevelConfig, LevelPruning
from prune_cli.pruning.measures import Site
from prune_cli.pruning.method import METHODS, PruneContext


@dataclass
class LotteryConfig(LevelConfig):
    name: str = "lt"
    rate: float | None = 0.2
    levels: int = 5
    rewind: str = "init"


@dataclass
class OneShotRankingConfig(LotteryConfig):
    name: str = "os"


@METHODS.register("lt")
class LotteryTicket(LevelPruning):
    Config = LotteryConfig
    score = "magnitude"

    def shares_dense(self) -> bool:
        # level 0 is the plain dense training; a late rewind saves a level-0 epoch of its own
        return self.rewind().kind != "epoch"


@METHODS.register("os")
class OneShotRanking(LevelPruning):
    Config = OneShotRankingConfig
    score = "magnitude"  # of the dense level-0 weights

    def shares_dense(self) -> bool:
        # level 0 is the plain dense training; a late rewind saves a level-0 epoch of its own
        return self.rewind().kind != "epoch"

    def scores(
        self, model: nn.Module, params: Mapping[str, nn.Parameter], ctx: PruneContext
    ) -> dict[str, Tensor]:
        dense = ctx.load_state("level_0")  # the ranking never changes after level 0
        sites = {k: Site(dense[k].detach().to(p.device)) for k, p in params.items()}
        return self.measure(ctx).weights(sites, ctx)
