"""Unstructured pruning by a gradient-flow measure (``prune_cli.pruning.flow``), per weight.

With ``train.epochs=0`` (no dense training) this is pruning at initialisation: ``measure:
loss_preservation`` is SNIP (Lee et al. 2019) and ``measure: grasp`` is GraSP (Wang et al. 2020,
logits / 200, class-balanced sample); then level 1 trains the pruned network from the
initialisation. After dense training it is one-shot pruning followed by fine-tuning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.pruning.flow import MEASURES, derivatives_for, unstructured_score
from prune_cli.pruning.level import LevelConfig, LevelPruning
from prune_cli.pruning.method import METHODS, PruneContext


@dataclass
class FlowConfig(LevelConfig):
    name: str = "flow"
    measure: str = "loss_preservation"
    samples: int = 2560
    score_temperature: float = 1.0
    grasp_temperature: float = 200.0
    samples_per_class: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.measure not in MEASURES or self.measure == "bn_gamma":
            raise ConfigError(f"method.measure must be one of {', '.join(MEASURES[:-1])}")
        if self.samples < 1 or self.samples_per_class < 1:
            raise ConfigError("method.samples and method.samples_per_class must be >= 1")


@METHODS.register("flow")
class FlowPruning(LevelPruning):
    Config = FlowConfig
    cfg: FlowConfig

    def scores(
        self, model: nn.Module, params: Mapping[str, nn.Parameter], ctx: PruneContext
    ) -> dict[str, Tensor]:
        c = self.cfg
        g, hg = derivatives_for(c, model, params, ctx)
        return {
            k: unstructured_score(
                c.measure, p, None if g is None else g[k], None if hg is None else hg[k]
            )
            for k, p in params.items()
        }
