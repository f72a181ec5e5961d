"""The gradient statistics of the scoring loss (cross-entropy of logits / temperature):

================  ======  =========================================================================
need              fields  what is computed
================  ======  =========================================================================
grad              g       the mean over the sample's batches of the batch gradient
grad_sq           g2      the mean over the batches of the squared batch gradient, each batch
                          weighted by its size (Fisher, as Lubana and Dick's ``cal_grad_fisher``;
                          not g^2)
hessian_grad      g, hg   g and H g by double back-propagation: H g = d/dtheta (g . stop(g)), one
                          batch at a time: H g = mean over batches b of d/dtheta (g_b . stop(g));
                          H and g over the scored tensors only (Wang et al.'s GraSP, as SynFlow's
                          code computes it for unstructured pruning)
hessian_grad_all  g, hg   the same with H and g over *every* trainable parameter of the model
                          (BatchNorm, biases, the classifier, layers left unpruned), read off at
                          the scored tensors: Lubana and Dick's ``cal_hg``, the H g of their GraSP
                          and gradient-norm filter scores
================  ======  =========================================================================

The two H g differ: (H g)_i = sum_j H_ij g_j, the sum over the scored tensors or over all
parameters; g itself is the same for a scored tensor either way.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from prune_cli.pruning.derivatives import Request, Tables, batch_mean, provider, scoring_loss
from prune_cli.pruning.method import Batch, PruneContext


def derivative(
    output: Tensor, inputs: list[Tensor], create_graph: bool = False, unused_zero: bool = False
) -> tuple[Tensor, ...]:
    """d output / d inputs; ``unused_zero``: an input the output does not depend on (a parameter
    of a layer the loss never reaches) has derivative zero instead of being an error."""
    grads = torch.autograd.grad(output, inputs, create_graph=create_graph, allow_unused=unused_zero)
    return tuple(
        torch.zeros_like(t) if d is None else d for d, t in zip(grads, inputs, strict=True)
    )


def gradient(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batches: list[Batch],
    temperature: float,
    ctx: PruneContext,
    create_graph: bool = False,
    unused_zero: bool = False,
) -> dict[str, Tensor]:
    """g: the mean over ``batches`` of the gradient of the batch-mean loss."""
    names = list(params)

    def batch_gradient(batch: Batch) -> tuple[Tensor, ...]:
        return derivative(
            scoring_loss(model, batch, temperature, ctx),
            [params[k] for k in names],
            create_graph=create_graph,
            unused_zero=unused_zero,
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
    over_all: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(g, H g) by double back-propagation, H g = d/dtheta (g . stop_gradient(g)) with g the
    mean over ``batches`` of the batch gradients g_b. Since g is linear in the g_b, H g is the
    mean over batches of d/dtheta (g_b . stop(g)): computed one batch at a time (as Lubana and
    Dick's ``cal_hg``), so only one batch's graph is held, after a first pass for g.

    ``over_all``: H and g over every trainable parameter of ``model`` (and the scored tensors),
    the tables still keyed by the scored names only; a parameter the loss does not reach then
    counts with g = 0 rather than failing the scoring."""
    scored = dict(params)
    if over_all:
        params = with_all_parameters(model, params)
    g = gradient(model, params, batches, temperature, ctx, unused_zero=over_all)
    names = list(params)
    tensors = [params[k] for k in names]

    def batch_hg(batch: Batch) -> tuple[Tensor, ...]:
        loss = scoring_loss(model, batch, temperature, ctx)
        gb = derivative(loss, tensors, create_graph=True, unused_zero=over_all)
        dot = sum((a * g[k]).sum() for a, k in zip(gb, names, strict=True))
        # a parameter entering the loss linearly has a gradient that is constant in it: allowed
        return derivative(dot, tensors, unused_zero=True)

    hg = dict(zip(names, batch_mean(batches, batch_hg), strict=True))
    return {k: g[k] for k in scored}, {k: hg[k] for k in scored}


def with_all_parameters(model: nn.Module, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``params`` and every other trainable parameter of ``model`` (under its own name; a
    tensor that ``params`` already holds, by identity, is not added twice)."""
    full = dict(params)
    held = {id(t) for t in params.values()}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in held:
            # a prefix no parameter name has: an unscored tensor never takes a scored key
            full[f"(unscored) {name}"] = p
            held.add(id(p))
    return full


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


@provider("hessian_grad_all", "g", "hg")
def _hessian_grad_all(r: Request) -> Tables:
    g, hg = hessian_gradient(
        r.model, r.params, r.batches, r.sample.temperature, r.context, over_all=True
    )
    return {"g": g, "hg": hg}
