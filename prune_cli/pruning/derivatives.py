"""The statistics the importance measures read, computed once per scoring for what they need.

A measure (``prune_cli.pruning.measures``) declares what it ``needs``: names in ``NEEDS``, the
registry of *providers*. A provider is a function registered under its need's name with
``@provider(name, *fields)`` in a module of ``prune_cli.pruning.providers`` (all of them are
imported with this module): it gets a ``Request`` (the model, the scored tensors, the context,
the sample and its drawn batches) and returns one table per field, ``{field: {param: tensor}}``;
a measure reads ``site.<field>``. So a new statistic is one new module there, and
``compute`` / ``Site`` / config validation know it by its registration alone.

``compute(needs, ...)`` draws the scoring sample once for every provider that reads it, runs
those with the model in the sample's mode (then restores the mode and every buffer, BatchNorm
running statistics included), and the others after them; a need whose fields another need asked
for also computes is not computed twice (``hessian_grad`` gives the ``g`` of ``grad``). ``.grad``
of the parameters is never touched (providers use ``torch.autograd.grad``). The needs that exist
are ``NEEDS.names()``; each provider's docstring says what it computes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from prune_cli.pruning.method import Batch, PruneContext
from prune_cli.registry import Registry, import_submodules


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


@contextlib.contextmanager
def preserved(model: nn.Module, train: bool = False) -> Iterator[None]:
    """Score in eval (or train) mode, then restore every module's mode and every buffer
    (BatchNorm running statistics), so that scoring never changes the model.

    Train mode means batch statistics; dropout stays off even then: its masks would draw from
    the global random state, which a resumed run has seeded anew, so the scores (and the
    pruning) of a resumed run would differ from an uninterrupted one's."""
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    modes = [(m, m.training) for m in model.modules()]
    model.train(train)
    if train:
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        for m, training in modes:
            m.training = training


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


def batch_mean(
    batches: Sequence[Batch],
    terms: Callable[[Batch], Sequence[Tensor]],
    by_size: bool = False,
) -> list[Tensor]:
    """The mean over ``batches`` of ``terms(batch)`` (a list of tensors per batch), each batch
    counting once, or with ``by_size`` as many times as it has examples (sum n_b t_b / sum n_b).

    The running sum keeps one list of tensors whatever the number of batches, so only one
    batch's graph is alive at a time."""
    total: list[Tensor] | None = None
    weight = 0
    for batch in batches:
        n = len(batch[1]) if by_size else 1
        parts = [t * n for t in terms(batch)] if by_size else list(terms(batch))
        total = parts if total is None else [t + p for t, p in zip(total, parts, strict=True)]
        weight += n
    assert total is not None, "no batches to compute the statistic on"
    return [t / weight for t in total]


def scoring_loss(model: nn.Module, batch: Batch, temperature: float, ctx: PruneContext) -> Tensor:
    """The scoring loss of one batch: the run's loss of logits / ``temperature``."""
    x, y = batch
    return ctx.loss_fn(model(x) / temperature, y)


# --- the providers' registry ----------------------------------------------------------------
#: one table per field: ``{field: {parameter name: tensor}}``
Tables = Mapping[str, dict[str, Tensor]]


@dataclass(frozen=True)
class Request:
    """What a provider computes from."""

    model: nn.Module
    #: the scored tensors by parameter name (the provider's tables are keyed by these)
    params: Mapping[str, Tensor]
    ctx: PruneContext | None
    sample: Sample
    #: the drawn scoring sample; empty for a provider that does not read it
    batches: list[Batch] = field(default_factory=list)

    @property
    def context(self) -> PruneContext:
        """The pruning context, which a provider registered with ``context=True`` always has."""
        assert self.ctx is not None, "this statistic reads training data from the context"
        return self.ctx


ProviderFn = Callable[[Request], Tables]


@dataclass(frozen=True)
class Provider:
    """How one need is computed: the ``Site`` fields it fills, and from what."""

    name: str
    fields: tuple[str, ...]
    #: None: nothing to compute (read off the model or the weights by the measure itself)
    fn: ProviderFn | None
    #: reads the scoring sample (drawn once for every such need, the model in its mode)
    sample: bool = True
    #: reads the pruning context (training data, even if only an input's shape)
    context: bool = True

    def run(self, request: Request) -> Tables:
        assert self.fn is not None
        tables = self.fn(request)
        # a provider that fills other fields than it declared would hide them from ``Site``
        assert set(tables) == set(self.fields), f"need {self.name} gave {sorted(tables)}"
        return tables


#: the need vocabulary: name -> provider (``"grad" in NEEDS``, ``NEEDS.names()``)
NEEDS: Registry[Provider] = Registry("need")


def provider(
    name: str, *fields: str, sample: bool = True, context: bool = True
) -> Callable[[ProviderFn], ProviderFn]:
    """Decorator: register the function as the provider of need ``name``, which returns the
    tables of ``fields`` (the names measures read them by: ``site.<field>``)."""

    def register(fn: ProviderFn) -> ProviderFn:
        NEEDS.register(name)(Provider(name, tuple(fields), fn, sample=sample, context=context))
        return fn

    return register


def statistic_fields() -> frozenset[str]:
    """Every field some provider fills: the statistics a ``Site`` may hold."""
    return frozenset(f for n in NEEDS for f in NEEDS.get(n).fields)


@dataclass
class Derivatives:
    """What ``compute`` found: per field, the tensor of each parameter it was computed for.

    ``d.g`` is the table of field ``g``, or None where no need asked for it; a name that no
    provider fills is an ``AttributeError`` (a misspelt statistic, not a missing one)."""

    tables: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def __getattr__(self, name: str) -> dict[str, Tensor] | None:
        if name.startswith("__") or name == "tables":  # copy / pickle probe before __init__
            raise AttributeError(name)
        if name in self.tables:
            return self.tables[name]
        if name in statistic_fields():
            return None
        raise AttributeError(f"no provider computes {name!r}; fields: {sorted(statistic_fields())}")

    def of(self, param: str) -> dict[str, Tensor]:
        """The statistics computed for one parameter, by field."""
        return {f: t[param] for f, t in self.tables.items() if param in t}


def compute(
    needs: frozenset[str],
    model: nn.Module,
    params: Mapping[str, Tensor],
    ctx: PruneContext | None,
    sample: Sample,
) -> Derivatives:
    """The statistics ``needs`` asks for, on ``sample``; the model is left as it was. An unknown
    need is a one-line ``UserError`` that names the valid ones."""
    wanted = [NEEDS.get(n) for n in sorted(needs)]
    # a need whose fields another asked need computes as well is served by that one
    served = [p for p in wanted if p.fn and not any(set(p.fields) < set(q.fields) for q in wanted)]
    if any(p.context for p in wanted):
        assert ctx is not None, f"needs {sorted(needs)} read training data from the context"
    tables: dict[str, dict[str, Tensor]] = {}
    sampled = [p for p in served if p.sample]
    if sampled:
        assert ctx is not None, f"needs {sorted(needs)} read the scoring sample"
        batches = sample.draw(ctx)
        with preserved(model, train=sample.mode == "train"):
            for p in sampled:
                tables.update(p.run(Request(model, params, ctx, sample, batches)))
    for p in served:
        if not p.sample:
            tables.update(p.run(Request(model, params, ctx, sample)))
    return Derivatives(tables)


import_submodules("prune_cli.pruning.providers")
