"""Magnitude pruning (Han et al., "Learning both Weights and Connections", NeurIPS 2015).

Prunes the smallest |theta| within the scope. One-shot with ``levels=1``; iterative with more
levels (a geometric schedule to ``sparsity``, or ``rate`` of the remaining weights per level).
"""

from __future__ import annotations

from dataclasses import dataclass

from prune_cli.pruning.level import LevelConfig, LevelPruning
from prune_cli.pruning.method import METHODS


@dataclass
class MagnitudeConfig(LevelConfig):
    name: str = "magnitude"
    #: three levels to 90%: the demonstration (bare ``prune-run``); 1 is one-shot
    levels: int = 3


@METHODS.register("magnitude")
class MagnitudePruning(LevelPruning):
    Config = MagnitudeConfig
    score = "magnitude"

    def shares_dense(self) -> bool:
        # level 0 is the plain dense training; a late rewind saves a level-0 epoch of its own
        return self.rewind().kind != "epoch"


def dense_only_config() -> MagnitudeConfig:
    """A method config that trains the dense level 0 and prunes nothing (no levels): the one
    every shared dense run is made with (:mod:`prune_cli.shared_dense`), whichever method the
    runs that share it prune with."""
    return MagnitudeConfig(levels=0)
