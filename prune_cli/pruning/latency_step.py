"""Pruning filters to a latency budget, the step ``method=filter`` takes with ``latency_target``
(issue 27; HALP, Shen et al., "Structural Pruning via Latency-Saliency Knapsack", NeurIPS 2022).

``LatencySettings`` declares the settings (inherited by ``FilterConfig``, and so by crossword's
config). ``LatencyStep`` holds a run's latency state and does the work around the knapsack of
``prune_cli.pruning.latency_budget``:

- the run's latency table (``prune_cli.pruning.latency``), built at the first need on the dense
  architecture, on the run's device, and cached under ``output_root``;
- a selection of the kept channels under a budget in the table's ms: the knapsack
  (``latency_by: knapsack``, all units at once, the scope not used; ``latency_solver`` greedy or
  HALP's dynamic programme), or the method's own ranking at the filter fraction bisected to the
  budget (``latency_by: fraction``, the baseline at equal latency; the ranking is handed in, so
  this module knows nothing of scopes);
- calibration: the thin network is built and timed against the dense one in pairs (the median
  pair's ratio; on the CPU each pair of interleaved passes, ``time_pair``), and while it is off
  the step's target by more than ``latency_tolerance`` the selection is made again under a
  corrected budget (``latency_budget.next_budget``: scaled by target / measured, then a secant
  through the tries; ``latency_tries`` at most (null: ``LATENCY_TRIES``), the closest kept;
  ``summary.json``'s ``latency_calibration`` lists the last timed step's tries);
- what ``summary.json`` records for a latency target, and the warning where the per-unit floors
  keep it out of reach.

It works on ``FilterGroups`` of any ``nn.Module``; it imports no model and no dataset.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.pruning import latency
from prune_cli.pruning.latency_budget import (
    BudgetUnit,
    PairedTiming,
    bisect_fraction,
    calibrate,
    min_widths,
    solve,
    solve_dp,
    time_pairs,
)
from prune_cli.pruning.method import PruneContext, check_range
from prune_cli.pruning.results import Column
from prune_cli.pruning.structured import FilterGroups, interleaved_ms, latency_ms

LATENCY_BY = ("knapsack", "fraction")
LATENCY_SOLVERS = ("greedy", "dp")
#: selections per pruning step under a latency target (the first and two corrected ones), where
#: ``method.latency_tries`` is null
LATENCY_TRIES = 3
#: (thin, dense) timing pairs per measurement of a thin network, in a step and at the end
#: (the median pair's ratio is kept)
LATENCY_PAIRS = 3

#: what a run with a latency target adds to the report: the achieved latency ratio against F
LATENCY_COLUMNS = (
    Column("latency_target", "latency_target"),
    Column(
        "latency_ratio",
        "latency_reached",
        heading="latency / dense (target -> reached)",
        display="arrow",
        pair="latency_target",
    ),
    Column("latency_predicted_ms", "latency_predicted_ms"),
    Column("latency_table_error", "latency_table_error"),
)

#: the channels a unit keeps, by unit root
Keep = dict[str, Tensor]

log = logging.getLogger(__name__)


@dataclass
class LatencySettings:
    """The latency settings of the filter methods (``method.latency_*``). Every default leaves
    a run as it was before latency targets existed (null: not set), so old hashes stay."""

    #: batch of the latency measurement, and repetitions (median reported)
    latency_batch: int = 64
    latency_repeats: int = 20
    #: F in (0, 1]: prune to this fraction of the dense network's latency on the run's device
    #: (``latency_batch``), measured; ``sparsity`` is then not used. Null: prune ``sparsity``
    latency_target: float | None = None
    #: how filters are chosen under ``latency_target``: null / ``knapsack`` (the importance
    #: kept under the latency table's costs, all units at once; ``scope`` not used) or
    #: ``fraction`` (the baseline: the scope's ranking at the filter fraction bisected to F)
    latency_by: str | None = None
    #: the latency table's measured kept counts per layer dimension (null = 8)
    latency_points: int | None = None
    #: relative: a step selects again while the measured thin latency is further than this
    #: from its target (null = 0.03)
    latency_tolerance: float | None = None
    #: the knapsack's solver: null / ``greedy`` (removal by importance per ms saved, then a
    #: give-back and a local search) or ``dp`` (HALP's: dynamic programming over costs
    #: linearised at the counts, from the greedy's selection; never keeps less importance)
    latency_solver: str | None = None
    #: selections per timed pruning step, the first and the corrected ones (null = 3): more let
    #: a selection whose measured latency moves in coarse steps (a ranking's one filter
    #: fraction) get nearer the target, at a thin network's build and timing each
    latency_tries: int | None = None

    def __post_init__(self) -> None:
        # cooperative, as ``MeasureSettings``: the configs that inherit these run their checks
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        check_range("latency_repeats", self.latency_repeats, 1)
        check_range(
            "latency_target",
            self.latency_target,
            0.0,
            1.0,
            low_open=True,
            high_open=False,
            nullable=True,
        )
        if self.latency_by not in (None, *LATENCY_BY):
            raise ConfigError(
                f"method.latency_by must be {' or '.join(LATENCY_BY)}, got {self.latency_by!r}"
            )
        check_range("latency_points", self.latency_points, 2, nullable=True)
        check_range("latency_tolerance", self.latency_tolerance, 0.0, low_open=True, nullable=True)
        check_range("latency_tries", self.latency_tries, 1, nullable=True)
        if self.latency_solver not in (None, *LATENCY_SOLVERS):
            raise ConfigError(
                f"method.latency_solver must be {' or '.join(LATENCY_SOLVERS)}, "
                f"got {self.latency_solver!r}"
            )

    @property
    def latency_choice(self) -> str:
        """``latency_by`` with its default."""
        return self.latency_by or "knapsack"

    @property
    def tolerance(self) -> float:
        """``latency_tolerance`` with its default."""
        return 0.03 if self.latency_tolerance is None else self.latency_tolerance

    @property
    def tries(self) -> int:
        """``latency_tries`` with its default."""
        return LATENCY_TRIES if self.latency_tries is None else self.latency_tries


def dense_reference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with freshly initialised parameters and BatchNorm statistics: the
    dense network a thin one's latency is compared with.

    Not ``model`` itself: its pruned channels are zero (masked, or zeroed before thinning), and
    on the CPU zeros make some kernels cheaper than they are on a dense network's values (max
    pooling compares them: 73 against 137 ms in ten VGG-11 passes at batch 128 on one thread,
    the masked network against the dense one, in one process), so a ratio taken against the
    masked network comes out too high. Fresh weights time as trained ones do (within the noise
    of alternating measurements). The global random state is left as it was (seeded here, so
    the copy is the same on every call)."""
    ref = copy.deepcopy(model)
    ref.zero_grad(set_to_none=True)  # the last backward's gradients: memory the timing needs not
    # manual_seed seeds every CUDA device's generator: each is restored, not only the model's
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.manual_seed(0)
        for module in ref.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()  # BatchNorm's also resets its running statistics
    return ref


def time_pair(
    thin: nn.Module, dense: nn.Module, batch: Tensor, repeats: int
) -> tuple[float, float]:
    """One (thin ms, dense ms) pair, each the median of ``repeats`` passes. On the CPU the two
    networks' passes are interleaved (``structured.interleaved_ms``: a shared CPU's speed moves
    between the seconds of two back-to-back timings); on CUDA each is timed as
    ``structured.latency_ms`` times it (graphed, event-timed: steady to a percent), thin first."""
    if batch.is_cuda:
        return latency_ms(thin, batch, repeats), latency_ms(dense, batch, repeats)
    return interleaved_ms(thin, dense, batch, repeats)


def paired_timing(
    thin: nn.Module, dense: nn.Module, batch: Tensor, repeats: int, pairs: int = LATENCY_PAIRS
) -> PairedTiming:
    """``pairs`` pairs of :func:`time_pair`; their median ratio is the measured latency ratio
    (the step's calibration, ``finalize``'s record and the benchmark all measure this way)."""
    return time_pairs(lambda: time_pair(thin, dense, batch, repeats), pairs)


def widths_of(keep: Mapping[str, Tensor]) -> dict[str, int]:
    """Each unit's kept count."""
    return {r: int(k.sum()) for r, k in keep.items()}


class LatencyStep:
    """A run's latency state (its table, whether it warned) and its latency-budgeted steps.

    ``floor(channels)`` is the fewest filters a unit of ``channels`` keeps (``min_keep``'s),
    ``multiples(groups)`` the multiple each unit keeps, by root (``round_to``, or
    ``round_to_layers``' per-layer sizes), ``round_to`` the method's one multiple; all are the
    method's."""

    def __init__(
        self,
        settings: LatencySettings,
        floor: Callable[[int], int],
        multiples: Callable[[FilterGroups], Mapping[str, int]],
        round_to: int | None,
        min_keep: float,
    ) -> None:
        self.settings = settings
        self.floor = floor
        self.multiples = multiples
        self.round_to = round_to
        self.min_keep = min_keep
        #: the run's latency table (``latency.build_table``), built at the first need
        self.table: latency.LatencyTable | None = None
        #: the unreachable-latency warning is given once per run
        self.warned = False
        #: the last timed step's tries: (budget, measured), both as ratios to the dense latency
        #: (the budget to the table's dense prediction, the measurement to the timed dense one)
        self.calibration: list[tuple[float, float]] = []

    # --- measuring ----------------------------------------------------------------------------
    def inputs(self, ctx: PruneContext) -> tuple[Tensor, Tensor]:
        """(one example, the ``latency_batch`` batch) of training inputs, on ctx's device."""
        x, _ = next(iter(ctx.batches(1)))
        n = self.settings.latency_batch
        batch = torch.cat([x] * math.ceil(n / len(x)))
        return x[:1], batch[:n]

    def timing(self, dense: nn.Module, thin: nn.Module, batch: Tensor) -> PairedTiming:
        """``LATENCY_PAIRS`` timings of ``thin`` beside ``dense`` on ``batch``."""
        return paired_timing(thin, dense, batch, self.settings.latency_repeats)

    def table_for(self, groups: FilterGroups, ctx: PruneContext) -> latency.LatencyTable:
        """The run's latency table: built once (read from the cache when another run of the
        same model, device and setting measured it), on the dense architecture; the masks do
        not change what it measures (layer shapes). Every rank of a data-parallel run that
        prunes inside training measures one; rank 0's is the one they all select by."""
        if self.table is None:
            example, _ = self.inputs(ctx)
            channels = {u.root: u.channels for u in groups.units}
            s = self.settings
            setting = latency.LatencySetting(
                batch=s.latency_batch,
                input_shape=tuple(example.shape[1:]),
                device=ctx.device.type,
                repeats=s.latency_repeats,
            )
            multiples = dict(self.multiples(groups))
            # where every unit keeps ``round_to``'s multiple the table is keyed by it, as it
            # always was, so the tables cached before per-layer sizes existed stay valid
            one = self.round_to or 1
            uniform = all(m == one for m in multiples.values())
            round_to = self.round_to if uniform else multiples
            self.table = latency.build_table(
                groups.model,
                groups,
                example,
                setting,
                round_to=round_to,
                points=s.latency_points or 8,
                cache_dir=ctx.cache_dir,
                floor_of=lambda root: self.floor(channels[root]),
            )
            self.table = ctx.agree(self.table)
        return self.table

    # --- selecting ----------------------------------------------------------------------------
    def dense_predicted(self, groups: FilterGroups, ctx: PruneContext) -> float:
        """The table's prediction for the dense widths: budgets are fractions of it."""
        return self.table_for(groups, ctx).predict({u.root: u.channels for u in groups.units})

    def budget_units(
        self, groups: FilterGroups, device_keep: Keep, channel_scores: Mapping[str, Tensor]
    ) -> list[BudgetUnit]:
        """The units as the knapsack sees them: scores, channels kept now, floors, block sizes
        (on the host: the knapsack loops over channels in Python)."""
        scores = {r: s.detach().cpu().tolist() for r, s in channel_scores.items()}
        multiples = self.multiples(groups)
        return [
            BudgetUnit(
                u.root,
                scores[u.root],
                device_keep[u.root].cpu().tolist(),
                self.floor(u.channels),
                multiples[u.root],
            )
            for u in groups.units
        ]

    def select(
        self,
        groups: FilterGroups,
        units: list[BudgetUnit],
        ctx: PruneContext,
        budget_ms: float,
        by_fraction: Callable[[float], Keep],
    ) -> Keep:
        """One selection under ``budget_ms`` of the table's ms, by the table alone (no timing):
        the knapsack over ``units``, or ``by_fraction`` (the method's ranking at a filter
        fraction) at the fraction bisected to the budget."""
        table = self.table_for(groups, ctx)
        if self.settings.latency_choice == "fraction":
            f = bisect_fraction(lambda f: widths_of(by_fraction(f)), table.predict, budget_ms)
            return by_fraction(f)
        solver = solve_dp if self.settings.latency_solver == "dp" else solve
        chosen = solver(units, table.predict, budget_ms)  # each unit carries its block size
        return {r: torch.tensor(k, dtype=torch.bool) for r, k in chosen.keep.items()}

    def choose(
        self,
        groups: FilterGroups,
        device_keep: Keep,
        channel_scores: Mapping[str, Tensor],
        ctx: PruneContext,
        ratio: float,
        by_fraction: Callable[[float], Keep],
        *,
        timed: bool = True,
    ) -> Keep:
        """The kept channels of each unit for a thin network at ``ratio`` of the dense one's
        latency: selected under the table's prediction, measured, selected again with a
        corrected budget while off by more than ``latency_tolerance`` (``calibrate``).
        ``timed=False``: the first selection alone, neither timed nor corrected (crossword
        checks its candidates' accuracy on these)."""
        s = self.settings
        table = self.table_for(groups, ctx)
        dense_predicted = self.dense_predicted(groups, ctx)
        units = self.budget_units(groups, device_keep, channel_scores)

        def select(budget_ms: float) -> Keep:
            return self.select(groups, units, ctx, budget_ms, by_fraction)

        if not timed:
            return {
                r: k.to(device_keep[r].device) for r, k in select(ratio * dense_predicted).items()
            }
        example, batch = self.inputs(ctx)

        dense = dense_reference(groups.model)  # an earlier round's zeros would flatter it

        def measure(keep: Keep) -> float:
            # every rank of a data-parallel run times for itself: rank 0's ratio decides, so
            # that the ranks' next selections (and their masks) stay the same
            return float(
                ctx.agree(self.timing(dense, groups.thin(dict(keep), example), batch).ratio)
            )

        def same(a: Keep, b: Keep) -> bool:
            return all(torch.equal(a[r].cpu(), b[r].cpu()) for r in a)

        # a correction moves the budget at most halfway from the target to the dense latency:
        # a timing that says "prune nothing" for a target below 1 is a busy machine's
        most = dense_predicted * (1 + ratio) / 2
        budget = ratio * dense_predicted
        found = calibrate(select, measure, budget, ratio, s.tolerance, s.tries, same, most)
        keep = found.chosen
        predicted = table.predict(widths_of(keep))
        self.calibration = [(b / dense_predicted, m) for b, m in found.history]
        log.info(
            "latency step: %.3f of the dense latency targeted, %.3f measured after %d "
            "selection(s) (the table predicts %.4g of its %.4g ms; budget -> measured: %s)",
            ratio,
            found.measured,
            found.tries,
            predicted,
            dense_predicted,
            ", ".join(f"{b:.3f} -> {m:.3f}" for b, m in self.calibration),
        )
        at_floors = widths_of(keep) == min_widths(units)
        if at_floors and found.measured > ratio * (1 + s.tolerance):
            self.warn(predicted, found.measured, ratio)
        return {r: k.to(device_keep[r].device) for r, k in keep.items()}

    # --- reporting ----------------------------------------------------------------------------
    def warn(self, predicted_ms: float, reached: float, ratio: float) -> None:
        """Say once that the per-unit floors keep the latency target out of reach."""
        if self.warned:
            return
        self.warned = True
        log.warning("%s", self.message(predicted_ms, reached, ratio))

    def message(self, predicted_ms: float, reached: float, ratio: float) -> str:
        """The unreachable-latency warning: what was asked, and what the floors allow."""
        return (
            f"method.latency_target={self.settings.latency_target:g} cannot be reached (this "
            f"step aimed at {ratio:g}): every unit keeps floor(min_keep * filters) + 1 of its "
            f"filters (method.min_keep={self.min_keep:g}), where the thin network's "
            f"latency is {reached:.3f} of the dense one's, measured ({predicted_ms:.4g} ms "
            "predicted by the table); pruning stops at the floors (lower method.min_keep or "
            "raise method.latency_target)"
        )

    def info(
        self,
        groups: FilterGroups,
        keep: Mapping[str, Tensor],
        ctx: PruneContext,
        thin_ms: float,
        dense_ms: float,
        fewest: Mapping[str, int],
    ) -> dict[str, Any]:
        """The latency target's entries of ``method_info``: the table's prediction for the final
        widths and its error against the measured thin latency, as ratios to the dense latency
        (the table's own, and ``dense_ms`` timed beside ``thin_ms``: a load that changed since
        the table was measured scales both timings alike), the table itself, and a warning
        where the floors (``fewest``: each unit's fewest filters, the method's) kept the target
        out of reach."""
        s = self.settings
        target = s.latency_target
        assert target is not None
        reached = thin_ms / dense_ms
        table = self.table_for(groups, ctx)
        widths = {u.root: int(keep[u.root].sum()) for u in groups.units}
        predicted = float(table.predict(widths))
        info: dict[str, Any] = {
            "latency_target": target,
            "latency_by": s.latency_choice,
            "latency_solver": s.latency_solver or "greedy",
            "latency_tolerance": s.tolerance,
            "latency_tries": s.tries,
            "latency_calibration": [list(pair) for pair in self.calibration],
            "latency_predicted_ms": predicted,
            "latency_table_error": latency.measure_thin_error(table, widths, thin_ms, dense_ms),
            "latency_table": table.describe(),
        }
        at_floors = widths == dict(fewest)
        if at_floors and reached > target * (1 + s.tolerance):
            info["latency_warning"] = self.message(predicted, reached, target)
            self.warn(predicted, reached, target)
        return info
