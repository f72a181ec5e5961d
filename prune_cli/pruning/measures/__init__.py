"""Importance measures: one registered class each (as Torch-Pruning's ``Importance`` classes).

A measure declares what it ``needs`` (names in ``prune_cli.pruning.derivatives.NEEDS``: the
registered providers, one module each in ``prune_cli.pruning.providers``, which compute them)
and how it reduces what they computed, read off a ``Site`` by field (``site.g``, ``site.hg``):

- ``weight(site)``: a score per weight, the shape of theta (unstructured pruning);
- ``filter(site)``: a score per output filter, i.e. per row of ``theta.view(out, -1)``
  (structured pruning); by default the row sums of ``weight``. Where the filter score needs
  other statistics than the per-weight one (H g over all parameters, not the scored tensors), the
  measure says so in ``filter_needs``; methods ask ``needs_for("filter")``.

A filter unit's channel (``units``) is scored by the sum of its filter scores over the unit's
coupled tensors; ``depthwise_score=skip`` leaves out the depthwise convolutions among them
(Lubana and Dick score a MobileNet-V1 channel by its pointwise or stem filter alone).

Higher = more important; the lowest are pruned first. The settings of the scoring sample and of
the measures that read any are declared once, in ``MeasureSettings``, which the configs of
``flow``, ``filter`` and ``crossword`` inherit; ``build(name, settings)`` hands them to the
measure as ``measure.settings``. A measure's own settings that no method config holds
(undecayed's ``eps``) are dataclass fields, given to ``build`` by keyword. Adding a measure is
one class in one of this package's modules, registered with ``@IMPORTANCE.register(name)``: the
methods that score by a named measure (``flow``, ``filter``, ``crossword``) and their config
validation find it there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.pruning.derivatives import NEEDS, Derivatives, Sample, compute, statistic_fields
from prune_cli.registry import Registry, import_submodules

if TYPE_CHECKING:
    from prune_cli.pruning.method import PruneContext
    from prune_cli.pruning.structured import FilterGroups, Unit


class Site:
    """One prunable weight tensor ``theta`` and the statistics computed for it (detached), by
    the field names their providers fill: ``Site(theta, g=..., hg=...)``, read as ``site.g``.

    A statistic that some provider fills but that was not computed for this site reads as None;
    a name no provider fills is an error, at construction and when read."""

    __slots__ = ("stats", "theta")

    def __init__(self, theta: Tensor, **stats: Tensor | None) -> None:
        unknown = set(stats) - statistic_fields()
        if unknown:
            raise TypeError(
                f"Site has no statistic {sorted(unknown)}; fields: {sorted(statistic_fields())}"
            )
        self.theta = theta
        self.stats = {k: v for k, v in stats.items() if v is not None}

    def __getattr__(self, name: str) -> Tensor | None:
        # reached only for names that are not slots: the statistics
        if name.startswith("__") or name in Site.__slots__:  # copy / pickle probes
            raise AttributeError(name)
        if name in self.stats:
            return self.stats[name]
        if name in statistic_fields():
            return None
        raise AttributeError(
            f"Site has no statistic {name!r}; fields: {sorted(statistic_fields())}"
        )

    def __repr__(self) -> str:
        return f"Site(theta={tuple(self.theta.shape)}, stats={sorted(self.stats)})"

    def rows(self, t: Tensor) -> Tensor:
        """``t`` as (filters, weights per filter)."""
        return t.reshape(self.theta.shape[0], -1)


#: how a channel's score treats the depthwise convolutions coupled to it (``depthwise_score``)
DEPTHWISE_SCORES = ("sum", "skip")


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise convolution: each output channel reads one input channel of its own, so
    its filters are the channels it is coupled to, not a layer of filters of its own."""
    return isinstance(module, nn.Conv2d) and 1 < module.groups == module.in_channels


@dataclass
class UnitSites:
    """A filter unit: the coupled weight tensors whose rows are its channels, and the BatchNorm
    scales of those channels; ``depthwise`` and ``bn_depthwise`` mark (in the same order)
    the weights of depthwise convolutions and the BatchNorms that normalise their outputs
    (empty: none is)."""

    sites: list[Site]
    bn: list[Tensor] = field(default_factory=list)
    depthwise: list[bool] = field(default_factory=list)
    bn_depthwise: list[bool] = field(default_factory=list)

    @classmethod
    def of(cls, unit: Unit, groups: FilterGroups, found: Mapping[str, Site]) -> UnitSites:
        """The sites of ``unit`` (``found``: a ``Site`` per weight name), what is depthwise
        marked: a weight by its own module, a BatchNorm by the layer whose output it reads in
        the dependency graph that made the unit."""
        modules = dict(groups.model.named_modules())
        params = dict(groups.model.named_parameters())

        def reads_depthwise(bn_weight: str) -> bool:
            node = groups.graph.module2node.get(modules[bn_weight.rsplit(".", 1)[0]])
            return node is not None and any(is_depthwise(i.module) for i in node.inputs)

        return cls(
            [found[w] for w in unit.weights],
            [params[b].detach() for b in unit.bn],
            [is_depthwise(modules[w.rsplit(".", 1)[0]]) for w in unit.weights],
            [reads_depthwise(b) for b in unit.bn],
        )

    def scored(self, rule: str | None) -> tuple[list[Site], list[Tensor]]:
        """The sites and BatchNorm scales a channel's score sums (``depthwise_score``): all
        of them (null / ``sum``), or (``skip``) all but the depthwise convolutions' and their
        BatchNorms': the pointwise (or stem) filter alone, as Lubana and Dick score
        MobileNet-V1. A unit of depthwise layers only keeps them (nothing else scores it)."""
        if rule != "skip":
            return self.sites, self.bn
        depthwise = self.depthwise or [False] * len(self.sites)
        bn_depthwise = self.bn_depthwise or [False] * len(self.bn)
        sites = [s for s, dw in zip(self.sites, depthwise, strict=True) if not dw]
        bn = [b for b, dw in zip(self.bn, bn_depthwise, strict=True) if not dw]
        return sites or self.sites, bn or self.bn


@dataclass
class MeasureSettings:
    """The scoring settings of the methods that score by a named measure, declared once: the
    configs of ``flow``, ``filter`` and ``crossword`` inherit these fields (``method.samples``,
    ...), and ``build`` hands them to the measure."""

    #: training samples of the scoring sample (g is their mean gradient)
    samples: int = 2560
    #: the scoring loss is the cross-entropy of logits / score_temperature
    score_temperature: float = 1.0
    #: GraSP's own temperature of the logits
    grasp_temperature: float = 200.0
    #: GraSP's examples of each class; null: samples // classes, as the authors
    samples_per_class: int | None = 10
    #: a filter unit's channel score: null / ``sum``: its filter scores summed over every
    #: coupled layer, a depthwise convolution's (and its BatchNorm's) included; ``skip``:
    #: without the depthwise ones, the pointwise (or stem) filter alone (Lubana and Dick's
    #: MobileNet-V1). Structured methods only: a per-weight score has no units
    depthwise_score: str | None = None

    def __post_init__(self) -> None:
        # cooperative: the method configs that inherit these settings run their own checks
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.depthwise_score not in (None, *DEPTHWISE_SCORES):
            raise ConfigError(
                f"method.depthwise_score must be one of {', '.join(DEPTHWISE_SCORES)}, "
                f"got {self.depthwise_score!r}"
            )

    def scoring_sample(self) -> Sample:
        """The sample these settings describe (a measure may prescribe its own from it)."""
        return Sample(samples=self.samples, temperature=self.score_temperature)


def measure_settings(settings: object) -> MeasureSettings:
    """The ``MeasureSettings`` part of ``settings`` (a method config that inherits it) as a
    plain copy, so a measure sees those settings and no other; anything else (None, the config of
    a method that scores without such settings) gives the defaults."""
    if not isinstance(settings, MeasureSettings):
        return MeasureSettings()
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(MeasureSettings)}
    return MeasureSettings(**values)


@dataclass
class Measure:
    """Base class of the measures. Subclasses set the class variables and override ``weight``
    (per-weight measures) and, where the filter score is not the row sum, ``filter``."""

    #: what ``prune_cli.pruning.derivatives.compute`` must provide (names in ``NEEDS``)
    needs: ClassVar[frozenset[str]] = frozenset({"weights"})
    #: what the per-filter score needs where it differs from ``needs`` (None: the same);
    #: read through ``needs_for("filter")``
    filter_needs: ClassVar[frozenset[str] | None] = None
    #: the reductions it has: a per-weight score, a per-filter score
    per_weight: ClassVar[bool] = True
    per_filter: ClassVar[bool] = True
    #: scoring rounds at one pruning step, the target approached on an exponential schedule
    #: (SynFlow's 100: each round rescores the network pruned by the previous ones)
    rounds: ClassVar[int] = 1

    #: the method's scoring settings (GraSP reads its temperature and sample from them)
    settings: MeasureSettings = field(default_factory=MeasureSettings)

    @classmethod
    def needs_for(cls, reduction: str) -> frozenset[str]:
        """What the ``weight`` or ``filter`` reduction needs computed (Lubana and Dick's GraSP
        and gradient-norm filter scores take H g over all parameters, the per-weight ones over
        the scored tensors)."""
        if reduction == "filter" and cls.filter_needs is not None:
            return cls.filter_needs
        return cls.needs

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
        """Score of each channel of each unit: summed over the unit's coupled tensors (those
        that ``depthwise_score`` keeps: ``UnitSites.scored``)."""
        rule = self.settings.depthwise_score
        return {root: sum(self.filter(s) for s in u.scored(rule)[0]) for root, u in units.items()}


IMPORTANCE: Registry[type[Measure]] = Registry("measure")


def build(name: str, settings: object = None, **overrides: object) -> Measure:
    """The measure ``name`` with the scoring settings of ``settings`` (a method config that
    inherits ``MeasureSettings``; see ``measure_settings``) and its own fields in ``overrides``
    (undecayed's ``eps``)."""
    return IMPORTANCE.get(name)(settings=measure_settings(settings), **overrides)


def check(name: str, reduction: str) -> None:
    """Config validation: ``name`` is a registered measure with the ``reduction`` (``weight``
    or ``filter``) the method needs, and every need it declares has a provider."""
    cls = IMPORTANCE.get(name)
    if not getattr(cls, f"per_{reduction}"):
        valid = [n for n in IMPORTANCE.names() if getattr(IMPORTANCE.get(n), f"per_{reduction}")]
        raise ConfigError(
            f"measure {name!r} has no per-{reduction} score; valid: {', '.join(valid)}"
        )
    unknown = sorted(n for n in cls.needs_for(reduction) if n not in NEEDS)
    if unknown:
        raise ConfigError(
            f"measure {name!r} needs {', '.join(unknown)}, which no provider computes; "
            f"valid needs: {', '.join(NEEDS.names())}"
        )


def sites(
    params: Mapping[str, Tensor], d: Derivatives, names: list[str] | None = None
) -> dict[str, Site]:
    """One ``Site`` per parameter (all of ``params``, or ``names``)."""
    return {k: Site(params[k].detach(), **d.of(k)) for k in names or list(params)}


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
