"""Score-based level pruning: the building block of one-shot and iterative methods.

At the start of each level k >= 1: score the model selected at the end of level k - 1, select
the lowest scores within the scope until the level's target is met, then rewind. With
``levels = 1`` this is one-shot pruning followed by fine-tuning (``rewind = none``); with more
levels and ``rewind = init`` it is iterative magnitude pruning with rewinding (Frankle and
Carbin 2019).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import MethodConfig, PruneContext, PruningMethod
from prune_cli.pruning.schedule import RewindPoint, level_target
from prune_cli.pruning.scope import SCOPES, fraction_of_total, select
from prune_cli.pruning.scores import SCORES


@dataclass
class LevelConfig(MethodConfig):
    #: final fraction of prunable weights masked, in [0, 1)
    sparsity: float = 0.9
    #: pruning levels after the dense level (1 = one-shot, then fine-tune)
    levels: int = 1
    #: fraction of the *remaining* weights pruned per level; when set it replaces ``sparsity``
    rate: float | None = None
    #: ``global``, ``layer`` or ``neuron``
    scope: str = "global"
    #: ``init``, ``none`` (fine-tune the pruned weights) or ``<k>ep``
    rewind: str = "none"

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"method.sparsity must be in [0, 1), got {self.sparsity}")
        if self.levels < 0:
            raise ConfigError(f"method.levels must be >= 0, got {self.levels}")
        if self.rate is not None and not 0.0 < self.rate < 1.0:
            raise ConfigError(f"method.rate must be in (0, 1), got {self.rate}")
        if self.scope not in SCOPES:
            raise ConfigError(
                f"method.scope must be one of {', '.join(SCOPES)}, got {self.scope!r}"
            )
        RewindPoint.parse(self.rewind)


class LevelPruning(PruningMethod):
    """Prune to a level's target by a registered score; subclasses choose ``score``."""

    Config = LevelConfig
    score: ClassVar[str] = "magnitude"

    cfg: LevelConfig

    def num_levels(self) -> int:
        return self.cfg.levels

    def target(self, level: int) -> float:
        return level_target(level, self.cfg.levels, self.cfg.sparsity, self.cfg.rate)

    def prune(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> Mapping[str, Tensor]:
        params = self.prunable(model)
        scores = SCORES.get(self.score)(model, params, ctx)
        return select(
            params, scores, masks, self.cfg.scope, fraction_of_total(self.target(ctx.level))
        )

    def rewind(self) -> RewindPoint:
        return RewindPoint.parse(self.cfg.rewind)
