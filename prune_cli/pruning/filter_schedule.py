"""When filter pruning acts during training: the callback of ``method=filter`` (and crossword).

``ChannelSchedule`` prunes on the schedules that fall inside a training run (``when``): ``init``
and ``soft`` before the first step, ``early`` after each of the first ``rounds`` epochs (the
fraction of the remaining filters that reaches ``sparsity`` after round n; with
``latency_target``, the round's latency ratio), ``soft`` afresh after every epoch (to F under a
latency target). After every optimizer step it multiplies the BatchNorm parameters and biases of
pruned channels by zero, so that the masked network keeps computing what the thinner one will:
the masks alone cover the weights, not what is coupled to their channels. The factors are
cached per version of the masks. The choice itself (ranking, floors, scope, latency budget) is
the method's ``prune_fraction`` / ``prune_round``; the callback decides only when.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prune_cli.callbacks import Callback
from prune_cli.errors import ConfigError
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import PruneContext

if TYPE_CHECKING:  # the method imports this module to build its callback
    from prune_cli.pruning.methods.filter_pruning import FilterPruning


class ChannelSchedule(Callback):
    """Prunes filters on the ``init`` / ``early`` schedule and keeps pruned channels at zero."""

    def __init__(self, method: FilterPruning, masks: Masks, ctx: PruneContext, level: int) -> None:
        self.method = method
        self.masks = masks
        self.ctx = ctx
        self.level = level
        self.init_done = False
        self.version = -1  # masks version the cached factors belong to
        self.factors: tuple[list[Tensor], list[Tensor]] | None = None

    def _prune(self, model: nn.Module, fraction: float) -> None:
        self.masks.update(self.method.prune_fraction(model, self.masks, self.ctx, fraction))

    def _prune_afresh(self, model: nn.Module) -> None:
        """Soft pruning: choose ``sparsity`` of all filters again, the pruned ones included."""
        fresh = Masks({k: torch.ones_like(m) for k, m in self.masks.items()})
        self.masks.update(
            self.method.prune_fraction(model, fresh, self.ctx, self.method.cfg.sparsity)
        )

    def on_level_start(self, model: nn.Module, steps_per_epoch: int, epochs: int) -> None:
        cfg = self.method.cfg
        if cfg.when == "early" and self.level == 0 and cfg.rounds > epochs:
            raise ConfigError(f"method.rounds={cfg.rounds} is more than train.epochs={epochs}")
        if cfg.when in ("init", "soft") and self.level == 0 and not self.init_done:
            self._prune(model, cfg.sparsity)
            self.init_done = True

    def on_step_end(self, step: int, model: nn.Module) -> None:
        if self.version != self.masks.version:  # the masks changed (or the run resumed)
            self.version = self.masks.version
            self.factors = None
            if self.masks.sparsity() > 0:  # (the graph is traced with autograd: no no_grad)
                groups = self.method.units(model, self.ctx)
                self.factors = groups.channel_factors(self.method.keep_from(self.masks, groups))
        if self.factors is not None and self.factors[0]:
            with torch.no_grad():  # BatchNorm and biases of pruned channels stay at zero
                torch._foreach_mul_(*self.factors)

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        cfg = self.method.cfg
        k = epoch + 1
        if cfg.when == "early" and self.level == 0 and k <= cfg.rounds:
            # p_k of the remaining filters, or the round's share of the latency budget
            self.masks.update(self.method.prune_round(model, self.masks, self.ctx, k))
        if cfg.when == "soft" and self.level == 0:
            self._prune_afresh(model)

    def state_dict(self) -> dict[str, Any]:
        return {"init_done": self.init_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.init_done = bool(state.get("init_done", False))
