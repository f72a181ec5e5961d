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
