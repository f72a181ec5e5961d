"""Unstructured pruning by a registered importance measure (``prune_cli.pruning.measures``),
per weight.

With ``train.epochs=0`` (no dense training) this is pruning at initialisation: ``measure:
loss_preservation`` is SNIP (Lee et al. 2019), ``measure: grasp`` is GraSP (Wang et al. 2020,
logits / 200, class-balanced sample) and ``measure: synflow`` is SynFlow (Tanaka et al. 2020:
data-free, 100 scoring rounds with the exponential schedule); then level 1 trains the pruned
network from the initialisation. After dense training it is one-shot pruning followed by
fine-tuning.

A measure that prunes in rounds (SynFlow) reaches the level's target t from the previous level's
t0 through the densities (1 - t0) ((1 - t) / (1 - t0))^(k / n), k = 1..n, rescoring the network
pruned by the previous rounds each time: from a dense network round k keeps (1 - t)^(k / n),
the authors' exponential schedule. ``rounds`` overrides the measure's own count (1 = one shot).

How many weights a round masks (``count``, in rounds only): null / ``round`` (prune-run's) masks
round((1 - density) n) of each scope group in all; ``floor`` masks int((1 - density) n), the
Synaptic-Flow authors' rule (their ``k = int((1 - sparsity) * numel)``). At 1% density the
per-layer counts of the two differ by up to 8 weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.pruning.derivatives import Sample
from prune_cli.pruning.level import LevelConfig, LevelPruning
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.measures import MeasureSettings, check
from prune_cli.pruning.method import METHODS, PruneContext
from prune_cli.pruning.scope import CountRule, Groups, fraction_of_total, select

COUNTS = ("round", "floor")


@dataclass
class FlowConfig(MeasureSettings, LevelConfig):
    """The settings of ``method=flow``; the scoring settings (``samples``,
    ``score_temperature``, ``grasp_temperature``, ``samples_per_class``) come from
    ``MeasureSettings``."""

    name: str = "flow"
    measure: str = "loss_preservation"
    #: scoring rounds per pruning step; null: the measure's own (SynFlow 100, the others 1)
    rounds: int | None = None
    #: weights masked per round: null / ``round``: round((1 - density) n); ``floor``: int(...),
    #: the Synaptic-Flow authors' count
    count: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.measure, "weight")
        if self.samples < 1 or (self.samples_per_class or 1) < 1:
            raise ConfigError("method.samples and method.samples_per_class must be >= 1")
        if self.rounds is not None and self.rounds < 1:
            raise ConfigError(f"method.rounds must be >= 1, got {self.rounds}")
        if self.count not in (None, *COUNTS):
            raise ConfigError(f"method.count must be round or floor, got {self.count!r}")


def floor_of_total(target: float) -> CountRule:
    """Prune so that each group ends with int(target * size) entries masked in all (the
    Synaptic-Flow authors' count; :func:`fraction_of_total` rounds)."""

    def rule(groups: Groups) -> Tensor:
        want = torch.floor(groups.size.to(torch.float64) * target).to(torch.long)
        already = groups.size - groups.mask.sum(dim=1)
        return (want.to(already.device) - already).clamp(min=0)

    return rule


@METHODS.register("flow")
class FlowPruning(LevelPruning):
    Config = FlowConfig
    cfg: FlowConfig

    def shares_dense(self) -> bool:
        # level 0 is the plain dense training; a late rewind saves a level-0 epoch of its own
        return self.rewind().kind != "epoch"

    @property
    def score(self) -> str:  # type: ignore[override]
        return self.cfg.measure

    def sample(self) -> Sample:
        return self.cfg.scoring_sample()

    def rounds(self, ctx: PruneContext) -> int:
        return self.cfg.rounds or type(self.measure(ctx)).rounds

    def prune(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> Mapping[str, Tensor]:
        n = self.rounds(ctx)
        if n == 1:
            return super().prune(model, masks, ctx)
        params = self.prunable(model)
        current = Masks(dict(masks))
        before, after = 1.0 - self.target(ctx.level - 1), 1.0 - self.target(ctx.level)
        for k in range(1, n + 1):
            current.apply_(params)  # score the network the previous rounds pruned
            density = before * (after / before) ** (k / n)
            scores = self.scores(model, params, ctx)
            counted = floor_of_total if self.cfg.count == "floor" else fraction_of_total
            current.update(select(params, scores, current, self.cfg.scope, counted(1.0 - density)))
        return dict(current)
