"""Gradient-flow importance measures (Lubana and Dick, "A Gradient Flow Framework For Analyzing
Network Pruning", ICLR 2021; METHODS.md section 6), per weight and per filter.

With g the mean gradient of the (temperature-scaled) cross-entropy over a number of training
samples and H g the Hessian-gradient product by double back-propagation:

=========================  =======================  =========================================
measure                    per weight               per filter f (row of W.view(out, -1))
=========================  =======================  =========================================
magnitude                  |theta|                  ||W_f||_2
loss_preservation          |theta g|                sum |theta g|         (SNIP on filters)
biased_loss_preservation   |theta^2 g|              sum |theta^2 g|
grasp                      theta Hg                 sum theta Hg          (GraSP, T = 200)
gradient_norm              |theta Hg|               |sum theta Hg|
taylor                     |theta g|                |sum theta g|         (Taylor first order)
fisher                     theta^2 g^2              sum theta^2 g^2
bn_gamma                   -                        |gamma| of the filter's BatchNorm
=========================  =======================  =========================================

Lowest scores are pruned first. GraSP's g and Hg use its own temperature (logits / 200) and a
class-balanced sample (``samples_per_class`` examples of each class), as GraSP prescribes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Protocol

import torch
from torch import Tensor, nn

from prune_cli.pruning.method import Batch, PruneContext

MEASURES = (
    "magnitude",
    "loss_preservation",
    "biased_loss_preservation",
    "grasp",
    "gradient_norm",
    "taylor",
    "fisher",
    "bn_gamma",
)
NEEDS_GRAD = {"loss_preservation", "biased_loss_preservation", "taylor", "fisher"}
NEEDS_HG = {"grasp", "gradient_norm"}


@contextlib.contextmanager
def preserved(model: nn.Module, train: bool = False) -> Iterator[None]:
    """Score in eval (or train) mode, then restore the mode and every buffer (BatchNorm running
    statistics), so that scoring never changes the model."""
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    was_training = model.training
    model.train(train)
    try:
        yield
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        model.train(was_training)


def scoring_batches(ctx: PruneContext, samples: int) -> list[Batch]:
    """Training batches holding at least ``samples`` examples."""
    batches, seen = [], 0
    for x, y in ctx.batches(10**9):
        batches.append((x, y))
        seen += len(y)
        if seen >= samples:
            break
    return batches


def class_balanced_batch(ctx: PruneContext, per_class: int) -> list[Batch]:
    """One batch with ``per_class`` examples of every class (GraSP's sample), or as close as
    the training data allows."""
    xs, ys, counts = [], [], [0] * ctx.num_classes
    for x, y in ctx.batches(10**9):
        for i, c in enumerate(y.tolist()):  # one transfer per batch, not one sync per example
            if counts[c] < per_class:
                counts[c] += 1
                xs.append(x[i])
                ys.append(y[i])
        if min(counts) >= per_class:
            break
    return [(torch.stack(xs), torch.stack(ys))]


def _loss(model: nn.Module, batch: Batch, temperature: float, ctx: PruneContext) -> Tensor:
    x, y = batch
    return ctx.loss_fn(model(x) / temperature, y)


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
    total: list[Tensor] | None = None
    for batch in batches:
        grads = torch.autograd.grad(
            _loss(model, batch, temperature, ctx),
            [params[k] for k in names],
            create_graph=create_graph,
        )
        total = list(grads) if total is None else [t + g for t, g in zip(total, grads, strict=True)]
    assert total is not None, "no batches to compute the gradient on"
    return {k: t / len(batches) for k, t in zip(names, total, strict=True)}


def hessian_gradient(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batches: list[Batch],
    temperature: float,
    ctx: PruneContext,
) -> tuple[dict, dict]:
    """(g, H g) by double back-propagation: H g = d/dtheta (g . stop_gradient(g))."""
    g = gradient(model, params, batches, temperature, ctx, create_graph=True)
    names = list(params)
    dot = sum((g[k] * g[k].detach()).sum() for k in names)
    hg = torch.autograd.grad(dot, [params[k] for k in names])
    return {k: v.detach() for k, v in g.items()}, dict(zip(names, hg, strict=True))


def weight_measure(measure: str, theta: Tensor, g: Tensor | None, hg: Tensor | None) -> Tensor:
    """The per-weight quantity a measure sums per filter (before the filter's reduction)."""
    theta = theta.detach()
    if measure == "magnitude":
        return theta**2  # the filter score is the root of its sum: ||W_f||_2
    if measure in ("loss_preservation", "taylor"):
        return theta * g if measure == "taylor" else (theta * g).abs()
    if measure == "biased_loss_preservation":
        return (theta**2 * g).abs()
    if measure in ("grasp", "gradient_norm"):
        return theta * hg
    if measure == "fisher":
        return theta**2 * g**2
    raise ValueError(f"unknown measure {measure!r}; valid: {', '.join(MEASURES)}")


def filter_score(measure: str, theta: Tensor, g: Tensor | None, hg: Tensor | None) -> Tensor:
    """Score of each output filter (row of theta.view(out, -1))."""
    rows = weight_measure(measure, theta, g, hg).reshape(theta.shape[0], -1).sum(dim=1)
    if measure == "magnitude":
        return rows.sqrt()
    if measure in ("taylor", "gradient_norm"):
        return rows.abs()
    return rows


def unstructured_score(measure: str, theta: Tensor, g: Tensor | None, hg: Tensor | None) -> Tensor:
    """Score of each weight: the same measures without the filter reduction."""
    value = weight_measure(measure, theta, g, hg)
    if measure == "magnitude":
        return value.sqrt()
    if measure in ("taylor", "gradient_norm"):
        return value.abs()
    return value


def derivatives(
    measure: str,
    model: nn.Module,
    params: Mapping[str, Tensor],
    ctx: PruneContext,
    samples: int,
    temperature: float,
    grasp_temperature: float,
    per_class: int,
) -> tuple[dict | None, dict | None]:
    """(g, Hg) as the measure needs them (None when it does not). The model's mode and
    BatchNorm buffers are left as they were."""
    if measure not in NEEDS_GRAD | NEEDS_HG:
        return None, None
    with preserved(model):
        if measure in NEEDS_HG:
            batches = (
                class_balanced_batch(ctx, per_class)
                if measure == "grasp"
                else scoring_batches(ctx, samples)
            )
            temp = grasp_temperature if measure == "grasp" else temperature
            return hessian_gradient(model, params, batches, temp, ctx)
        return gradient(model, params, scoring_batches(ctx, samples), temperature, ctx), None


class MeasureSettings(Protocol):
    """The settings a method that scores by a measure carries (``filter`` and ``flow``)."""

    measure: str
    samples: int
    score_temperature: float
    grasp_temperature: float
    samples_per_class: int


def derivatives_for(
    cfg: MeasureSettings, model: nn.Module, params: Mapping[str, Tensor], ctx: PruneContext
) -> tuple[dict | None, dict | None]:
    """``derivatives`` with a method's measure settings."""
    return derivatives(
        cfg.measure,
        model,
        params,
        ctx,
        cfg.samples,
        cfg.score_temperature,
        cfg.grasp_temperature,
        cfg.samples_per_class,
    )


def early_round_fraction(k: int, n: int, p: float) -> float:
    """p_k = p / (k p + n (1 - p)): the fraction of the remaining pruned in round k = 1..n, so
    that after n rounds the pruned fraction is p (the product of (1 - p_k) telescopes to 1 - p)."""
    if not 1 <= k <= n:
        raise ValueError(f"round {k} is outside 1..{n}")
    denominator = k * p + n * (1 - p)
    return 0.0 if math.isclose(denominator, 0.0) else p / denominator
