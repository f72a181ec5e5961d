"""Gradual magnitude pruning (Zhu and Gupta, "To prune, or not to prune", 2017).

During the dense training run (level 0, no separate fine-tuning level), every ``frequency``
optimizer steps from step t0 the masks are recomputed by magnitude to the cubic target

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3,   t = t0, t0 + dt, ..., t0 + n dt

which starts at ``initial_sparsity`` s_i and reaches ``sparsity`` s_f at ``end_epoch``; training
goes on with the final masks to the last epoch. t counts *completed* optimizer steps: the update
for t runs right after step t (the training loop's 0-based step t - 1), so with ``end_epoch ==
train.epochs`` the last update falls on the last training step and s_f is reached (counting from
0 put it one step past the end, and a run stopped short of s_f). With t0 = 0 the first update
(to s_i, before any step) runs when the level starts. Masks only shrink (already-pruned weights rank
first), and the checkpoint that ends the run is chosen among epochs with the final masks.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from prune_cli.callbacks import Callback
from prune_cli.errors import ConfigError
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.measures import build, weight_scores
from prune_cli.pruning.method import METHODS, MethodConfig, PruneContext, PruningMethod, check_range
from prune_cli.pruning.scope import SCOPES, fraction_of_total, select


@dataclass
class GmpConfig(MethodConfig):
    name: str = "gmp"
    #: final sparsity s_f, in [0, 1)
    sparsity: float = 0.9
    #: initial sparsity s_i, in [0, sparsity]
    initial_sparsity: float = 0.0
    #: first pruning step t0, in epochs (fractions allowed)
    start_epoch: float = 1.0
    #: epoch at which s_f is reached (t0 + n dt)
    end_epoch: float = 10.0
    #: dt: optimizer steps between mask updates
    frequency: int = 10
    scope: str = "global"

    def __post_init__(self) -> None:
        check_range("sparsity", self.sparsity, 0.0, 1.0)
        if not 0.0 <= self.initial_sparsity <= self.sparsity:
            raise ConfigError("method.initial_sparsity must be in [0, method.sparsity]")
        if not 0.0 <= self.start_epoch < self.end_epoch:
            raise ConfigError("GMP needs 0 <= method.start_epoch < method.end_epoch")
        check_range("frequency", self.frequency, 1)
        if self.scope not in SCOPES:
            raise ConfigError(f"method.scope must be one of {', '.join(SCOPES)}")


def cubic_sparsity(done: int, t0: int, dt: int, n: int, s_i: float, s_f: float) -> float | None:
    """The target after ``done`` completed steps if that is a pruning step (t0 + j dt,
    0 <= j <= n), else None."""
    if done < t0 or (done - t0) % dt or (done - t0) // dt > n:
        return None
    progress = (done - t0) / (n * dt) if n > 0 else 1.0
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


class GradualMagnitude(Callback):
    def __init__(self, cfg: GmpConfig, method: PruningMethod, masks: Masks) -> None:
        self.cfg = cfg
        self.method = method
        self.masks = masks
        self.t0 = self.dt = self.n = 0

    def on_level_start(self, model: nn.Module, steps_per_epoch: int, epochs: int) -> None:
        self.t0 = round(self.cfg.start_epoch * steps_per_epoch)
        end = round(self.cfg.end_epoch * steps_per_epoch)
        self.dt = self.cfg.frequency
        self.n = max(0, (end - self.t0) // self.dt)
        if end > steps_per_epoch * epochs:
            raise ConfigError(
                f"method.end_epoch={self.cfg.end_epoch} is past the last epoch ({epochs})"
            )
        if self.t0 == 0 and self.target(0):
            # the update after 0 steps: before training. On a resume this runs again, a no-op:
            # masks only shrink, and these masks are already at least this sparse.
            self._prune(model, self.target(0))

    def target(self, done: int) -> float | None:
        """The target after ``done`` completed optimizer steps, or None: no update then."""
        c = self.cfg
        return cubic_sparsity(done, self.t0, self.dt, self.n, c.initial_sparsity, c.sparsity)

    def on_step_end(self, step: int, model: nn.Module) -> None:
        # ``step`` is the 0-based index of the step just taken: step + 1 steps are complete
        target = self.target(step + 1)
        if target is not None:
            self._prune(model, target)

    def _prune(self, model: nn.Module, target: float) -> None:
        params = self.method.prunable(model)
        scores = weight_scores(build("magnitude"), model, params, None)  # data-free
        self.masks.update(
            select(params, scores, self.masks, self.cfg.scope, fraction_of_total(target))
        )
        self.masks.apply_(params)


@METHODS.register("gmp")
class GradualMagnitudePruning(PruningMethod):
    Config = GmpConfig
    cfg: GmpConfig

    def callbacks(self, level: int, masks: Masks, ctx: PruneContext) -> list[Callback]:
        return [GradualMagnitude(self.cfg, self, masks)] if level == 0 else []
