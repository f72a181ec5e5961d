"""Structured filter pruning by a registered importance measure (``prune_cli.pruning.measures``):
the gradient-flow measures of Lubana and Dick (ICLR 2021; METHODS.md section 6), the L1 norm of
Li et al. (ICLR 2017) and the geometric median of FPGM (He et al., CVPR 2019), among others.

Filters are scored per unit (a measure's filter score summed over the coupled layers of the unit),
the lowest pruned first. ``scope``: null / ``global`` ranks all units' filters together, each unit
keeping at least floor(``min_keep`` * channels) + 1 filters (Lubana and Dick); ``layer`` prunes
the same fraction of every unit's filters, int(fraction * filters) pruned as the FPGM authors
count (``layer_count: kept``: int(filters * (1 - fraction)) kept, the L1-norm reference). The
classifier is never pruned, nor is a layer that ``ignore`` leaves dense (with whatever is
coupled to its filters). The first convolution is pruned only with
``prune_first`` (null = false): Lubana and Dick prune it in VGG-13 and MobileNet-V1 and exempt it
in ResNet-56 (their code pins its score above every other), which their experiment configs
follow; without it, in a CIFAR ResNet, whose residual streams are coupled to the first
convolution through the shortcuts, the units are the inner convolution of each block. When:

- ``early`` (Lubana and Dick's schedule): after each of the first ``rounds`` (n) epochs, prune
  p_k = p / (k p + n (1 - p)) of the remaining filters, k = 1..n, so that ``sparsity`` p of the
  prunable filters are gone after round n; then training goes on;
- ``init``: prune p before the first step, then train;
- ``trained``: train dense, prune p, fine-tune (a level 1);
- ``soft`` (soft filter pruning, as FPGM trains): prune p before the first step and again after
  every epoch, each time choosing afresh among all filters, so a filter pruned after one epoch
  may come back after the next (it restarts from zero); the last epoch's choice is final.
- ``steps`` (HALP's schedule, Shen et al., NeurIPS 2022): train dense, then prune during the
  fine-tuning level (1), after every ``interval`` optimizer steps (null: HALP's 40) for
  ``rounds`` steps (HALP: 30), each on a geometric path: step k keeps (1 - p)^(k/n) of the
  filters (1 - (1 - p)^(1/n) of the remaining ones each step), or with a latency target aims at
  the latency ratio F^(k/n); then fine-tuning goes on with the final masks. The level starts
  from the dense model, so its ``pruned`` row is the dense network's accuracy.

The schedules inside a training run (all but ``trained``; ``steps`` inside the fine-tuning) are
run by the callback in ``prune_cli/pruning/filter_schedule.py``.

While training, pruned channels are kept at exactly zero (filters, biases, BatchNorm gamma and
beta). At the end the channels are physically removed (torch-pruning): the run reports parameters,
MACs and inference latency of the thinner network against the dense one, checks that the thinner
network's outputs equal the masked one's, and saves it twice:

- ``final_model.pt``: its state dict, the removed channel indices of each unit and the model's
  input shape and classes (``structured.thin_checkpoint``), loadable with
  ``torch.load(..., weights_only=True)``, so reading it cannot run code;
  ``prune_cli.thin.load_thin_model(path)`` rebuilds the module from it (the dense model from the
  registry, then the stored removal, then the weights);
- ``final_model.pt2`` (``torch.export``: loads with ``torch.export.load`` alone, without
  prune-run installed).

``score_temperature`` divides the logits of the scoring loss (the reference sheet lists T = 5);
GraSP uses its own ``grasp_temperature`` (200) and a class-balanced sample.

A latency budget (``latency_target`` F, issue 27; HALP, Shen et al., NeurIPS 2022) replaces the
filter fraction ``sparsity`` (then not used): each pruning step keeps the filters that maximise
the summed importance under a latency table's prediction of the thin network, calibrated on
measured latency (``prune_cli.pruning.latency_step``: the settings, the table, the knapsack or
the fraction baseline, the corrections, what summary.json records). ``trained`` and ``init``
prune to F in one step, ``soft`` to F afresh after every epoch, ``early`` round k to the
latency ratio 1 - c_k, c_k the reduction the filter fraction's curve gives after round k with
p = 1 - F (``latency_budget.early_round_latency``; F after round n), and ``steps`` step k to
F^(k/n) by the latency table alone, as HALP's steps are, except the last, which is calibrated
on measured latency (timing the intermediate networks would cost seconds per step for networks
that fine-tuning goes on changing).

The thin network's latency in summary.json (``latency_ratio``, with or without a target) is the
median of ``latency_step.LATENCY_PAIRS`` alternating thin / dense timings, ``latency_dense_ms``
and ``latency_thin_ms`` that median pair's, and ``latency_ratio_min`` / ``_max`` the spread of
the pairs: one pair on a loaded CPU may be off by a fifth.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prune_cli.callbacks import Callback
from prune_cli.errors import ConfigError
from prune_cli.io import save_torch
from prune_cli.pruning import latency
from prune_cli.pruning.derivatives import Derivatives, Sample, compute
from prune_cli.pruning.filter_schedule import (
    HALP_INTERVAL,
    ChannelSchedule,
    geometric_fraction,
    geometric_ratio,
)
from prune_cli.pruning.flow import early_round_fraction
from prune_cli.pruning.latency_budget import early_round_latency, reachable_counts
from prune_cli.pruning.latency_step import (
    LATENCY_COLUMNS,
    LATENCY_PAIRS,
    LatencySettings,
    LatencyStep,
    dense_reference,
)
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.measures import Measure, MeasureSettings, UnitSites, build, check, sites
from prune_cli.pruning.method import METHODS, MethodConfig, PruneContext, PruningMethod, check_range
from prune_cli.pruning.results import Column, Network, Results
from prune_cli.pruning.structured import FilterGroups, macs_and_params, thin_checkpoint

WHEN = ("early", "init", "trained", "soft", "steps")
#: the schedules whose level 0 is plain dense training and that prune into a level 1
PRUNED_AFTER_TRAINING = ("trained", "steps")

log = logging.getLogger(__name__)


@dataclass
class FilterConfig(MeasureSettings, LatencySettings, MethodConfig):
    """The settings of ``method=filter``; the scoring settings (``samples``,
    ``score_temperature``, ``grasp_temperature``, ``samples_per_class``) come from
    ``MeasureSettings``, the latency ones (``latency_target``, ``latency_by``, ...) from
    ``LatencySettings``. With ``latency_target`` set, ``sparsity`` is not used: the latency
    budget decides how many filters go (``filter_sparsity`` in summary.json says how many)."""

    name: str = "filter"
    measure: str = "magnitude"
    #: p: fraction of the prunable filters removed in all (not used with ``latency_target``)
    sparsity: float = 0.5
    when: str = "early"
    #: n: pruning rounds of one epoch each (``early``), or pruning steps (``steps``; HALP: 30)
    rounds: int = 5
    #: ``when: steps``: optimizer steps between its pruning steps (null = HALP's 40)
    interval: int | None = None
    #: each unit keeps at least floor(min_keep * channels) + 1 filters
    min_keep: float = 0.05
    #: each unit keeps a multiple of this many filters (or all of them), the nearest one to what
    #: the ranking chose: GPU kernels are fastest on channel counts that are multiples of 8
    #: (tensor-core tiles), and a thinner network of odd widths may run no faster than the
    #: dense one (docs/BENCHMARKS.md). Null = 1, no rounding.
    round_to: int | None = None
    #: per-layer multiples, ``{pattern: n}`` (HALP's channel groups, its ``group_size_cfg``):
    #: a unit with a layer whose module name matches the shell-style pattern keeps a multiple
    #: of n filters (of several matches, among its coupled layers too, the largest n, as HALP
    #: takes the largest size of a group); the units none matches keep ``round_to``'s. The
    #: latency table's grid steps by each unit's size. On the command line:
    #: ``'++method.round_to_layers={layer1.*:32,layer2.*:64}'`` (``++`` adds keys to what an
    #: experiment gives; ``method.round_to_layers=null`` clears it; patterns with brackets only
    #: in YAML: Hydra's override grammar refuses them). Empty (the default) or null = none; an
    #: empty one enters no config hash (``identity.EMPTY_BY_DEFAULT``), nor does null.
    round_to_layers: dict[str, int] | None = field(default_factory=dict)
    #: null or ``global`` (one ranking, per-unit floor) or ``layer`` (the same fraction per unit)
    scope: str | None = None
    #: prune the first layer's filters too (null = false: it keeps all of them)
    prune_first: bool | None = None
    #: ``scope=layer``'s count per unit of n filters at fraction p: null / ``pruned``: int(p n)
    #: pruned (FPGM's authors); ``kept``: int(n (1 - p)) kept, n - int(n (1 - p)) pruned (the
    #: L1-norm reference code); they differ by one filter where p n is not whole
    layer_count: str | None = None
    #: how each unit's channel scores are scaled before units are compared (the global ranking,
    #: the latency knapsack): null (as scored), ``mean`` or ``max`` (divided by the mean or the
    #: largest |score| of the unit's kept channels, as Torch-Pruning's group normaliser)
    normalize: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # MeasureSettings' and LatencySettings' checks
        check(self.measure, "filter")
        if self.scope not in (None, "global", "layer"):
            raise ConfigError(f"method.scope must be global or layer, got {self.scope!r}")
        check_range("sparsity", self.sparsity, 0.0, 1.0)
        if self.when not in WHEN:
            raise ConfigError(f"method.when must be one of {', '.join(WHEN)}")
        if self.rounds < 1 or self.samples < 1 or self.latency_batch < 1:
            raise ConfigError("method.rounds, method.samples and method.latency_batch must be >= 1")
        if self.score_temperature <= 0 or self.grasp_temperature <= 0:
            raise ConfigError("method temperatures must be > 0")
        if self.samples_per_class is not None and self.samples_per_class < 1:
            raise ConfigError(
                f"method.samples_per_class must be >= 1, got {self.samples_per_class}"
            )
        check_range("min_keep", self.min_keep, 0.0, 1.0)
        check_range("round_to", self.round_to, 1, nullable=True)
        for pattern, n in (self.round_to_layers or {}).items():
            if not pattern or isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(
                    "method.round_to_layers maps module-name patterns to multiples >= 1 "
                    f"({{'layer1.*': 32}}), got {pattern!r}: {n!r}"
                )
        check_range("interval", self.interval, 1, nullable=True)
        if self.layer_count not in (None, "pruned", "kept"):
            raise ConfigError(
                f"method.layer_count must be pruned or kept, got {self.layer_count!r}"
            )
        if self.normalize not in (None, *NORMALIZE):
            raise ConfigError(
                f"method.normalize must be {' or '.join(NORMALIZE)} or null, got {self.normalize!r}"
            )

    @property
    def step_interval(self) -> int:
        """``interval`` with its default (HALP's)."""
        return HALP_INTERVAL if self.interval is None else self.interval


#: ``method.normalize``'s statistics of a unit's kept |scores|
NORMALIZE = ("mean", "max")


def normalized(
    scores: Mapping[str, Tensor], keep: Mapping[str, Tensor], how: str | None
) -> Mapping[str, Tensor]:
    """Each unit's channel scores divided by the mean or the largest |score| of its kept
    channels (``how``; None: unchanged). Raw scores of different layers need not be comparable:
    an L1 norm grows with the layer's fan-in, so a global ranking or the latency knapsack would
    take whole early layers for their small norms. A positive factor per unit keeps the order
    within each unit (a per-layer ranking is unchanged). A unit whose statistic is 0 or not
    finite is left as it is; the pruned channels do not enter the statistic."""
    if how is None:
        return scores
    out = {}
    for root, s in scores.items():
        kept = s.detach()[keep[root].to(s.device)].abs()
        stat = float(kept.mean() if how == "mean" else kept.max()) if kept.numel() else 0.0
        out[root] = s / stat if stat > 0 and math.isfinite(stat) else s
    return out


def layer_pruned(n: int, fraction: float, rule: str | None) -> int:
    """Filters of a unit with ``n`` to prune at ``fraction`` under ``scope=layer``: int(p n)
    (null / ``pruned``) or n - int(n (1 - p)) (``kept``); 1e-9 absorbs the float error of a
    product that is whole (0.3 * 10 = 3.0000000000000004)."""
    if rule == "kept":
        return n - int(n * (1.0 - fraction) + 1e-9)
    return int(fraction * n + 1e-9)


@METHODS.register("filter")
class FilterPruning(PruningMethod):
    Config = FilterConfig
    #: the thinner network's measurements beside the final level; its target counts filters
    results = Results(
        columns=(
            Column("macs_after", "macs_thin", heading="thin network MACs", display="macs"),
            Column("params_after", "params_thin"),
            Column("latency_dense_ms", "latency_dense_ms"),
            Column(
                "latency_thin_ms",
                "latency_thin_ms",
                heading="latency ms (dense -> thin)",
                display="arrow",
                pair="latency_dense_ms",
            ),
            Column("latency_ratio", "latency_ratio"),
        ),
        files=("final_model.pt", "final_model.pt2"),
        networks=(Network("final_model", "thin"),),
        target="filters",
    )
    cfg: FilterConfig

    def __init__(self, cfg: FilterConfig) -> None:
        super().__init__(cfg)
        self.groups: FilterGroups | None = None
        self.warned = False  # the unreachable-target warning is given once per run
        #: the latency budget's state and steps (its table, its warning), and the timings
        self.latency = LatencyStep(cfg, self.floor, self.multiples, cfg.round_to, cfg.min_keep)
        #: each unit's multiple (``multiples``), found once per ``FilterGroups``
        self._multiples: tuple[FilterGroups, dict[str, int]] | None = None
        #: the latency ratio the pruning step under way aims at (an early round's); None: F
        self.step_latency: float | None = None
        #: whether the step under way is calibrated on measured latency (``steps``' last only)
        self.step_timed = True
        if cfg.latency_target is not None:
            # a run with a latency target declares its latency columns, and F as a target
            # setting (the report's series across targets leaves it out); the class's own
            # declaration, that of the runs without one, stays as it was
            base = type(self).results
            self.results = replace(
                base,
                columns=base.columns + LATENCY_COLUMNS,
                target_keys=(*base.target_keys, "latency_target"),
            )

    @property
    def table(self) -> latency.LatencyTable | None:
        """The run's latency table (None until a latency step needs it); settable, so that a
        test or a benchmark can hand in its own."""
        return self.latency.table

    @table.setter
    def table(self, table: latency.LatencyTable | None) -> None:
        self.latency.table = table

    @property
    def latency_warned(self) -> bool:
        """Whether the per-unit floors kept the latency target out of reach (warned once)."""
        return self.latency.warned

    def nominal_target(self) -> dict[str, Any]:
        """With a latency target the nominal ratio is dense / thin latency, 1 / F."""
        if self.cfg.latency_target is None:
            return super().nominal_target()
        return {"unit": "latency", "ratio": float(f"{1 / self.cfg.latency_target:.6g}")}

    def floor(self, channels: int) -> int:
        """The filters a unit of ``channels`` always keeps: floor(min_keep * channels) + 1."""
        return min(channels, math.floor(self.cfg.min_keep * channels) + 1)

    def multiples(self, groups: FilterGroups) -> dict[str, int]:
        """The multiple of filters each unit keeps, by root: the largest ``round_to_layers``
        size whose pattern matches one of the unit's layers (the modules whose rows are its
        channels), else ``round_to`` (1: any count). A pattern that matches no unit's layer is
        a ``ConfigError`` (a misspelt name would otherwise change nothing, silently)."""
        if self._multiples is not None and self._multiples[0] is groups:
            return self._multiples[1]
        default = self.cfg.round_to or 1
        patterns = self.cfg.round_to_layers or {}
        layers = {u.root: [w.rsplit(".", 1)[0] for w in u.weights] for u in groups.units}
        found = {u.root: default for u in groups.units}
        matched: set[str] = set()
        for root, names in layers.items():
            hits = {p for p in patterns if any(fnmatchcase(name, p) for name in names)}
            matched |= hits
            if hits:
                found[root] = max(patterns[p] for p in hits)
        missing = [p for p in patterns if p not in matched]
        if missing:
            names = [n for u in groups.units for n in layers[u.root]]
            position = {name: i for i, (name, _) in enumerate(groups.model.named_modules())}
            names.sort(key=lambda n: position.get(n, len(position)))
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise ConfigError(
                f"method.round_to_layers: {', '.join(map(repr, missing))} matches no prunable "
                f"layer; those are {shown} (the first layer only with "
                "method.prune_first=true, the classifier never)"
            )
        self._multiples = (groups, found)
        return found

    def fewest(self, groups: FilterGroups) -> dict[str, int]:
        """The fewest filters each unit can keep: its floor, rounded up to its multiple (one
        group of 128 where HALP's sizes say 128, whatever ``min_keep`` says)."""
        multiples = self.multiples(groups)
        return {
            u.root: reachable_counts(u.channels, multiples[u.root], self.floor(u.channels))[-1]
            for u in groups.units
        }

    def reachable(self, groups: FilterGroups) -> float:
        """The largest fraction of the prunable filters that the per-unit floors (rounded to
        each unit's multiple) let ``sparsity`` reach: 1 - sum of the fewest / filters with a
        global ranking; with ``scope=layer`` each unit gives at most ``sparsity`` of its own."""
        total = sum(u.channels for u in groups.units)
        fewest = self.fewest(groups)
        p = self.cfg.sparsity if self.cfg.scope == "layer" else 1.0
        most = sum(min(p * u.channels, u.channels - fewest[u.root]) for u in groups.units)
        return most / max(1, total)

    def warn_unreachable(self, groups: FilterGroups) -> None:
        """Say once when the floors keep ``sparsity`` out of reach (the run goes on and prunes
        as far as they allow; ``finalize`` records the fraction reached)."""
        reachable = self.reachable(groups)
        if self.warned or self.cfg.sparsity <= reachable + 1e-9:
            return
        self.warned = True
        total = sum(u.channels for u in groups.units)
        log.warning(
            "method.sparsity=%g cannot be reached: every unit keeps floor(min_keep * filters) + 1 "
            "of its filters (method.min_keep=%g), rounded up to its multiple (round_to), so at "
            "most %.4f of the %d prunable filters can go; pruning stops there (summary.json: "
            "filter_sparsity, filter_sparsity_max)",
            self.cfg.sparsity,
            self.cfg.min_keep,
            reachable,
            total,
        )

    def num_levels(self) -> int:
        return 1 if self.cfg.when in PRUNED_AFTER_TRAINING else 0

    # --- the filter units and their state -----------------------------------------------------
    def units(self, model: nn.Module, ctx: PruneContext) -> FilterGroups:
        if self.groups is None or self.groups.model is not model:
            x, _ = next(iter(ctx.batches(1)))
            x = x[:2].to(next(model.parameters()).device)
            # layers that ``ignore`` leaves dense keep their filters, and the groups they feed
            prunable = self.prunable(model)
            fixed = [
                m
                for name, m in model.named_modules()
                if isinstance(m, nn.Conv2d | nn.Linear) and f"{name}.weight" not in prunable
            ]
            self.groups = FilterGroups(
                model, x, prune_first=bool(self.cfg.prune_first), fixed=fixed
            )
        return self.groups

    def prepare(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        # find the units before the first epoch: a model whose filters cannot be grouped
        # (``FilterGroups``' ConfigError) fails at the start, not after a level of training;
        # so does a ``round_to_layers`` pattern that names none of them
        self.multiples(self.units(model, ctx))
        return model

    def keep_from(self, masks: Masks, groups: FilterGroups) -> dict[str, Tensor]:
        """Kept channels of each unit, read off the mask of its root weight (no extra state).

        All on the model's device: a unit whose root weight is not masked keeps every channel.
        """
        device = next(groups.model.parameters()).device
        return {
            u.root: masks[f"{u.root}.weight"].reshape(u.channels, -1).any(dim=1).to(device)
            if f"{u.root}.weight" in masks
            else torch.ones(u.channels, dtype=torch.bool, device=device)
            for u in groups.units
        }

    def measure(self) -> Measure:
        return build(self.cfg.measure, self.cfg)

    def sample(self) -> Sample:
        return self.cfg.scoring_sample()

    def derivatives(
        self, needs: frozenset[str], sample: Sample, model: nn.Module, groups: FilterGroups, ctx
    ) -> Derivatives:
        params = dict(model.named_parameters())
        return compute(needs, model, {k: params[k] for k in groups.weight_names()}, ctx, sample)

    def unit_scores(
        self, measure: Measure, model: nn.Module, groups: FilterGroups, ctx, d: Derivatives
    ) -> dict[str, Tensor]:
        """Each unit's channel scores by ``measure``, from derivatives ``d`` already computed."""
        params = dict(model.named_parameters())
        found = sites(params, d, groups.weight_names())
        units = {u.root: UnitSites.of(u, groups, found) for u in groups.units}
        return measure.units(units, ctx)

    def channel_scores(
        self, model: nn.Module, groups: FilterGroups, ctx: PruneContext
    ) -> dict[str, Tensor]:
        measure = self.measure()
        needs = measure.needs_for("filter")
        d = self.derivatives(needs, measure.sample(self.sample()), model, groups, ctx)
        return self.unit_scores(measure, model, groups, ctx, d)

    # --- one pruning step: score, select, apply -----------------------------------------------
    def prune_fraction(
        self, model: nn.Module, masks: Masks, ctx: PruneContext, fraction: float
    ) -> dict[str, Tensor]:
        """Prune ``fraction`` of the remaining filters (within the scope, per-unit floor); with
        ``latency_target``, prune to the step's latency ratio instead (``step_latency``, else
        F), ``fraction`` unused."""
        groups = self.units(model, ctx)
        device_keep = self.keep_from(masks, groups)
        scores = self.channel_scores(model, groups, ctx)
        keep = self.select(groups, device_keep, scores, ctx, fraction)
        return self.apply(groups, keep, masks)

    def step_ratio(self) -> float:
        """The latency ratio (thin / dense) the step under way aims at: an early round's, or F."""
        assert self.cfg.latency_target is not None
        return self.cfg.latency_target if self.step_latency is None else self.step_latency

    def select(
        self,
        groups: FilterGroups,
        device_keep: dict[str, Tensor],
        scores: Mapping[str, Tensor],
        ctx: PruneContext,
        fraction: float,
        *,
        timed: bool = True,
    ) -> dict[str, Tensor]:
        """The kept channels after this step: ``fraction`` by the scope's ranking, or with a
        latency target the step's latency ratio, calibrated on measured latency (``timed``) or
        by the table's budget alone (``timed=False``: no network is built or timed). The scores
        are first scaled per unit as ``normalize`` says."""
        scores = normalized(scores, device_keep, self.cfg.normalize)
        if self.cfg.latency_target is None:
            self.warn_unreachable(groups)
            return self.choose(groups, device_keep, scores, fraction)

        def by_fraction(f: float) -> dict[str, Tensor]:  # the baseline's ranking (latency_by)
            return self.choose(groups, device_keep, scores, f)

        timed = timed and self.step_timed
        return self.latency.choose(
            groups, device_keep, scores, ctx, self.step_ratio(), by_fraction, timed=timed
        )

    def apply(
        self, groups: FilterGroups, keep: Mapping[str, Tensor], masks: Masks
    ) -> dict[str, Tensor]:
        """Zero the removed channels of the model (with what is coupled to them) and return the
        masks of the units' weights with their removed rows off."""
        groups.zero_channels(dict(keep))
        new: dict[str, Tensor] = {}
        for u in groups.units:
            for w in u.weights:
                if w in masks:
                    rows = keep[u.root].to(masks[w].device).view(-1, *([1] * (masks[w].dim() - 1)))
                    new[w] = (new.get(w, masks[w]) & rows).expand_as(masks[w]).clone()
        return new

    def prune_round(
        self, model: nn.Module, masks: Masks, ctx: PruneContext, k: int
    ) -> dict[str, Tensor]:
        """Round k of the ``early`` schedule: p_k of the remaining filters, or with a latency
        target the round's latency ratio (``early_round_latency``)."""
        cfg = self.cfg
        fraction = early_round_fraction(k, cfg.rounds, cfg.sparsity)
        if cfg.latency_target is None:
            return self.prune_fraction(model, masks, ctx, fraction)
        # through prune_fraction, so that a subclass's own (crossword's search first) runs too
        self.step_latency = early_round_latency(k, cfg.rounds, cfg.latency_target)
        try:
            return self.prune_fraction(model, masks, ctx, fraction)
        finally:
            self.step_latency = None

    def prune_step(
        self, model: nn.Module, masks: Masks, ctx: PruneContext, k: int
    ) -> dict[str, Tensor]:
        """Step k = 1..n of the ``steps`` schedule: ``geometric_fraction`` of the remaining
        filters, or with a latency target the ratio F^(k/n), by the table alone but for step n."""
        cfg = self.cfg
        fraction = geometric_fraction(cfg.rounds, cfg.sparsity)
        if cfg.latency_target is None:
            return self.prune_fraction(model, masks, ctx, fraction)
        self.step_latency = geometric_ratio(k, cfg.rounds, cfg.latency_target)
        self.step_timed = k == cfg.rounds
        try:
            return self.prune_fraction(model, masks, ctx, fraction)
        finally:
            self.step_latency, self.step_timed = None, True

    def choose(
        self,
        groups: FilterGroups,
        device_keep: dict[str, Tensor],
        channel_scores: Mapping[str, Tensor],
        fraction: float,
    ) -> dict[str, Tensor]:
        """The kept channels of each unit after pruning ``fraction`` of the kept ones by score
        (lowest first; ties by unit, then channel), on the devices of ``device_keep``."""
        # the ranking is a Python loop over channels: read scores and masks to the host once,
        # not one element (and one device sync) at a time
        keep = {r: k.cpu().clone() for r, k in device_keep.items()}
        scores = {r: s.detach().cpu().tolist() for r, s in channel_scores.items()}
        kept = {r: k.tolist() for r, k in keep.items()}
        candidates = sorted(
            (scores[u.root][ch], i, ch)
            for i, u in enumerate(groups.units)
            for ch in range(u.channels)
            if kept[u.root][ch]
        )
        remaining = {u.root: int(keep[u.root].sum()) for u in groups.units}
        floor = {u.root: self.floor(u.channels) for u in groups.units}
        if self.cfg.scope == "layer":  # int(fraction * remaining) of each unit, the floor kept
            todo = {
                r: layer_pruned(n, fraction, self.cfg.layer_count) for r, n in remaining.items()
            }
        else:
            total = round(fraction * len(candidates))
        for _, i, ch in candidates:
            root = groups.units[i].root
            if self.cfg.scope == "layer":
                if todo[root] > 0 and remaining[root] > floor[root]:
                    keep[root][ch] = False
                    remaining[root] -= 1
                    todo[root] -= 1
                continue
            if total == 0:
                break
            if remaining[root] > floor[root]:
                keep[root][ch] = False
                remaining[root] -= 1
                total -= 1
        multiples = self.multiples(groups)
        for u in groups.units:
            if multiples[u.root] > 1:
                before = device_keep[u.root].cpu()  # untouched: ``keep`` holds copies
                round_kept(keep[u.root], before, scores[u.root], multiples[u.root], floor[u.root])
        return {r: k.to(device_keep[r].device) for r, k in keep.items()}

    # --- hooks --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # the last timed latency step's tries, for summary.json's ``latency_calibration`` after
        # a resume (the step ran before the interruption); nothing where no step was timed
        tries = self.latency.calibration
        return {"latency_calibration": [list(t) for t in tries]} if tries else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        tries = state.get("latency_calibration", [])
        self.latency.calibration = [(float(b), float(m)) for b, m in tries]

    def shares_dense(self) -> bool:
        # pruned after training, level 0 is the plain dense training: its channel schedule
        # changes nothing while every mask is full, and ``prepare`` only finds the units
        return self.cfg.when in PRUNED_AFTER_TRAINING

    def callbacks(self, level: int, masks: Masks, ctx: PruneContext) -> list[Callback]:
        return [ChannelSchedule(self, masks, ctx, level)]

    def prune(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> Mapping[str, Tensor]:
        if self.cfg.when == "steps":  # the fine-tuning level's callback prunes, step by step
            return {name: mask.clone() for name, mask in masks.items()}
        return self.prune_fraction(model, masks, ctx, self.cfg.sparsity)  # when = trained

    def finalize(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> dict[str, Any]:
        groups = self.units(model, ctx)
        keep = self.keep_from(masks, groups)
        groups.zero_channels(keep)
        x, _ = next(iter(ctx.batches(1)))
        example, batch = self.latency.inputs(ctx)
        thin = groups.thin(keep, example)
        model.eval()
        with torch.no_grad():
            difference = float((model(x) - thin(x)).abs().max())
        macs_before, params_before = macs_and_params(model, example)
        macs_after, params_after = macs_and_params(thin, example)
        # the median of 3 pairs (on the CPU each of interleaved passes, latency_step.time_pair),
        # not one timing of each: a shared CPU's load moves a single ratio by a fifth
        # against the dense architecture's fresh copy: the masked model's zeros time faster
        timing = self.latency.timing(dense_reference(model), thin, batch)
        thin_ms, dense_ms = timing.median_pair
        low, high = timing.spread
        # The registry name is the experiment's: PruneContext does not carry it yet, so read it
        # if a newer context does; otherwise load_thin_model takes it from the run's config.yaml.
        checkpoint = thin_checkpoint(
            thin,
            groups.removed(keep),
            input_shape=x.shape[1:],
            num_classes=ctx.num_classes,
            model=ctx.model_name,
        )
        # atomic: a run killed while it writes leaves no half-written file under the final name
        save_torch(checkpoint, ctx.artifact_path("final_model.pt"))
        exported = export(thin, x[:2], ctx.artifact_path("final_model.pt2"))
        total = sum(u.channels for u in groups.units)
        kept = sum(int(k.sum()) for k in keep.values())
        position = {name: i for i, (name, _) in enumerate(model.named_modules())}
        ordered = sorted(groups.units, key=lambda u: position[u.root])
        multiples = self.multiples(groups)
        budget = {}
        if self.cfg.latency_target is not None:
            budget = self.latency.info(groups, keep, ctx, thin_ms, dense_ms, self.fewest(groups))
        return {
            "filters_prunable": total,
            "filters_kept": kept,
            # reached, beside what was asked and what the per-unit floors allow
            "filter_sparsity": 1 - kept / max(1, total),
            # with a latency target the filter fraction is what the budget left, not a target
            "filter_sparsity_target": None if budget else self.cfg.sparsity,
            "filter_sparsity_max": self.reachable(groups),
            # the thin architecture, unit by unit in the model's order: [kept, filters] (a
            # latency budget may keep one layer whole and strip another to its floor)
            "filters_by_unit": {u.root: [int(keep[u.root].sum()), u.channels] for u in ordered},
            # the multiple each unit kept to (HALP's channel groups), where sizes are per layer
            **(
                {"round_to_by_unit": {u.root: multiples[u.root] for u in ordered}}
                if self.cfg.round_to_layers
                else {}
            ),
            "params_before": params_before,
            "params_after": params_after,
            "macs_before": macs_before,
            "macs_after": macs_after,
            "latency_batch": self.cfg.latency_batch,
            # the median pair's timings, its ratio, and the spread of the pairs' ratios
            "latency_dense_ms": dense_ms,
            "latency_thin_ms": thin_ms,
            "latency_ratio": timing.ratio,
            "latency_ratio_min": low,
            "latency_ratio_max": high,
            "latency_pairs": LATENCY_PAIRS,
            "max_output_difference": difference,
            "final_model": "final_model.pt",
            "exported_model": exported,
            **budget,
        }


def round_kept(
    keep: Tensor, before: Tensor, scores: list[float], multiple: int, floor: int = 1
) -> None:
    """Round the kept count of one unit to the nearest multiple of ``multiple`` (ties up; all
    channels count as a multiple), in place, by dropping its lowest-scored kept channels or
    restoring its highest-scored channels removed in this round (``before`` = kept before it).
    A channel removed in an earlier round is never restored (masks only shrink): when too few
    were removed now to round up, the count is rounded down instead; never below the unit's
    ``floor`` (``min_keep``): a count that can go neither way is left as the ranking chose it."""
    channels, kept = keep.numel(), int(keep.sum())
    if kept % multiple == 0 or kept == channels:
        return
    lower = multiple * (kept // multiple)
    upper = min(channels, lower + multiple)
    can_round_up = upper - kept <= int((before & ~keep).sum())
    can_round_down = lower > 0 and lower >= floor
    if can_round_up and (upper - kept <= kept - lower or not can_round_down):
        target = upper
    elif can_round_down:
        target = lower
    else:  # neither a multiple above (too few removed now) nor one above the floor below
        return
    order = sorted(range(channels), key=lambda ch: scores[ch])  # ascending score
    if target < kept:
        for ch in [c for c in order if keep[c]][: kept - target]:
            keep[ch] = False
    elif target > kept:
        for ch in [c for c in reversed(order) if before[c] and not keep[c]][: target - kept]:
            keep[ch] = True


def export(model: nn.Module, example: Tensor, path: Path) -> str:
    """Save a ``torch.export`` program with a dynamic batch size; the file name, or the reason
    the model could not be exported (the state dict checkpoint is saved in any case)."""
    try:
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
    except Exception as exc:  # an op torch.export does not support: say so, keep the run
        return f"not exported: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return path.name
