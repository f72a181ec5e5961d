"""Optimizers and per-iteration learning-rate schedules."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from prune_cli.training.config import TrainConfig

log = logging.getLogger("prune_cli.training")


def build_optimizer(
    params: Iterable[nn.Parameter], cfg: TrainConfig, lr: float
) -> torch.optim.Optimizer:
    """SGD or Adam; on CUDA the fused implementation (one kernel launch for all parameters
    instead of several multi-tensor launches per step). On the CPU the default one, whose
    results the CPU figures and tests were pinned with."""
    params = list(params)
    fused = bool(params) and all(
        isinstance(p, torch.Tensor) and p.is_cuda and p.is_floating_point() for p in params
    )
    try:
        return _build(params, cfg, lr, {"fused": True} if fused else {})
    except (RuntimeError, ValueError, TypeError):  # a parameter the fused kernel refuses
        return _build(params, cfg, lr, {})


def _build(params: list, cfg: TrainConfig, lr: float, extra: dict) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            **extra,
        )
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay, **extra)


#: the capped warm-ups (warm-up epochs, epochs) this run has warned about: a run builds a
#: schedule for every level (and again on resuming), and one setting deserves one line, not one
#: per level; a retraining schedule with other epochs is a case of its own
_WARNED: set[tuple[float, int]] = set()


def new_run() -> None:
    """Forget the warnings given so far: called as a run is built, so that each run (a sweep's
    job run in this process too) says once what it caps."""
    _WARNED.clear()


def warmup_epochs(cfg: TrainConfig, epochs: int) -> float:
    """The warm-up, capped at half of the training (a warning, once per run and case).

    A warm-up as long as the training (``train.epochs=2`` with the default 2 warm-up epochs) would
    end the run at its peak learning rate without ever decaying: chance-level accuracy, silently.
    """
    if epochs > 0 and cfg.warmup_epochs > epochs / 2:
        case = (cfg.warmup_epochs, epochs)
        if case not in _WARNED:
            _WARNED.add(case)
            log.warning(
                "train.warmup_epochs=%s is more than half of %d epochs: warming up for %s",
                cfg.warmup_epochs,
                epochs,
                epochs / 2,
            )
        return epochs / 2
    return cfg.warmup_epochs


def lr_factor(cfg: TrainConfig, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """Multiplier of the base LR at optimizer step ``step`` (0-based), for ``LambdaLR``.

    Warm-up is linear over ``warmup_epochs``; cosine decays to 0 over the remaining steps;
    multistep multiplies by ``gamma`` at each milestone epoch; piecewise sets the learning rate to
    ``lr_values[i]`` from milestone i on (as a factor of ``cfg.lr``).
    """
    total = max(1, steps_per_epoch * epochs)
    warmup = round(warmup_epochs(cfg, epochs) * steps_per_epoch)
    milestones = sorted(round(m * steps_per_epoch) for m in cfg.milestones)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "multistep":
            return cfg.gamma ** sum(step >= m for m in milestones)
        if cfg.schedule == "piecewise":
            return cfg.lr_values[sum(step >= m for m in milestones)] / cfg.lr
        return 1.0

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch, epochs))
