"""Random pruning: the baseline that every criterion must beat (random scores, same schedule)."""

from __future__ import annotations

from dataclasses import dataclass

from prune_cli.pruning.level import LevelConfig, LevelPruning
from prune_cli.pruning.method import METHODS


@dataclass
class RandomConfig(LevelConfig):
    name: str = "random"


@METHODS.register("random")
class RandomPruning(LevelPruning):
    Config = RandomConfig
    score = "random"

    def shares_dense(self) -> bool:
        # level 0 is the plain dense training; a late rewind saves a level-0 epoch of its own
        return self.rewind().kind != "epoch"
