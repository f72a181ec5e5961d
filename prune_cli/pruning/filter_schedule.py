"""When filter pruning acts during training: the callback of ``method=filter`` (and crossword).

``ChannelSchedule`` prunes on the schedules that fall inside a training run (``when``): ``init``
and ``soft`` before the first step, ``early`` after each of the first ``rounds`` epochs (the
fraction of the remaining filters that reaches ``sparsity`` after round n; with
``latency_target``, the round's latency ratio), ``soft`` afresh after every epoch (to F under a
latency target), and ``steps`` (HALP's schedule, Shen et al. 2022) during the fine-tuning level:
after every ``interval`` optimizer steps for ``rounds`` steps, each on the geometric path
(:func:`geometric_ratio`, :func:`geometric_fraction`). After every optimizer step it multiplies
the BatchNorm parameters and biases of pruned channels by zero, so that the masked network keeps
computing what the thinner one will: the masks alone cover the weights, not what is coupled to
their channels. The factors are cached per version of the masks. The choice itself (ranking,
floors, scope, latency budget) is the method's ``prune_fraction`` / ``prune_round`` /
``prune_step``; the callback decides only when.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prune_cli.callbacks import Callback
from prune_cli.errors import ConfigError
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import PruneContext

if TYPE_CHECKING:  # the method imports this module to build its callback
    from prune_cli.pruning.methods.filter_pruning import FilterPruning


log = logging.getLogger(__name__)

#: ``when: steps``'s optimizer steps between pruning steps where ``interval`` is null: HALP's
#: (its ResNet-50 ImageNet configuration: 30 steps, one every 40 iterations, from iteration 0)
HALP_INTERVAL = 40


def geometric_ratio(k: int, n: int, target: float) -> float:
    """The latency ratio (thin / dense) that step k = 1..n of ``when: steps`` aims at: F^(k/n),
    the geometric path from the dense latency to F that HALP's ``set_latency_prune_target``
    takes (it interpolates the logarithm of the latency, after Molchanov et al. 2019's
    exponential schedule). HALP's code passes its step count where that function's signature
    names the last step, so its path is this one only when pruning starts at iteration 0, as
    its configuration does (and as ``steps`` always does here)."""
    if not 1 <= k <= n:
        raise ValueError(f"step {k} is outside 1..{n}")
    return target ** (k / n)


def geometric_fraction(n: int, p: float) -> float:
    """The fraction of the remaining filters that each of the n steps of ``when: steps``
    prunes without a latency target: 1 - (1 - p)^(1/n), so that (1 - p)^(k/n) of the filters
    are kept after step k (the geometric path of :func:`geometric_ratio`, in filters) and p
    are gone after step n."""
    return 1.0 - (1.0 - p) ** (1.0 / n)


def step_round(done: int, interval: int, rounds: int) -> int | None:
    """The pruning step (1..rounds) that falls after ``done`` completed optimizer steps of the
    fine-tuning level, or None: steps ``interval``, 2 ``interval``, ... (HALP prunes after
    iteration i when (i + 1) is a multiple of its interval, i 0-based: the same steps)."""
    if done <= 0 or done % interval:
        return None
    k = done // interval
    return k if k <= rounds else None


class ChannelSchedule(Callback):
    """Prunes filters on the ``init`` / ``early`` / ``soft`` / ``steps`` schedules and keeps
    pruned channels at zero."""

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
        if (
            cfg.when == "steps"
            and self.level == 1
            and cfg.rounds * cfg.step_interval > (steps_per_epoch * epochs)
        ):
            raise ConfigError(
                f"method.rounds={cfg.rounds} pruning steps every method.interval="
                f"{cfg.step_interval} optimizer steps need {cfg.rounds * cfg.step_interval} "
                f"steps; the fine-tuning has {steps_per_epoch * epochs} ({epochs} x "
                f"{steps_per_epoch} steps per epoch): lower method.rounds or method.interval, "
                "or raise train.retrain.epochs"
            )
        if cfg.when in ("init", "soft") and self.level == 0 and not self.init_done:
            self._prune(model, cfg.sparsity)
            self.init_done = True

    def on_step_end(self, step: int, model: nn.Module) -> None:
        cfg = self.method.cfg
        if cfg.when == "steps" and self.level == 1:  # before the factors: they follow the masks
            k = step_round(step + 1, cfg.step_interval, cfg.rounds)
            if k is not None:
                self.masks.update(self.method.prune_step(model, self.masks, self.ctx, k))
                groups = self.method.units(model, self.ctx)
                kept = sum(int(m.sum()) for m in self.method.keep_from(self.masks, groups).values())
                total = sum(u.channels for u in groups.units)
                log.info(
                    "pruning step %d/%d after optimizer step %d: %d of %d filters kept",
                    *(k, cfg.rounds, step + 1, kept, total),
                )
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
