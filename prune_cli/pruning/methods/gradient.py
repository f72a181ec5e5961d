"""One-shot gradient-based criteria of Good et al., "Recall Distortion in Neural Network
Pruning and the Undecayed Pruning Algorithm" (NeurIPS 2022; METHODS.md section 2):

- ``gradient`` (GP): |theta * g| (the ``loss_preservation`` measure);
- ``undecayed`` (UP): |-theta * g + eps * theta^2|, eps defaulting to the run's weight decay.

g is the gradient of the cross-entropy on ``grad_batches`` training batches of the trained dense
model. Both prune globally and without structure from the dense model, then fine-tune
(``levels: 1``, ``rewind: none``); the target is ``ratio`` (t = before/after, 10 unless set) or,
with ``ratio: null``, ``sparsity``.
The paper does not say whether BatchNorm uses batch or running statistics for g:
``grad_mode`` makes it explicit (default ``eval``: running statistics, as the model is evaluated).
"""

from __future__ import annotations

from dataclasses import dataclass

from prune_cli.errors import ConfigError
from prune_cli.pruning.derivatives import Sample
from prune_cli.pruning.level import LevelConfig, LevelPruning
from prune_cli.pruning.measures import Measure, build
from prune_cli.pruning.method import METHODS, PruneContext, check_range


@dataclass
class GradientConfig(LevelConfig):
    name: str = "gradient"
    #: the paper's targets are ratios (t = 2, 4, 10, 20, 50); t = 10 is sparsity 0.9
    ratio: float | None = 10.0
    #: training batches whose mean gradient is g
    grad_batches: int = 10
    #: ``eval`` (BatchNorm running statistics) or ``train`` (batch statistics)
    grad_mode: str = "eval"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("grad_batches", self.grad_batches, 1)
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
    score = "loss_preservation"  # GP's |theta g| is SNIP's loss preservation

    def shares_dense(self) -> bool:
        # level 0 is the plain dense training; a late rewind saves a level-0 epoch of its own
        return self.rewind().kind != "epoch"

    def sample(self) -> Sample:
        return Sample(batches=self.cfg.grad_batches, mode=self.cfg.grad_mode)


@METHODS.register("undecayed")
class UndecayedPruning(GradientPruning):
    Config = UndecayedConfig
    cfg: UndecayedConfig
    score = "undecayed"

    def measure(self, ctx: PruneContext) -> Measure:
        return build(self.score, eps=ctx.weight_decay if self.cfg.eps is None else self.cfg.eps)
