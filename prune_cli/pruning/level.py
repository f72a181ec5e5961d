"""Score-based level pruning: the building block of one-shot and iterative methods.

``IterativePruning`` is score -> select (scope) -> count rule; ``LevelPruning`` fixes the count
rule to a target schedule (used by magnitude, random, lottery ticket, one-shot ranking, and the
gradient-based one-shot methods); SAP replaces the count rule by its PQI-based one.

At the start of each level k >= 1: score the model selected at the end of level k - 1, select
the lowest scores within the scope until the level's target is met, then rewind. With
``levels = 1`` this is one-shot pruning followed by fine-tuning (``rewind = none``); with more
levels and ``rewind = init`` it is iterative magnitude pruning with rewinding (Frankle and
Carbin 2019).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.pruning.derivatives import Sample
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.measures import Measure, build, weight_scores
from prune_cli.pruning.method import MethodConfig, PruneContext, PruningMethod, check_range
from prune_cli.pruning.schedule import RewindPoint, level_target
from prune_cli.pruning.scope import SCOPES, CountRule, fraction_of_total, select


@dataclass
class IterativeConfig(MethodConfig):
    """Settings of every method that prunes at the start of levels."""

    #: pruning levels after the dense level (1 = one-shot, then fine-tune)
    levels: int = 1
    #: ``global``, ``layer`` or ``neuron``
    scope: str = "global"
    #: ``init``, ``none`` (fine-tune the pruned weights) or ``<k>ep``
    rewind: str = "none"

    def __post_init__(self) -> None:
        check_range("levels", self.levels, 0)
        if self.scope not in SCOPES:
            raise ConfigError(
                f"method.scope must be one of {', '.join(SCOPES)}, got {self.scope!r}"
            )
        RewindPoint.parse(self.rewind)


@dataclass
class LevelConfig(IterativeConfig):
    """A target-driven schedule: the final sparsity, or a fraction of the remaining per level."""

    #: final fraction of prunable weights masked, in [0, 1)
    sparsity: float = 0.9
    #: the target as a pruning ratio t = params before / params after (sparsity = 1 - 1/t);
    #: when set it replaces ``sparsity``
    ratio: float | None = None
    #: fraction of the *remaining* weights pruned per level; when set it replaces ``sparsity``
    rate: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("sparsity", self.sparsity, 0.0, 1.0)
        if self.ratio is not None:
            check_range("ratio", self.ratio, 1.0)
        if self.rate is not None:
            check_range("rate", self.rate, 0.0, 1.0, low_open=True)
        if self.ratio is not None and self.rate is not None:
            raise ConfigError("set method.ratio or method.rate, not both")

    @property
    def final_sparsity(self) -> float:
        return self.sparsity if self.ratio is None else 1.0 - 1.0 / self.ratio


class IterativePruning(PruningMethod, ABC):
    """Score -> select within the scope -> count rule, at the start of each level >= 1."""

    Config = IterativeConfig
    #: the registered importance measure this method ranks by (``prune_cli.pruning.measures``)
    score: ClassVar[str] = "magnitude"

    cfg: IterativeConfig

    def num_levels(self) -> int:
        return self.cfg.levels

    def measure(self, ctx: PruneContext) -> Measure:
        """The measure, with the settings it has taken from the method's config."""
        return build(self.score, self.cfg)

    def sample(self) -> Sample:
        """The training data of the measure's derivatives (for measures that need data)."""
        return Sample(samples=2560)

    def scores(
        self, model: nn.Module, params: Mapping[str, nn.Parameter], ctx: PruneContext
    ) -> dict[str, Tensor]:
        return weight_scores(self.measure(ctx), model, params, ctx, self.sample())

    @abstractmethod
    def count_rule(self, level: int) -> CountRule:
        """How many more weights each scope group loses at ``level``."""

    def prune(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> Mapping[str, Tensor]:
        params = self.prunable(model)
        scores = self.scores(model, params, ctx)
        return select(params, scores, masks, self.cfg.scope, self.count_rule(ctx.level))

    def rewind(self) -> RewindPoint:
        return RewindPoint.parse(self.cfg.rewind)


class LevelPruning(IterativePruning):
    """Prune to each level's target sparsity; subclasses choose the ``score``."""

    Config = LevelConfig
    cfg: LevelConfig

    def target(self, level: int) -> float:
        return level_target(level, self.cfg.levels, self.cfg.final_sparsity, self.cfg.rate)

    def count_rule(self, level: int) -> CountRule:
        return fraction_of_total(self.target(level))
