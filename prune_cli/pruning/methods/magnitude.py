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
