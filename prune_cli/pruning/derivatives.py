"""The derivative machinery of the importance measures, in one place.

A measure (``prune_cli.pruning.measures``) declares what it needs; ``compute`` computes exactly
that, once, for a set of prunable tensors:

============  =================================================================================
need          what is computed
============  =================================================================================
weights       nothing: theta itself
grad          g: the mean gradient of the (temperature-scaled) cross-entropy over a ``Sample``
grad_sq       g2: the mean over the sample's batches of the squared batch gradient, each batch
              weighted by its size (Fisher, as Lubana and Dick's ``cal_grad_fisher``; not g^2)
hessian_grad  g and H g by double back-propagation: H g = d/dtheta (g . stop_gradient(g)),
              one batch at a time: H g = mean over batches b of d/dtheta (g_b . stop(g))
synflow       dR/dtheta of R = 1^T f(1; |theta|): the all-ones input through the network with
              every parameter and buffer replaced by its absolute value, in eval mode and in
              float64 (Tanaka et al. 2020; data-free: only the input's shape is read)
activations   the mean |output| of each channel of the modules whose weights are scored
bn            nothing here: the BatchNorm scales are read off the model by the filter method
============  =================================================================================

Scoring never changes the model: its mode and every buffer (BatchNorm running statistics) are
restored, and ``.grad`` of the parameters is left untouched (``torch.autograd.grad``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prune_cli.pruning.method import Batch, PruneContext

NEEDS = ("weights", "grad", "grad_sq", "hessian_grad", "synflow", "activations", "bn")


@dataclass(frozen=True)
class Sample:
    """The training data derivatives are computed on, and how.

    ``batches`` (the first n training batches: Good et al.'s GP and UP), ``samples`` (batches
    holding at least this many examples: the gradient-flow measures), or a class-balanced sample
    (GraSP): one batch per class of ``per_class`` examples each, where ``balanced`` with a null
    ``per_class`` means ``samples`` // classes of each (Lubana and Dick's ``grasp_data``, whose
    ``n_samples`` is ``imp_samples / num_classes``).
    """

    batches: int | None = None
    samples: int | None = None
    per_class: int | None = None
    balanced: bool = False
    #: the scoring loss is cross-entropy of logits / temperature
    temperature: float = 1.0
    #: ``eval``: BatchNorm's running statistics; ``train``: batch statistics
    mode: str = "eval"

    def draw(self, ctx: PruneContext) -> list[Batch]:
        if self.per_class is not None or self.balanced:
            return class_balanced_batches(ctx, self.examples_per_class(ctx.num_classes))
        if self.samples is not None:
            return scoring_batches(ctx, self.samples)
        return list(ctx.batches(self.batches or 1))

    def examples_per_class(self, num_classes: int) -> int:
        """A class-balanced sample's examples of each class."""
        if self.per_class is not None:
            return self.per_class
        return max(1, (self.samples or 2560) // num_classes)


@dataclass
class Derivatives:
    """What ``compute`` found, by parameter name (None where not needed)."""

    g: dict[str, Tensor] | None = None
    #: mean of the squared batch gradients (Fisher)
    g2: dict[str, Tensor] | None = None
    hg: dict[str, Tensor] | None = None
    synflow: dict[str, Tensor] | None = None
    #: (out,) mean |output| per channel of the module owning the weight
    activations: dict[str, Tensor] | None = None


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


def class_balanced_batches(ctx: PruneContext, per_class: int) -> list[Batch]:
    """One batch per class, each of ``per_class`` examples of that class (GraSP's sample, as
    Lubana and Dick's ``grasp_data``), in class order; a class the training data holds fewer
    examples of has a smaller batch, a class it lacks has none. One batch per class keeps the
    memory of double back-propagation to one class at a time, and the mean over the batches
    weights every class alike."""
    xs: list[list[Tensor]] = [[] for _ in range(ctx.num_classes)]
    for x, y in ctx.batches(10**9):
        for i, c in enumerate(y.tolist()):  # one transfer per batch, not one sync per example
            if len(xs[c]) < per_class:
                xs[c].append(x[i])
        if all(len(found) >= per_class for found in xs):
            break
    return [
        (torch.stack(found), torch.full((len(found),), c, dtype=torch.long, device=found[0].device))
        for c, found in enumerate(xs)
        if found
    ]


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
    total: list[Tensor] | None = None
    seen = 0
    for batch in batches:
        grads = torch.autograd.grad(
            _loss(model, batch, temperature, ctx), [params[k] for k in names]
        )
        n = len(batch[1])
        squares = [g.pow(2) * n for g in grads]
        total = squares if total is None else [t + q for t, q in zip(total, squares, strict=True)]
        seen += n
    assert total is not None, "no batches to compute the gradient on"
    return {k: t / seen for k, t in zip(names, total, strict=True)}


def hessian_gradient(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batches: list[Batch],
    temperature: float,
    ctx: PruneContext,
) -> tuple[dict, dict]:
    """(g, H g) by double back-propagation, H g = d/dtheta (g . stop_gradient(g)) with g the
    mean over ``batches`` of the batch gradients g_b. Since g is linear in the g_b, H g is the
    mean over batches of d/dtheta (g_b . stop(g)): computed one batch at a time (as Lubana and
    Dick's ``cal_hg``), so only one batch's graph is held, after a first pass for g."""
    g = gradient(model, params, batches, temperature, ctx)
    names = list(params)
    total: list[Tensor] | None = None
    for batch in batches:
        gb = torch.autograd.grad(
            _loss(model, batch, temperature, ctx),
            [params[k] for k in names],
            create_graph=True,
        )
        dot = sum((a * g[k]).sum() for a, k in zip(gb, names, strict=True))
        hg = torch.autograd.grad(dot, [params[k] for k in names])
        total = list(hg) if total is None else [t + h for t, h in zip(total, hg, strict=True)]
    assert total is not None, "no batches to compute the gradient on"
    return g, {k: t / len(batches) for k, t in zip(names, total, strict=True)}


def synflow_gradient(
    model: nn.Module, params: Mapping[str, Tensor], input_shape: torch.Size
) -> dict[str, Tensor]:
    """dR/dtheta for R = sum of the outputs of the all-ones input through |theta| (SynFlow).

    A float64 copy of the model in eval mode, every floating parameter and buffer replaced by its
    absolute value (the authors linearise in place and restore the signs; a copy leaves the model
    as it was). float64 because R is a product over the depth: 100 rounds on a deep network
    overflow float32.
    """
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    own = dict(net.named_parameters())
    names = list(params)
    device = next(iter(params.values())).device
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    grads = torch.autograd.grad(net(ones).sum(), [own[k] for k in names])
    return {k: g.to(params[k].dtype) for k, g in zip(names, grads, strict=True)}


def channel_activations(
    model: nn.Module, params: Mapping[str, Tensor], batches: list[Batch]
) -> dict[str, Tensor]:
    """Mean |output| of every output channel of the modules owning ``params`` (conv: over batch
    and positions; linear: over the batch), by weight name."""
    modules = dict(model.named_modules())
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: object, output: Tensor) -> None:
            a = output.detach().abs().transpose(0, 1).reshape(output.shape[1], -1)  # (out, rest)
            sums[name] = sums.get(name, 0) + a.sum(dim=1)
            counts[name] = counts.get(name, 0) + a.shape[1]

        return record

    handles = [
        modules[k.rsplit(".", 1)[0]].register_forward_hook(hook(k))
        for k in params
        if k.endswith(".weight")
    ]
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {k: sums[k] / counts[k] for k in sums}


def compute(
    needs: frozenset[str],
    model: nn.Module,
    params: Mapping[str, Tensor],
    ctx: PruneContext | None,
    sample: Sample,
) -> Derivatives:
    """The derivatives ``needs`` asks for, on ``sample``; the model is left as it was."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)}; valid: {', '.join(NEEDS)}")
    out = Derivatives()
    if needs - {"weights", "bn"}:
        assert ctx is not None, f"needs {sorted(needs)} read training data from the context"
    if needs & {"grad", "grad_sq", "hessian_grad", "activations"}:
        batches = sample.draw(ctx)
        with preserved(model, train=sample.mode == "train"):
            if "hessian_grad" in needs:
                out.g, out.hg = hessian_gradient(model, params, batches, sample.temperature, ctx)
            elif "grad" in needs:
                out.g = gradient(model, params, batches, sample.temperature, ctx)
            if "grad_sq" in needs:
                out.g2 = squared_gradient(model, params, batches, sample.temperature, ctx)
            if "activations" in needs:
                out.activations = channel_activations(model, params, batches)
    if "synflow" in needs:
        x, _ = next(iter(ctx.batches(1)))
        out.synflow = synflow_gradient(model, params, x.shape[1:])
    return out
