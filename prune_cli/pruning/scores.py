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

from prune_cli.pruning.flow import gradient, preserved
from prune_cli.registry import Registry
from prune_cli.seeds import derive_seed

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
    seed = derive_seed(ctx.seed, "random-score", ctx.level)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return {k: torch.rand(p.shape, generator=gen).to(p.device) for k, p in params.items()}


def mean_gradient(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    ctx: PruneContext,
    num_batches: int,
    mode: str = "eval",
) -> dict[str, Tensor]:
    """g: the gradient of the mean cross-entropy, averaged over ``num_batches`` training batches.

    ``mode="eval"`` uses BatchNorm's running statistics (the model as it is evaluated);
    ``mode="train"`` uses batch statistics. Mode and buffers are restored afterwards, so that
    scoring never changes the model; ``.grad`` of the parameters is left untouched.
    """
    with preserved(model, train=mode == "train"):
        return gradient(model, params, list(ctx.batches(num_batches)), 1.0, ctx)


def gradient_score(
    params: Mapping[str, nn.Parameter], grads: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """|theta * g|: first-order loss change from removing the weight (GP in Good et al. 2022)."""
    return {k: (p.detach() * grads[k]).abs() for k, p in params.items()}


def undecayed_score(
    params: Mapping[str, nn.Parameter], grads: Mapping[str, Tensor], eps: float
) -> dict[str, Tensor]:
    """|-theta * g + eps * theta^2| (Undecayed Pruning, Good et al. 2022).

    With weight decay eps, a stationary point of the decayed loss has g = -eps * theta, where
    the score becomes 2 eps theta^2: magnitude pruning. Away from it, the gradient term corrects.
    """
    return {k: (-p.detach() * grads[k] + eps * p.detach() ** 2).abs() for k, p in params.items()}
