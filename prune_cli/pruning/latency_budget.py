"""Choosing filters under a latency budget: the latency-saliency knapsack of HALP (Shen et al.,
"Structural Pruning via Latency-Saliency Knapsack", NeurIPS 2022), and what ``method=filter``
needs around it (the equal-latency fraction baseline, calibration on measured latency, the
median of paired thin / dense timings, the early schedule's per-round targets).

The problem: each prunable unit (a coupled group of ``FilterGroups``) keeps some of its
channels; maximise the summed importance of the kept channels subject to
``predict(widths) <= budget``, where ``predict`` is a latency table's prediction of the thin
network (``prune_cli.pruning.latency``) from each unit's kept count. A layer's cost depends on
the kept channels of two units (its input and its output), so the costs are not additive: a
channel's latency cost depends on how wide its neighbours are kept. Here blocks of channels
are removed one at a time by the smallest ratio of importance lost to latency saved (HALP's
latency-saliency trade-off, applied greedily), the saving read from ``predict`` at the current
widths, so a unit whose neighbours got thinner is re-priced; once the budget holds, removed
blocks are given back, the most important first, while it still holds, and a local search
takes one block out of a unit and gives back what then fits elsewhere while that adds
importance. It is a heuristic, not an exact solver: on random 3-unit problems small enough to
enumerate it finds the optimum in 9 of 10 (additive or bilinear costs), and misses it by 2% of
the importance on average where it does not (14% at worst; a strong product term, where the
optimum keeps the other unit wide, is the typical miss). ResNet-56's 27 units and 1,008
channels take about 2 s at ``step`` 1 on one CPU core (0.25 s at 8). :func:`solve_dp` is
HALP's way instead (``method.latency_solver=dp``): dynamic programming on costs linearised at
the current counts, from the greedy's selection, never keeping less importance than it. The
scores are whatever registered filter measure the run uses (``halp`` is HALP's own).

Every unit keeps a multiple of its block size (``BudgetUnit.step``: ``method.round_to``, or
``method.round_to_layers``' per-layer sizes, HALP's channel groups; else the solver's ``step``)
or all of its channels, never fewer than its ``floor`` (``min_keep``), and only channels it
keeps now (masks only shrink). A unit
drops its lowest-scored kept channels first; ties go by unit order, then by channel index, so
the result is deterministic. This module imports no torch: scores and masks are plain lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

Predict = Callable[[Mapping[str, int]], float]

#: relative slack of the budget test: a float sum that equals the budget counts as within it
_SLACK = 1e-12


@dataclass
class BudgetUnit:
    """One prunable unit as the knapsack sees it."""

    root: str
    #: importance of each channel (any registered filter measure, or the Crossword metric)
    scores: list[float]
    #: the channels kept now: a channel pruned before is never restored
    kept: list[bool]
    #: the fewest channels the unit may keep (``min_keep``'s floor)
    floor: int
    #: the unit keeps a multiple of this many channels (or all of them); None: the solver's
    #: ``step``. HALP sizes these per layer (32-128 channels on ResNet-50) where one size for
    #: every layer would be too coarse for the thin ones or too fine for the wide ones.
    step: int | None = None


@dataclass
class Selection:
    """What the knapsack chose."""

    #: kept channels of each unit (a subset of what ``BudgetUnit.kept`` held)
    keep: dict[str, list[bool]]
    #: kept count of each unit
    widths: dict[str, int]
    #: the prediction for ``widths``
    predicted_ms: float
    #: summed importance of the kept channels
    importance: float
    #: whether ``predicted_ms <= budget``; False: every unit is at its floor and it is more
    within: bool


def next_count(kept: int, step: int) -> int:
    """The kept count after removing one block from a unit that keeps ``kept``: the largest
    multiple of ``step`` below it (the first removal from a count that is no multiple, such as
    the full width, rounds down to one)."""
    return step * (math.ceil(kept / step) - 1)


def block_size(unit: BudgetUnit, step: int = 1) -> int:
    """The multiple ``unit`` keeps: its own ``step``, else the solver's."""
    size = step if unit.step is None else unit.step
    if size < 1:
        raise ValueError(f"unit {unit.root}: the block size must be >= 1, got {size}")
    return size


def _within(predicted: float, budget: float) -> bool:
    return predicted <= budget + _SLACK * abs(budget)


class _State:
    """The kept counts of all units and each unit's channels in pruning order."""

    def __init__(self, units: Sequence[BudgetUnit], step: int) -> None:
        self.units = list(units)
        #: each unit's block size
        self.steps = [block_size(u, step) for u in self.units]
        # each unit's kept channels, most important first; removals take them from the end,
        # so of equal scores the lower channel goes first (as ``FilterPruning.choose`` ranks)
        self.order: list[list[int]] = []
        # prefix[i][m]: summed importance of unit i's m most important kept channels
        self.prefix: list[list[float]] = []
        for u in self.units:
            if len(u.scores) != len(u.kept):
                raise ValueError(f"unit {u.root}: {len(u.scores)} scores, {len(u.kept)} masks")
            kept = [ch for ch in range(len(u.kept)) if u.kept[ch]]
            ascending = sorted(kept, key=lambda ch, s=u.scores: (s[ch], ch))
            descending = ascending[::-1]
            sums = [0.0]
            for ch in descending:
                sums.append(sums[-1] + float(u.scores[ch]))
            self.order.append(descending)
            self.prefix.append(sums)
        self.counts = [len(o) for o in self.order]
        self.widths = {u.root: n for u, n in zip(self.units, self.counts, strict=True)}
        #: counts before each removal, per unit: what a give-back restores (last first)
        self.removed: list[list[int]] = [[] for _ in self.units]

    def lower(self, i: int) -> int | None:
        """Unit i's count after one more removal, or None at its floor."""
        m = next_count(self.counts[i], self.steps[i])
        return m if m >= max(1, self.units[i].floor) else None

    def lost(self, i: int, m: int) -> float:
        """Importance unit i loses going from its count to ``m`` (negative: it gains)."""
        return self.prefix[i][self.counts[i]] - self.prefix[i][m]

    def set(self, i: int, m: int) -> None:
        self.counts[i] = m
        self.widths[self.units[i].root] = m

    def importance(self) -> float:
        return sum(p[n] for p, n in zip(self.prefix, self.counts, strict=True))

    def selection(self, predicted: float, within: bool) -> Selection:
        keep = {}
        for u, order, n in zip(self.units, self.order, self.counts, strict=True):
            mask = [False] * len(u.kept)
            for ch in order[:n]:
                mask[ch] = True
            keep[u.root] = mask
        return Selection(keep, dict(self.widths), predicted, self.importance(), within)


def _try(state: _State, predict: Predict, i: int, m: int) -> float:
    """The prediction with unit i at count ``m``, the others as they are (state unchanged)."""
    before = state.counts[i]
    state.set(i, m)
    try:
        return float(predict(state.widths))
    finally:
        state.set(i, before)


def _remove_until_within(state: _State, predict: Predict, budget: float, now: float) -> float:
    """Greedy removal by the smallest importance lost per ms saved until the budget holds (or
    every unit is at its floor); returns the prediction reached."""
    while not _within(now, budget):
        best: tuple[float, float, int] | None = None
        best_m = best_p = 0
        for i in range(len(state.units)):
            m = state.lower(i)
            if m is None:
                continue
            p = _try(state, predict, i, m)
            saved, lost = now - p, state.lost(i, m)
            # a removal the table sees no saving in comes last (it may open a step further on)
            key = (lost / saved, 0.0, i) if saved > 0 else (math.inf, lost, i)
            if best is None or key < best:
                best, best_m, best_p = key, m, p
        if best is None:
            break  # every unit at its floor
        i = best[2]
        state.removed[i].append(state.counts[i])
        state.set(i, best_m)
        now = best_p
    return now


def _give_back(
    state: _State, predict: Predict, budget: float, now: float, skip: int | None = None
) -> float:
    """Restore removed blocks, the most important first, while the budget holds (none of unit
    ``skip``)."""
    while True:
        candidates = sorted(
            (-(state.prefix[i][stack[-1]] - state.prefix[i][state.counts[i]]), i)
            for i, stack in enumerate(state.removed)
            if stack and i != skip
        )
        for _, i in candidates:
            p = _try(state, predict, i, state.removed[i][-1])
            if _within(p, budget):
                state.set(i, state.removed[i].pop())
                now = p
                break
        else:
            return now


def _remove_one(state: _State, i: int, m: int) -> None:
    state.removed[i].append(state.counts[i])
    state.set(i, m)


def _move(state: _State, predict: Predict, budget: float, i: int) -> tuple[float, float] | None:
    """Take one block out of unit i, then give back what fits in the other units; (importance,
    prediction) reached, the state changed, or None (state unchanged) if unit i is at its
    floor."""
    m = state.lower(i)
    if m is None:
        return None
    p = _try(state, predict, i, m)
    _remove_one(state, i, m)
    p = _give_back(state, predict, budget, p, skip=i)
    return state.importance(), p


def _exchange(state: _State, predict: Predict, budget: float, now: float, rounds: int) -> float:
    """Local search after the greedy pass: take one block out of some unit and give back what
    then fits in the others, keeping the best such move while it raises the summed importance
    (at most ``rounds`` moves). It mends some of the greedy pass's mistakes on whole blocks (a
    ratio rule is optimal only for divisible items) and on coupled costs."""
    for _ in range(rounds):
        base = state.importance()
        snapshot = (list(state.counts), [list(r) for r in state.removed])
        best: tuple[float, int] | None = None
        for i in range(len(state.units)):
            moved = _move(state, predict, budget, i)
            if moved is not None and moved[0] > base + 1e-12 * max(1.0, abs(base)):
                key = (-moved[0], i)
                best = key if best is None or key < best else best
            _restore(state, snapshot)
        if best is None:
            return now
        moved = _move(state, predict, budget, best[1])
        assert moved is not None
        now = _give_back(state, predict, budget, moved[1])
    return now


def _restore(state: _State, snapshot: tuple[list[int], list[list[int]]]) -> None:
    counts, removed = snapshot
    for k, n in enumerate(counts):
        state.set(k, n)
    state.removed = [list(r) for r in removed]


def solve(
    units: Sequence[BudgetUnit],
    predict: Predict,
    budget_ms: float,
    *,
    step: int = 1,
    exchanges: int | None = None,
) -> Selection:
    """The channels each unit keeps, maximising the summed importance of the kept channels with
    ``predict(widths) <= budget_ms``. ``exchanges`` bounds the rounds of pairwise swaps after
    the greedy pass and the give-back (default: the number of units). If the floors cannot
    reach the budget, every unit stops at its floor and ``within`` is False."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if not budget_ms > 0 or not math.isfinite(budget_ms):
        raise ValueError(f"the latency budget must be a positive number of ms, got {budget_ms}")
    state = _State(units, step)
    now = float(predict(state.widths))
    now = _remove_until_within(state, predict, budget_ms, now)
    if not _within(now, budget_ms):
        return state.selection(now, False)
    now = _give_back(state, predict, budget_ms, now)
    rounds = len(state.units) if exchanges is None else exchanges
    now = _exchange(state, predict, budget_ms, now, rounds)
    return state.selection(now, True)


def reachable_counts(kept: int, step: int, floor: int) -> list[int]:
    """The counts a unit keeping ``kept`` channels can be pruned to, widest (``kept``) first:
    one block less each, never under ``floor`` (nor under 1)."""
    counts = [kept]
    while (m := next_count(counts[-1], step)) >= max(1, floor):
        counts.append(m)
    return counts


def _options(state: _State, i: int) -> list[int]:
    """Unit i's reachable counts, from what it keeps now down to its floor, widest first."""
    return reachable_counts(len(state.order[i]), state.steps[i], state.units[i].floor)


def _at(state: _State, counts: Sequence[int]) -> None:
    """Put every unit at ``counts``, with the counts above each on its give-back stack."""
    for i, m in enumerate(counts):
        state.set(i, m)
        state.removed[i] = [c for c in _options(state, i) if c > m]  # the smallest last


def _linearised_choice(
    state: _State, predict: Predict, budget: float, options: list[list[int]], bins: int
) -> list[int] | None:
    """HALP's knapsack step: every unit's latency cost priced with the other units at their
    current counts (so a layer between two units is priced by the one that changes), the
    multiple-choice knapsack over the units' counts solved exactly on a budget cut into
    ``bins`` (each cost rounded up: what fits here fits the linearised budget), by dynamic
    programming; the counts it keeps, or None where even the floors exceed the budget."""
    now = float(predict(state.widths))
    values, costs = [], []
    for i, opts in enumerate(options):
        priced = [_try(state, predict, i, m) for m in opts]
        floor = priced[-1]
        # >= 0 for a latency table (it never charges a removal); a negative one, from a
        # predictor that does, takes no bin below (it counts as free)
        costs.append([p - floor for p in priced])
        values.append([state.prefix[i][m] for m in opts])
    # the linearised latency of counts m: now + sum over units of cost(m_i) - cost(current_i)
    capacity = (
        budget
        - now
        + sum(c[opts.index(n)] for c, opts, n in zip(costs, options, state.counts, strict=True))
    )
    if capacity < 0:
        return None
    unit = capacity / bins if capacity > 0 else 1.0

    def bins_of(cost: float) -> int:  # rounded up: what fits in the bins fits the budget
        return math.ceil(cost / unit - 1e-9) if cost > 0 else 0

    best = np.zeros(bins + 1)  # best[b]: the most importance within b bins (no units yet)
    picks = []
    for value, cost in zip(values, costs, strict=True):
        row = np.full(bins + 1, -np.inf)
        pick = np.zeros(bins + 1, dtype=np.int64)
        for k, (v, c) in enumerate(zip(value, cost, strict=True)):
            need = bins_of(c)
            if need > bins:
                continue
            shifted = np.full(bins + 1, -np.inf)
            shifted[need:] = best[: bins + 1 - need] + v
            better = shifted > row  # of equal importance, the wider count (listed first)
            row = np.where(better, shifted, row)
            pick = np.where(better, k, pick)
        best = row
        picks.append(pick)
    if not np.isfinite(best[bins]):
        return None
    chosen, b = [0] * len(options), bins
    for i in range(len(options) - 1, -1, -1):
        k = int(picks[i][b])
        chosen[i] = options[i][k]
        b -= bins_of(costs[i][k])
    return chosen


def solve_dp(
    units: Sequence[BudgetUnit],
    predict: Predict,
    budget_ms: float,
    *,
    step: int = 1,
    bins: int = 2048,
    rounds: int = 4,
) -> Selection:
    """HALP's solver, ``method.latency_solver=dp``: the knapsack over the units' counts solved
    exactly (dynamic programming) on latency costs linearised at the current counts, starting
    at :func:`solve`'s selection and priced again at each solution (``rounds`` at most, until
    the counts repeat), then the greedy's repair where the coupled prediction still exceeds the
    budget, its give-back and local search. The better of that and :func:`solve`'s selection
    (the more importance kept within the budget) is returned, so it never keeps less.

    With additive costs (no layer between two units) one round is exact up to the budget's cut
    into ``bins``; with coupled ones each round is exact for the costs at the counts it starts
    from, which HALP's own schedule re-prices over its 30 small steps.

    As NVlabs/HALP's code (``prune/pruner.py``, ``_knapsack``; ``prune/cost.py``) does it, and
    where this differs: HALP prices a layer with its input width frozen at the previous unit's
    current count (the same linearisation), its items are blocks of 32-128 channels of a layer
    in importance order (here each unit's ``step``; ``method.round_to_layers`` gives HALP's
    sizes), each costing the table's step T(in, N - g i) - T(in, N - g (i + 1)), and its 0/1
    programme (latency scaled by 1000 and rounded) lets a block in only after the
    layer's previous one, a rule checked on the stored optimum alone, so its prefix is not
    exactly enforced. Here the choices are the units' counts themselves (a multiple-choice
    knapsack: every choice is a prefix by construction), costs are rounded up, never down, and
    the per-unit floors hold (HALP has none by default: a layer may go entirely). HALP does not
    repair the coupled latency after a step (it logs it); here the greedy's repair does."""
    greedy = solve(units, predict, budget_ms, step=step)
    if not greedy.within:
        return greedy
    state = _State(units, step)
    options = [_options(state, i) for i in range(len(state.units))]
    counts = [greedy.widths[u.root] for u in state.units]
    _at(state, counts)
    for _ in range(max(1, rounds)):
        chosen = _linearised_choice(state, predict, budget_ms, options, bins)
        if chosen is None or chosen == state.counts:
            break
        _at(state, chosen)
    now = _remove_until_within(state, predict, budget_ms, float(predict(state.widths)))
    if not _within(now, budget_ms):
        return greedy
    now = _give_back(state, predict, budget_ms, now)
    now = _exchange(state, predict, budget_ms, now, len(state.units))
    found = state.selection(now, True)
    return (
        found if found.importance > greedy.importance + 1e-12 * abs(greedy.importance) else greedy
    )


def knapsack(
    units: Sequence[BudgetUnit],
    predict: Predict,
    budget_ms: float,
    *,
    step: int = 1,
) -> tuple[dict[str, int], float]:
    """Kept count of each unit maximising the summed importance of the kept channels with
    predict(widths) <= budget_ms; returns (widths, predicted ms). :func:`solve` says which
    channels."""
    chosen = solve(units, predict, budget_ms, step=step)
    return chosen.widths, chosen.predicted_ms


def min_widths(units: Sequence[BudgetUnit], step: int = 1) -> dict[str, int]:
    """The fewest channels each unit can keep: the smallest multiple of its block size (its own
    ``step``, else ``step``) reachable from its kept count without going under its floor (its
    kept count if none is)."""
    return {u.root: reachable_counts(sum(u.kept), block_size(u, step), u.floor)[-1] for u in units}


def bisect_fraction(
    widths_at: Callable[[float], Mapping[str, int]],
    predict: Predict,
    budget_ms: float,
    iterations: int = 40,
) -> float:
    """The smallest pruning fraction f in [0, 1] whose widths ``widths_at(f)`` the table
    predicts within ``budget_ms`` (1 if none is: the floors then keep the budget out of reach).
    The prediction falls as f grows, so f is found by bisection."""
    if _within(predict(widths_at(0.0)), budget_ms):
        return 0.0
    if not _within(predict(widths_at(1.0)), budget_ms):
        return 1.0
    low, high = 0.0, 1.0  # predict(low) above the budget, predict(high) within it
    for _ in range(iterations):
        middle = (low + high) / 2
        if _within(predict(widths_at(middle)), budget_ms):
            high = middle
        else:
            low = middle
    return high


T = TypeVar("T")


@dataclass
class Calibrated(Generic[T]):
    """The best of the tries: its selection, what was measured, and how many tries were made."""

    chosen: T
    measured: float
    tries: int
    #: every try's (budget given to the selection, measured)
    history: list[tuple[float, float]]


def next_budget(history: Sequence[tuple[float, float]], target: float) -> float:
    """The budget of the next selection, from the (budget, measured) of the tries so far: a
    secant through two of them (the two closest to ``target`` on either side of it if there
    are such, else the last two), where the measured latency grows with the budget between
    them; otherwise (one try, or a pair that noise or a discrete step left flat or inverted)
    the last budget scaled by target / measured.

    A table that misses a fixed cost (element-wise layers, memory traffic it does not see)
    makes the measured latency an affine function of the budget, not a multiple of it: the
    scaling then closes only part of the gap per try (at 0.3 + 0.6 x of the budget's ratio x,
    aiming at 0.5, it measures 0.600, 0.550, 0.527), where the secant is exact at the second
    correction."""
    budget, measured = history[-1]
    scaled = budget * target / measured if measured > 0 else budget
    if len(history) < 2:
        return scaled
    below = [h for h in history if h[1] < target]
    above = [h for h in history if h[1] >= target]
    if below and above:
        a = max(below, key=lambda h: h[1])
        b = min(above, key=lambda h: h[1])
    else:
        a, b = history[-2], history[-1]
    slope = (b[1] - a[1]) / (b[0] - a[0]) if a[0] != b[0] else 0.0
    if slope <= 0:
        return scaled
    return b[0] + (target - b[1]) / slope


def calibrate(
    select: Callable[[float], T],
    measure: Callable[[T], float],
    budget_ms: float,
    target: float,
    tolerance: float,
    tries: int = 3,
    same: Callable[[T, T], bool] | None = None,
    most_ms: float | None = None,
) -> Calibrated[T]:
    """Select under ``budget_ms`` (the table's ms), measure the result (ms, or a ratio to the
    dense network's: ``target`` is in the same unit), and while the measurement is off
    ``target`` by more than ``tolerance`` (relative), select again under the budget
    :func:`next_budget` gives, at most ``tries`` selections; the closest one wins. The table's
    error is then corrected by the device itself. ``same`` tells two selections apart: a
    selection equal to an earlier one (the floors reached, say) ends the search.

    One correction moves the budget by a factor of 2 at most either way, and never above
    ``most_ms`` (``method=filter`` passes halfway from the target to the table's dense
    prediction): a measurement that a busy machine slowed (a shared CPU can stall single passes
    by 100x for seconds) must not turn the next try into no pruning."""
    history: list[tuple[float, float]] = []
    chosen: list[T] = []
    budget = budget_ms
    for _ in range(max(1, tries)):
        pick = select(budget)
        if same is not None and any(same(pick, c) for c in chosen):
            break
        measured = float(measure(pick))
        history.append((budget, measured))
        chosen.append(pick)
        if abs(measured / target - 1) <= tolerance or measured <= 0:
            break
        budget = min(2.0 * budget, max(0.5 * budget, next_budget(history, target)))
        if most_ms is not None:
            budget = min(budget, most_ms)
    best = min(range(len(chosen)), key=lambda k: (abs(history[k][1] / target - 1), k))
    return Calibrated(chosen[best], history[best][1], len(chosen), history)


@dataclass
class PairedTiming:
    """Latency ratios (thin / dense) from pairs of timings taken back to back: a machine that
    slows down for a while (a shared CPU) slows both timings of a pair alike, where a dense
    time taken once would go stale, and the median pair is kept, as a slowdown may still begin
    between the two timings of one pair."""

    #: every pair's (thin ms, dense ms), in the order they were timed
    pairs: list[tuple[float, float]]

    @property
    def ratios(self) -> list[float]:
        """Each pair's thin / dense, in the order timed."""
        return [thin / dense for thin, dense in self.pairs]

    @property
    def median_pair(self) -> tuple[float, float]:
        """The (thin ms, dense ms) pair of the median ratio (the upper one of an even count)."""
        ratios = self.ratios
        order = sorted(range(len(ratios)), key=lambda k: (ratios[k], k))
        return self.pairs[order[len(order) // 2]]

    @property
    def ratio(self) -> float:
        """The median of the pairs' ratios."""
        thin, dense = self.median_pair
        return thin / dense

    @property
    def spread(self) -> tuple[float, float]:
        """The smallest and the largest of the pairs' ratios."""
        return min(self.ratios), max(self.ratios)


def time_pairs(time_pair: Callable[[], tuple[float, float]], pairs: int) -> PairedTiming:
    """``pairs`` timings of the thin and the dense network, one after the other; ``time_pair``
    returns one pair's (thin ms, dense ms)."""
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    timed = []
    for _ in range(pairs):
        thin, dense = time_pair()
        timed.append((float(thin), float(dense)))
    return PairedTiming(timed)


def early_round_latency(k: int, n: int, target: float) -> float:
    """The latency ratio (thin / dense) round k = 1..n of the early schedule aims at, for a final
    ``target``: the latency reduction r = 1 - target follows the curve the filter fraction
    follows (``flow.early_round_fraction``: r_k = r / (k r + n (1 - r)) of what remains, so the
    reduction after round k is k r / (k r + n (1 - r)), r after round n)."""
    if not 1 <= k <= n:
        raise ValueError(f"round {k} is outside 1..{n}")
    r = 1.0 - target
    denominator = k * r + n * (1 - r)
    return 1.0 - (0.0 if math.isclose(denominator, 0.0) else k * r / denominator)
