"""Importance measures: one registered class each (as Torch-Pruning's ``Importance`` classes).

A measure declares what it ``needs`` (``weights``, ``grad`` g, ``hessian_grad`` H g, ``synflow``,
``activations``, ``bn``: see ``prune_cli.pruning.derivatives``, which computes them) and how it
reduces:

- ``weight(site)``: a score per weight, the shape of theta (unstructured pruning);
- ``filter(site)``: a score per output filter, i.e. per row of ``theta.view(out, -1)``
  (structured pruning); by default the row sums of ``weight``.

Higher = more important; the lowest are pruned first. Settings of a measure are dataclass fields
(undecayed's ``eps``, GraSP's temperature); ``build(name, settings)`` takes them from a method's
config by name. Adding a measure is one class in one of this package's modules, registered with
``@IMPORTANCE.register(name)``: the methods that score by a named measure (``flow``, ``filter``,
``crossword``) and their config validation find it there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.pruning.derivatives import Derivatives, Sample, compute
from prune_cli.registry import Registry, import_submodules

if TYPE_CHECKING:
    from prune_cli.pruning.method import PruneContext


@dataclass
class Site:
    """One prunable weight tensor and what was computed for it (detached)."""

    theta: Tensor
    g: Tensor | None = None
    hg: Tensor | None = None
    synflow: Tensor | None = None
    activation: Tensor | None = None  # (out,)
    #: mean of the squared batch gradients (``grad_sq``), theta's shape
    g2: Tensor | None = None

    def rows(self, t: Tensor) -> Tensor:
        """``t`` as (filters, weights per filter)."""
        return t.reshape(self.theta.shape[0], -1)


@dataclass
class UnitSites:
    """A filter unit: the coupled weight tensors whose rows are its channels, and the BatchNorm
    scales of those channels."""

    sites: list[Site]
    bn: list[Tensor] = field(default_factory=list)


@dataclass
class Measure:
    """Base class of the measures. Subclasses set the class variables and override ``weight``
    (per-weight measures) and, where the filter score is not the row sum, ``filter``."""

    #: what ``prune_cli.pruning.derivatives.compute`` must provide
    needs: ClassVar[frozenset[str]] = frozenset({"weights"})
    #: the reductions it has: a per-weight score, a per-filter score
    per_weight: ClassVar[bool] = True
    per_filter: ClassVar[bool] = True
    #: scoring rounds at one pruning step, the target approached on an exponential schedule
    #: (SynFlow's 100: each round rescores the network pruned by the previous ones)
    rounds: ClassVar[int] = 1
    #: settings whose null is a choice of its own (taken from a method's config as null, not
    #: replaced by the field's default): GraSP's ``samples_per_class`` (null: samples // classes)
    nullable: ClassVar[frozenset[str]] = frozenset()

    def sample(self, base: Sample) -> Sample:
        """The data its derivatives are computed on (GraSP prescribes its own)."""
        return base

    def weight(self, site: Site) -> Tensor:
        """The per-weight score; a measure with ``per_weight = False`` has none, and a method
        that asks for one anyway is told which methods take it."""
        raise ConfigError(
            f"measure {type(self).__name__} scores filters only; use it with method=filter "
            "or method=crossword"
        )

    def filter(self, site: Site) -> Tensor:
        return site.rows(self.weight(site)).sum(dim=1)

    # --- whole-model reductions (random overrides them: one generator over all tensors) --------
    def weights(self, sites: Mapping[str, Site], ctx: PruneContext | None) -> dict[str, Tensor]:
        return {k: self.weight(s) for k, s in sites.items()}

    def units(self, units: Mapping[str, UnitSites], ctx: PruneContext | None) -> dict[str, Tensor]:
        """Score of each channel of each unit: summed over the unit's coupled tensors."""
        return {root: sum(self.filter(s) for s in u.sites) for root, u in units.items()}


IMPORTANCE: Registry[type[Measure]] = Registry("measure")


def build(name: str, settings: object = None, **overrides: object) -> Measure:
    """The measure ``name`` with the fields it has taken from ``settings`` (a method's config,
    by attribute name) and ``overrides``; null settings keep the measure's default, except the
    measure's ``nullable`` ones that the settings or overrides hold."""
    cls = IMPORTANCE.get(name)
    values = {}
    for f in dataclasses.fields(cls):
        given = f.name in overrides or hasattr(settings, f.name)
        value = overrides.get(f.name, getattr(settings, f.name, None))
        if value is not None or (given and f.name in cls.nullable):
            values[f.name] = value
    return cls(**values)


def check(name: str, reduction: str) -> None:
    """Config validation: ``name`` is a registered measure with the ``reduction`` (``weight``
    or ``filter``) the method needs."""
    cls = IMPORTANCE.get(name)
    if not getattr(cls, f"per_{reduction}"):
        valid = [n for n in IMPORTANCE.names() if getattr(IMPORTANCE.get(n), f"per_{reduction}")]
        raise ConfigError(
            f"measure {name!r} has no per-{reduction} score; valid: {', '.join(valid)}"
        )


def sites(
    params: Mapping[str, Tensor], d: Derivatives, names: list[str] | None = None
) -> dict[str, Site]:
    """One ``Site`` per parameter (all of ``params``, or ``names``)."""

    def get(table: dict[str, Tensor] | None, k: str) -> Tensor | None:
        return None if table is None else table.get(k)

    return {
        k: Site(
            params[k].detach(),
            get(d.g, k),
            get(d.hg, k),
            get(d.synflow, k),
            get(d.activations, k),
            get(d.g2, k),
        )
        for k in names or list(params)
    }


def weight_scores(
    measure: Measure,
    model: nn.Module,
    params: Mapping[str, Tensor],
    ctx: PruneContext | None,
    sample: Sample | None = None,
) -> dict[str, Tensor]:
    """Per-weight scores of ``params`` by ``measure`` (derivatives computed as it needs; a
    data-free measure needs no ``ctx``)."""
    d = compute(measure.needs, model, params, ctx, measure.sample(sample or Sample(samples=2560)))
    return measure.weights(sites(params, d), ctx)


import_submodules(__name__)
