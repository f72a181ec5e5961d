"""Importance scores: higher = more important, the lowest are pruned first.

A score maps the prunable parameters to one tensor of the same shape per parameter. Scores that
need data get it from the ``PruneContext`` (an iterable of training batches), never from a
dataset module. New scores register here with ``@SCORES.register(name)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from prune_cli.registry import Registry

if TYPE_CHECKING:
    from prune_cli.pruning.method import PruneContext

ScoreFn = Callable[[nn.Module, Mapping[str, nn.Parameter], "PruneContext"], dict[str, Tensor]]
SCORES: Registry[ScoreFn] = Registry("score")


@SCORES.register("magnitude")
def magnitude_score(
    model: nn.Module, params: Mapping[str, nn.Parameter], ctx: PruneContext
) -> dict[str, Tensor]:
    """|theta|: the classic magnitude criterion (Han et al. 2015; the lottery ticket's)."""
    return {k: p.detach().abs() for k, p in params.items()}


@SCORES.register("random")
def random_score(
    model: nn.Module, params: Mapping[str, nn.Parameter], ctx: PruneContext
) -> dict[str, Tensor]:
    """Uniform random scores, seeded by (run seed, level) so that a resumed run agrees."""
    gen = torch.Generator(device="cpu").manual_seed(ctx.seed * 1_000_003 + ctx.level)
    return {k: torch.rand(p.shape, generator=gen).to(p.device) for k, p in params.items()}
