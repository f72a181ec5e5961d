"""The gradient statistics of the scoring loss (cross-entropy of logits / temperature):

=============  ======  ============================================================================
need           fields  what is computed
=============  ======  ============================================================================
grad           g       the mean over the sample's batches of the batch gradient
grad_sq        g2      the mean over the batches of the squared batch gradient, each batch weighted
                       by its size (Fisher, as Lubana and Dick's ``cal_grad_fisher``; not g^2)
hessian_grad   g, hg   g and H g by double back-propagation: H g = d/dtheta (g . stop_gradient(g)),
                       one batch at a time: H g = mean over batches b of d/dtheta (g_b . stop(g))
=============  ======  ============================================================================
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from prune_cli.pruning.derivatives import Request, Tables, batch_mean, provider, scoring_loss
from prune_cli.pruning.method import Batch, PruneContext


def gradient(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batches: list[Batch],
    temperature: float,
    ctx: PruneContext,
    create_graph: bool = False,
) -> dict[str, Tensor]:
    """g: the mean over ``batches`` of the gradient of the batch-mean loss."""
    names = list(params)

    def batch_gradient(batch: Batch) -> tuple[Tensor, ...]:
        return torch.autograd.grad(
            scoring_loss(model, batch, temperature, ctx),
            [params[k] for k in names],
            create_graph=create_graph,
        )

    return dict(zip(names, batch_mean(batches, batch_gradient), strict=True))


def squared_gradient(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batches: list[Batch],
    temperature: float,
    ctx: PruneContext,
) -> dict[str, Tensor]:
    """g2: sum over ``batches`` of n_b g_b^2 / sum n_b, g_b the gradient of batch b's mean loss
    (the empirical Fisher of Lubana and Dick's ``cal_grad_fisher``). Not (mean g)^2: gradients
    that disagree across batches cancel in the mean but not in the mean of squares."""
    names = list(params)

    def squares(batch: Batch) -> list[Tensor]:
        grads = torch.autograd.grad(
            scoring_loss(model, batch, temperature, ctx), [params[k] for k in names]
        )
        return [g.pow(2) for g in grads]

    return dict(zip(names, batch_mean(batches, squares, by_size=True), strict=True))


def hessian_gradient(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batches: list[Batch],
    temperature: float,
    ctx: PruneContext,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(g, H g) by double back-propagation, H g = d/dtheta (g . stop_gradient(g)) with g the
    mean over ``batches`` of the batch gradients g_b. Since g is linear in the g_b, H g is the
    mean over batches of d/dtheta (g_b . stop(g)): computed one batch at a time (as Lubana and
    Dick's ``cal_hg``), so only one batch's graph is held, after a first pass for g."""
    g = gradient(model, params, batches, temperature, ctx)
    names = list(params)

    def batch_hg(batch: Batch) -> tuple[Tensor, ...]:
        gb = torch.autograd.grad(
            scoring_loss(model, batch, temperature, ctx),
            [params[k] for k in names],
            create_graph=True,
        )
        dot = sum((a * g[k]).sum() for a, k in zip(gb, names, strict=True))
        return torch.autograd.grad(dot, [params[k] for k in names])

    return g, dict(zip(names, batch_mean(batches, batch_hg), strict=True))


@provider("grad", "g")
def _grad(r: Request) -> Tables:
    return {"g": gradient(r.model, r.params, r.batches, r.sample.temperature, r.context)}


@provider("grad_sq", "g2")
def _grad_sq(r: Request) -> Tables:
    return {"g2": squared_gradient(r.model, r.params, r.batches, r.sample.temperature, r.context)}


@provider("hessian_grad", "g", "hg")
def _hessian_grad(r: Request) -> Tables:
    g, hg = hessian_gradient(r.model, r.params, r.batches, r.sample.temperature, r.context)
    return {"g": g, "hg": hg}
