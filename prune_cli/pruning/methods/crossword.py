"""``method=crossword``: the Crossword Puzzle metric search (seed 000, ICLR 2023 submission;
METHODS.md section 8), then filter pruning by the metric found (``prune_cli.pruning.crossword``
defines the blocks' grammar, the objective and the searches).

At the first pruning step (by default ``when: trained``: after dense training, then fine-tuning as
``method=filter`` does) the building blocks are computed once for every prunable filter, the search
(``search: anneal`` or ``genetic``, seeded by the run's seed) evaluates up to ``budget``
candidates, and the one of highest objective prunes ``sparsity`` of the filters through the
structured path of ``method=filter`` (``scope`` null: one global ranking with the per-unit floor;
``layer``: the same fraction of each unit), which also builds, measures and saves the thinner
network. ``expression`` prunes by a given expression instead of searching (``l1`` is Li et al.'s
criterion through the same path). With ``latency_target`` F the metric found prunes to F of the
dense latency instead of ``sparsity``, as ``method=filter`` does (``latency_by``: the knapsack
over the metric's scores, or the scope's ranking at the bisected fraction).

The premise is checked, not assumed: the pruned validation accuracy (before fine-tuning) of a
sample of the kept candidates (every block, the chosen one, then a seeded sample of the rest; at
most ``accuracy_sample``) and the Spearman correlation across them between objective and that
accuracy are reported. Each candidate is pruned as the step will prune: ``sparsity`` of the
filters, or with a latency target the step's latency budget by the latency table's prediction
alone (no thin network is built or timed per candidate, so the candidates are compared at the
same predicted latency; the final pruning then corrects the chosen metric's selection on the
measured latency). ``crossword_search.csv`` in the run directory lists every candidate: its
expression, status, objective, Spearman correlation with L1 and with the geometric-median
criterion, and pruned validation accuracy where measured; ``summary.json`` has the chosen
expression and the correlation under ``method_info``.
"""

from __future__ import annotations

import csv
import logging
import math
import random
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.pruning.crossword import (
    SPACES,
    STATISTICS,
    Expr,
    Pool,
    anneal,
    centralisation,
    evaluate,
    evolve,
    parse,
    spearman,
)
from prune_cli.pruning.derivatives import Derivatives
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.measures import IMPORTANCE, build
from prune_cli.pruning.method import METHODS, PruneContext
from prune_cli.pruning.methods.filter_pruning import FilterConfig, FilterPruning
from prune_cli.pruning.results import Cell, Column, Results, Table
from prune_cli.pruning.structured import FilterGroups
from prune_cli.seeds import derive_seed

SEARCHES = ("anneal", "genetic")
LOG = "crossword_search.csv"

SEARCH_NOTE = (
    "Per row: the metric each seed's search chose (its count), and over the runs the mean ± std "
    "of the chosen metric's objective and of the premise check, the Spearman correlation across "
    "the search's candidates between the objective and the pruned validation accuracy (near 0 "
    "or below: the objective does not tell good metrics from bad ones here)."
)

log = logging.getLogger("prune_cli.experiment")


@dataclass
class CrosswordConfig(FilterConfig):
    name: str = "crossword"
    when: str = "trained"
    #: registered measures with a per-filter score; a block the model cannot give (``bn_gamma``
    #: without BatchNorm) is left out and named in the summary
    blocks: list[str] = field(
        default_factory=lambda: ["l1", "magnitude", "fpgm", "bn_gamma", "taylor", "fisher"]
    )
    #: ``anneal`` (simulated annealing) or ``genetic``
    search: str = "anneal"
    #: candidates evaluated in all, the blocks included
    budget: int = 60
    #: the deepest expression (a block alone has depth 1)
    max_depth: int = 3
    #: ``mad_mass``, ``kurtosis`` or ``neg_cv`` (``prune_cli.pruning.crossword``)
    statistic: str = "kurtosis"
    #: k of ``mad_mass``: the fraction within k MADs of the median
    mad_k: float = 2.0
    #: ``rank`` (global quantiles per layer: the rank-aware objective) or ``value`` (raw values)
    space: str = "rank"
    #: candidates whose Spearman correlation with an earlier kept one exceeds this are dropped
    duplicate: float = 0.99
    #: simulated annealing's temperature, from start to end over the budget
    t_start: float = 0.05
    t_end: float = 0.001
    #: the genetic algorithm's population and crossover probability
    population: int = 12
    crossover_rate: float = 0.7
    #: kept candidates whose pruned validation accuracy is measured (0 = none)
    accuracy_sample: int = 16
    #: prune by this expression (for example ``div(l1, z(fpgm))``) instead of searching
    expression: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.measure != "magnitude":
            raise ConfigError("method=crossword scores by its expression: set method.expression")
        if not self.blocks:
            raise ConfigError("method.blocks must name at least one measure")
        for b in self.blocks:
            if b not in IMPORTANCE or not IMPORTANCE.get(b).per_filter:
                valid = [n for n in IMPORTANCE.names() if IMPORTANCE.get(n).per_filter]
                raise ConfigError(f"method.blocks: {b!r} is not one of {', '.join(valid)}")
        if self.search not in SEARCHES:
            raise ConfigError(f"method.search must be one of {', '.join(SEARCHES)}")
        if self.statistic not in STATISTICS:
            raise ConfigError(f"method.statistic must be one of {', '.join(STATISTICS)}")
        if self.space not in SPACES:
            raise ConfigError(f"method.space must be one of {', '.join(SPACES)}")
        if self.budget < len(self.blocks) or self.max_depth < 1 or self.population < 2:
            raise ConfigError(
                "method.budget must cover the blocks, method.max_depth >= 1, population >= 2"
            )
        if not 0 < self.duplicate <= 1 or not 0 < self.t_end <= self.t_start:
            raise ConfigError("method.duplicate must be in (0, 1], 0 < method.t_end <= t_start")
        if not 0 <= self.crossover_rate <= 1 or self.accuracy_sample < 0 or self.mad_k <= 0:
            raise ConfigError("crossover_rate in [0, 1], accuracy_sample >= 0, mad_k > 0")
        if self.expression is not None:  # its leaves may be any per-filter measure
            try:
                parse(self.expression, [n for n in IMPORTANCE if IMPORTANCE.get(n).per_filter])
            except ValueError as exc:
                raise ConfigError(f"method.expression: {exc}") from None


@dataclass
class BlockValues:
    """Every block's value for every prunable filter, the filters of all units in unit order."""

    names: list[str]
    values: dict[str, Tensor]  # name -> (filters,)
    layer: Tensor  # (filters,) the unit index of each filter
    roots: list[str]
    sizes: list[int]
    unavailable: list[str]

    def split(self, v: Tensor) -> dict[str, Tensor]:
        return dict(zip(self.roots, v.split(self.sizes), strict=True))


@METHODS.register("crossword")
class CrosswordPruning(FilterPruning):
    Config = CrosswordConfig
    #: filter pruning's results, and the search: the chosen metric, its objective and the
    #: premise check (rank correlation of objective and pruned accuracy over the candidates)
    results = FilterPruning.results.merge(
        Results(
            columns=(
                Column("objective", "search_objective"),
                Column("objective_accuracy_spearman", "search_objective_accuracy_spearman"),
                Column("expression", "search_expression", text=True),
            ),
            tables=(
                Table(
                    name="search",
                    title="Metric search (Crossword): what was chosen, and does the objective "
                    "predict accuracy?",
                    note=SEARCH_NOTE,
                    when="search_objective_accuracy_spearman",
                    cells=(
                        Cell("search_expression", "chosen", how="counts"),
                        Cell("search_objective", "objective"),
                        Cell(
                            "search_objective_accuracy_spearman",
                            "objective vs accuracy (Spearman)",
                        ),
                    ),
                ),
            ),
            files=(LOG,),
        )
    )
    cfg: CrosswordConfig

    def __init__(self, cfg: CrosswordConfig) -> None:
        super().__init__(cfg)
        #: the search's outcome (chosen expression, log rows, summary); saved in checkpoints
        self.found: dict[str, Any] | None = None

    # --- blocks -------------------------------------------------------------------------------
    def block_values(
        self, model: nn.Module, groups: FilterGroups, ctx: PruneContext, names: list[str]
    ) -> BlockValues:
        measures = {n: build(n, self.cfg) for n in names}
        by_sample: dict[Any, Derivatives] = {}
        for m in measures.values():  # one derivative computation per distinct sample
            sample = m.sample(self.sample())
            needs = frozenset().union(
                *(
                    x.needs_for("filter")
                    for x in measures.values()
                    if x.sample(self.sample()) == sample
                )
            )
            if sample not in by_sample:
                by_sample[sample] = self.derivatives(needs, sample, model, groups, ctx)
        roots = [u.root for u in groups.units]
        values, unavailable = {}, []
        for n, m in measures.items():
            try:
                scores = self.unit_scores(m, model, groups, ctx, by_sample[m.sample(self.sample())])
            except ConfigError:  # a block this model cannot give (no BatchNorm)
                unavailable.append(n)
                continue
            values[n] = torch.cat([scores[r].detach().cpu() for r in roots])
        sizes = [u.channels for u in groups.units]
        layer = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(sizes)])
        kept = [n for n in names if n in values]
        return BlockValues(kept, values, layer, roots, sizes, unavailable)

    # --- the search ---------------------------------------------------------------------------
    def run_search(
        self, model: nn.Module, masks: Masks, ctx: PruneContext, fraction: float
    ) -> dict[str, Any]:
        c = self.cfg
        groups = self.units(model, ctx)
        given = None if c.expression is None else parse(c.expression, list(IMPORTANCE))
        extra = [] if given is None else [x.op for _, x in given.nodes() if not x.args]
        names = list(dict.fromkeys([*c.blocks, *extra]))
        blocks = self.block_values(model, groups, ctx, names)
        searched = [n for n in blocks.names if n in c.blocks]
        if not searched:
            raise ConfigError(f"none of method.blocks can be computed: {', '.join(c.blocks)}")
        references = self.block_values(model, groups, ctx, ["l1", "fpgm"]).values
        n_layers = len(blocks.sizes)
        objective = partial(
            centralisation,
            layer=blocks.layer,
            n_layers=n_layers,
            name=c.statistic,
            k=c.mad_k,
            space=c.space,
        )
        pool = Pool(blocks.values, blocks.layer, n_layers, objective, c.budget, c.duplicate)
        rng = random.Random(derive_seed(ctx.seed, "crossword-search"))
        for name in searched:  # the criteria the metric is built from compete with it
            pool.try_(Expr(name))
        if given is not None:
            if set(extra) - set(blocks.names):
                raise ConfigError(f"method.expression {c.expression!r} cannot be computed here")
            chosen = pool.try_(given)
            if chosen.status.startswith("near-duplicate"):  # logged as one, judged as itself
                chosen.values = evaluate(given, blocks.values, blocks.layer, n_layers)
                chosen.objective = objective(chosen.values)
            if not chosen.kept and chosen.status.startswith("invalid"):
                raise ConfigError(f"method.expression {c.expression!r} is {chosen.status}")
        else:
            if c.search == "anneal":
                anneal(pool, rng, searched, c.max_depth, c.t_start, c.t_end)
            else:
                evolve(pool, rng, searched, c.max_depth, c.population, c.crossover_rate)
            chosen = pool.best()
        expression = chosen.expr
        accuracy = self.accuracy_sample(model, masks, ctx, fraction, groups, blocks, pool, chosen)
        rows = []
        for cand in pool.log:
            v = evaluate(cand.expr, blocks.values, blocks.layer, n_layers)
            finite = bool(v.isfinite().all())
            rows.append(
                {
                    "index": cand.index,
                    "expression": str(cand.expr),
                    "status": cand.status,
                    "objective": cand.objective,
                    "spearman_l1": spearman(v, references["l1"]) if finite else None,
                    "spearman_fpgm": spearman(v, references["fpgm"]) if finite else None,
                    "pruned_val_accuracy": accuracy.get(cand.index),
                }
            )
        measured = [r for r in rows if r["pruned_val_accuracy"] is not None]
        rho = (
            spearman(
                torch.tensor([r["objective"] for r in measured], dtype=torch.float64),
                torch.tensor([r["pruned_val_accuracy"] for r in measured], dtype=torch.float64),
            )
            if len(measured) >= 3
            else None
        )
        chosen_row = rows[chosen.index]
        return {
            "expression": str(expression),
            "objective": chosen.objective,
            "spearman_l1": chosen_row["spearman_l1"],
            "spearman_fpgm": chosen_row["spearman_fpgm"],
            "pruned_val_accuracy": chosen_row["pruned_val_accuracy"],
            "objective_accuracy_spearman": rho,
            "accuracy_candidates": len(measured),
            "candidates": len(pool.log),
            "candidates_kept": len(pool.kept()),
            "blocks": blocks.names,
            "blocks_unavailable": blocks.unavailable,
            "search": "expression" if c.expression is not None else c.search,
            "rows": rows,
        }

    def accuracy_sample(
        self,
        model: nn.Module,
        masks: Masks,
        ctx: PruneContext,
        fraction: float,
        groups: FilterGroups,
        blocks: BlockValues,
        pool: Pool,
        chosen: Any,
    ) -> dict[int, float]:
        """Pruned validation accuracy (no fine-tuning) of the blocks, the chosen candidate and a
        seeded sample of the other kept ones, at most ``accuracy_sample`` in all, each pruned
        at the step's ``fraction`` or, with a latency target, its latency budget (the table's)."""
        if ctx.evaluate is None or self.cfg.accuracy_sample == 0:
            return {}
        kept = pool.kept()
        first = [x for x in kept if not x.expr.args] + ([chosen] if chosen.expr.args else [])
        rest = [x for x in kept if x not in first]
        rng = random.Random(derive_seed(ctx.seed, "crossword-accuracy"))
        room = max(0, self.cfg.accuracy_sample - len(first))
        sample = (first + rng.sample(rest, min(room, len(rest))))[: self.cfg.accuracy_sample]
        device_keep = self.keep_from(masks, groups)
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out = {}
        try:
            for cand in sample:
                assert cand.values is not None
                scores = blocks.split(cand.values)
                keep = self.select(groups, device_keep, scores, ctx, fraction, timed=False)
                groups.zero_channels(keep)
                accuracy = float(ctx.evaluate(model, "val")[1])
                model.load_state_dict(backup)
                if math.isnan(accuracy):  # no validation split: nothing to check against
                    log.info("crossword: no validation split, so no accuracy check")
                    return {}
                out[cand.index] = accuracy
        finally:
            model.load_state_dict(backup)
        return out

    # --- scoring by the expression found ------------------------------------------------------
    def prune_fraction(
        self, model: nn.Module, masks: Masks, ctx: PruneContext, fraction: float
    ) -> dict[str, Tensor]:
        if self.found is None:
            self.found = self.run_search(model, masks, ctx, fraction)
        return super().prune_fraction(model, masks, ctx, fraction)

    def channel_scores(
        self, model: nn.Module, groups: FilterGroups, ctx: PruneContext
    ) -> dict[str, Tensor]:
        assert self.found is not None, "the search runs before the first pruning"
        expr = parse(self.found["expression"], self.found["blocks"])
        leaves = sorted({x.op for _, x in expr.nodes() if not x.args})
        blocks = self.block_values(model, groups, ctx, leaves)
        v = evaluate(expr, blocks.values, blocks.layer, len(blocks.sizes))
        device = next(model.parameters()).device
        return {r: s.to(device) for r, s in blocks.split(v).items()}

    # --- state and results --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        found = {} if self.found is None else {"found": self.found}
        return {**super().state_dict(), **found}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.found = state.get("found")

    def finalize(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> dict[str, Any]:
        info = super().finalize(model, masks, ctx)
        if self.found is None:
            return info
        with ctx.artifact_path(LOG).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.found["rows"][0]))
            writer.writeheader()
            writer.writerows(self.found["rows"])
        summary = {k: v for k, v in self.found.items() if k != "rows"}
        return {**info, **summary, "search_log": LOG}
