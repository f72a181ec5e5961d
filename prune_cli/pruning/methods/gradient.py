"""One-shot gradient-based criteria of Good et al., "Recall Distortion in Neural Network
Pruning and the Undecayed Pruning Algorithm" (NeurIPS 2022; METHODS.md section 2):

- ``gradient`` (GP): |theta * g|;
- ``undecayed`` (UP): |-theta * g + eps * theta^2|, eps defaulting to the run's weight decay.

g is the gradient of the cross-entropy on ``grad_batches`` training batches of the trained dense
model. Both prune globally and without structure from the dense model, then fine-tune
(``levels: 1``, ``rewind: none``); the target is ``sparsity`` or ``ratio`` (t = before/after).
The paper does not say whether BatchNorm uses batch or running statistics for g:
``grad_mode`` makes it explicit (default ``eval``: running statistics, as the model is evaluated).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.pruning.level import LevelConfig, LevelPruning
from prune_cli.pruning.method import METHODS, PruneContext
from prune_cli.pruning.scores import gradient_score, mean_gradient, undecayed_score


@dataclass
class GradientConfig(LevelConfig):
    name: str = "gradient"
    #: training batches whose mean gradient is g
    grad_batches: int = 10
    #: ``eval`` (BatchNorm running statistics) or ``train`` (batch statistics)
    grad_mode: str = "eval"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grad_batches < 1:
            raise ConfigError(f"method.grad_batches must be >= 1, got {self.grad_batches}")
        if self.grad_mode not in ("eval", "train"):
            raise ConfigError(f"method.grad_mode must be eval or train, got {self.grad_mode!r}")


@dataclass
class UndecayedConfig(GradientConfig):
    name: str = "undecayed"
    #: eps of the score; null = the run's weight decay (train.weight_decay)
    eps: float | None = None


@METHODS.register("gradient")
class GradientPruning(LevelPruning):
    Config = GradientConfig
    cfg: GradientConfig

    def gradient(
        self, model: nn.Module, params: Mapping[str, nn.Parameter], ctx: PruneContext
    ) -> dict[str, Tensor]:
        return mean_gradient(model, params, ctx, self.cfg.grad_batches, self.cfg.grad_mode)

    def scores(
        self, model: nn.Module, params: Mapping[str, nn.Parameter], ctx: PruneContext
    ) -> dict[str, Tensor]:
        return gradient_score(params, self.gradient(model, params, ctx))


@METHODS.register("undecayed")
class UndecayedPruning(GradientPruning):
    Config = UndecayedConfig
    cfg: UndecayedConfig

    def scores(
        self, model: nn.Module, params: Mapping[str, nn.Parameter], ctx: PruneContext
    ) -> dict[str, Tensor]:
        eps = ctx.weight_decay if self.cfg.eps is None else self.cfg.eps
        return undecayed_score(params, self.gradient(model, params, ctx), eps)
