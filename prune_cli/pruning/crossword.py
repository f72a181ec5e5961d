"""The Crossword Puzzle metric search (seed 000, "The Crossword Puzzle: Simplifying Deep Neural
Network Pruning with Fabulous Coordinates", ICLR 2023 submission; METHODS.md section 8): building
blocks, a grammar of candidate metrics, a centralisation objective and a heuristic search.

The paper's exact metric and objective are not public; every choice here is explicit:

- **Blocks**: per-filter statistics of registered importance measures (L1, L2, geometric-median
  distance, |BN gamma|, Taylor, ...), one value per prunable filter of the model, with the layer
  (filter unit) each belongs to.
- **Grammar**: expressions over the blocks with ``add sub mul div`` (``div`` is safe: the
  denominator is kept at least ``EPS`` away from zero, with its sign), ``log`` (of |x| + EPS),
  ``sqrt`` (of |x|), ``abs``, and the per-layer normalisations ``z`` (z-score within the layer)
  and ``lnorm`` (divided by the layer's mean |x|). An expression is a tree of ``Expr`` nodes,
  written ``div(l1, z(fpgm))``; ``parse`` reads that form with a small recursive-descent parser
  (names and parentheses only: a string is never evaluated as code). Depth is bounded.
- **Objective** (rank-aware, the formulation chosen here): pruning ranks all filters of the model
  together, so any strictly increasing transform of a candidate prunes exactly the same filters,
  while a statistic of the raw values (kurtosis, say) can be raised at will by such a transform.
  The objective therefore reads only the candidate's global ranking: u = global rank / N of
  each filter (ties averaged), and the centralisation of each layer's u, averaged over layers
  weighted by their filters. It is invariant to every strictly increasing transform of the
  candidate (tested), and differs between candidates exactly when their rankings do. (The pooled
  distribution of u is uniform whatever the candidate, so the layer structure is the only shape
  left to judge.) Statistics: ``kurtosis`` (Pearson's: peaked with outliers; the default, as it
  varies continuously), ``mad_mass`` (the fraction within ``k`` MADs of the layer's median; k = 1
  gives 1/2 for any distribution and on quantiles in (0, 1] k = 3 saturates at 1, so k defaults
  to 2) and ``neg_cv`` (minus the coefficient of variation). The
  naive formulation (``space: value``: the statistic of the raw values, pooled over the model)
  is kept for comparison; it is the one a monotone transform games.
- **Search**: simulated annealing or a genetic algorithm over expressions, seeded, within a budget
  of candidates; the blocks themselves are the first candidates (the criteria the metric comes
  from compete with it); invalid candidates (non-finite or constant) and near-duplicates
  (Spearman correlation above 0.99 with an earlier kept candidate) are dropped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

EPS = 1e-8
UNARY = ("log", "sqrt", "abs", "z", "lnorm")
BINARY = ("add", "sub", "mul", "div")
STATISTICS = ("mad_mass", "kurtosis", "neg_cv")
SPACES = ("rank", "value")


# --- the grammar -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expr:
    """A block name (a leaf, no ``args``) or an operator applied to ``args``."""

    op: str
    args: tuple[Expr, ...] = ()

    def __str__(self) -> str:
        if not self.args:
            return self.op
        return f"{self.op}({', '.join(str(a) for a in self.args)})"

    def depth(self) -> int:
        return 1 + max((a.depth() for a in self.args), default=0)

    def nodes(self) -> list[tuple[tuple[int, ...], Expr]]:
        """Every subtree with its path of argument indices from the root."""
        out: list[tuple[tuple[int, ...], Expr]] = [((), self)]
        for i, a in enumerate(self.args):
            out += [((i, *path), sub) for path, sub in a.nodes()]
        return out

    def replace(self, path: tuple[int, ...], new: Expr) -> Expr:
        if not path:
            return new
        args = list(self.args)
        args[path[0]] = args[path[0]].replace(path[1:], new)
        return Expr(self.op, tuple(args))


def parse(text: str, blocks: list[str] | tuple[str, ...]) -> Expr:
    """``Expr`` of ``text`` such as ``div(l1, z(fpgm))``; names must be blocks or operators."""
    tokens: list[str] = []
    name = ""
    for ch in text:
        if ch.isalnum() or ch == "_":
            name += ch
            continue
        if name:
            tokens.append(name)
            name = ""
        if ch in "(),":
            tokens.append(ch)
        elif not ch.isspace():
            raise ValueError(f"unexpected {ch!r} in expression {text!r}")
    if name:
        tokens.append(name)
    pos = 0

    def node() -> Expr:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"expression {text!r} ends early")
        token = tokens[pos]
        pos += 1
        if token in blocks:
            return Expr(token)
        arity = 1 if token in UNARY else 2 if token in BINARY else 0
        if arity == 0:
            valid = ", ".join([*blocks, *UNARY, *BINARY])
            raise ValueError(f"unknown name {token!r} in {text!r}; valid: {valid}")
        expect("(")
        args = [node()]
        for _ in range(arity - 1):
            expect(",")
            args.append(node())
        expect(")")
        return Expr(token, tuple(args))

    def expect(token: str) -> None:
        nonlocal pos
        if pos >= len(tokens) or tokens[pos] != token:
            raise ValueError(f"expected {token!r} in expression {text!r}")
        pos += 1

    tree = node()
    if pos != len(tokens):
        raise ValueError(f"trailing tokens in expression {text!r}")
    return tree


def _per_layer(x: Tensor, layer: Tensor, n_layers: int, fn: str) -> Tensor:
    count = torch.zeros(n_layers, dtype=x.dtype, device=x.device).index_add_(
        0, layer, torch.ones_like(x)
    )
    if fn == "lnorm":  # x / mean |x| of the layer
        mean_abs = torch.zeros_like(count).index_add_(0, layer, x.abs()) / count
        return x / (mean_abs[layer] + EPS)
    mean = torch.zeros_like(count).index_add_(0, layer, x) / count
    var = torch.zeros_like(count).index_add_(0, layer, (x - mean[layer]) ** 2) / count
    return (x - mean[layer]) / (var[layer].sqrt() + EPS)  # z-score (population std)


def evaluate(expr: Expr, values: Mapping[str, Tensor], layer: Tensor, n_layers: int) -> Tensor:
    """The expression's value for every filter (float64); ``layer[i]`` is filter i's layer."""
    if not expr.args:
        return values[expr.op].to(torch.float64)
    a = [evaluate(x, values, layer, n_layers) for x in expr.args]
    op = expr.op
    if op == "add":
        return a[0] + a[1]
    if op == "sub":
        return a[0] - a[1]
    if op == "mul":
        return a[0] * a[1]
    if op == "div":  # the denominator at least EPS from zero, its sign kept (0 counts as +)
        b = a[1]
        return a[0] / torch.where(b < 0, torch.clamp(b, max=-EPS), torch.clamp(b, min=EPS))
    if op == "log":
        return torch.log(a[0].abs() + EPS)
    if op == "sqrt":
        return a[0].abs().sqrt()
    if op == "abs":
        return a[0].abs()
    if op in ("z", "lnorm"):
        return _per_layer(a[0], layer, n_layers, op)
    raise ValueError(f"unknown operator {op!r}")


# --- the objective -----------------------------------------------------------------------------
def ranks(v: Tensor) -> Tensor:
    """1-based ranks of ``v`` with ties averaged (as ``scipy.stats.rankdata``), float64."""
    v = v.to(torch.float64)
    order = torch.argsort(v, stable=True)
    sorted_v = v[order]
    # equal values form runs: each gets the mean of the positions of its run
    starts = torch.ones_like(sorted_v, dtype=torch.bool)
    starts[1:] = sorted_v[1:] != sorted_v[:-1]
    run = torch.cumsum(starts.long(), 0) - 1
    positions = torch.arange(1, len(v) + 1, dtype=torch.float64)
    n_runs = int(run[-1]) + 1
    sums = torch.zeros(n_runs, dtype=torch.float64).index_add_(0, run, positions)
    counts = torch.zeros(n_runs, dtype=torch.float64).index_add_(0, run, torch.ones_like(positions))
    out = torch.empty_like(positions)
    out[order] = (sums / counts)[run]
    return out


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation (Pearson's of the tie-averaged ranks); 0 for a constant."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return 0.0 if denominator == 0 else float((ra * rb).sum()) / denominator


def statistic(x: Tensor, name: str, k: float = 2.0) -> float:
    """Centralisation of the sample ``x``: higher = more concentrated around one centre."""
    x = x.to(torch.float64)
    if name == "mad_mass":
        median = x.median()
        mad = (x - median).abs().median()
        return float(((x - median).abs() <= k * mad).to(torch.float64).mean())
    if name == "kurtosis":  # Pearson's: E (x - mu)^4 / sigma^4 (3 for a normal distribution)
        centred = x - x.mean()
        var = (centred**2).mean()
        return 0.0 if float(var) == 0 else float((centred**4).mean() / var**2)
    if name == "neg_cv":
        mean = x.mean()
        return -float(x.std(correction=0) / mean.abs()) if float(mean) != 0 else -math.inf
    raise ValueError(f"unknown statistic {name!r}; valid: {', '.join(STATISTICS)}")


def centralisation(
    v: Tensor, layer: Tensor, n_layers: int, name: str, k: float = 2.0, space: str = "rank"
) -> float:
    """The objective of the values ``v`` of all filters (see the module docstring).

    ``rank``: the filters' global quantiles u = rank / N, the statistic of each layer's u,
    averaged over layers weighted by their filters (layers of one filter are left out).
    ``value``: the statistic of the raw values of all filters, pooled.
    """
    if space == "value":
        return statistic(v, name, k)
    u = ranks(v) / len(v)
    total, weight = 0.0, 0
    for i in range(n_layers):
        members = u[layer == i]
        if len(members) > 1:
            total += len(members) * statistic(members, name, k)
            weight += len(members)
    return total / max(1, weight)


# --- the search --------------------------------------------------------------------------------
def random_expr(rng: random.Random, blocks: list[str], depth: int) -> Expr:
    """A random expression of at most ``depth`` levels (leaves more likely as depth runs out)."""
    if depth <= 1 or rng.random() < 0.3:
        return Expr(rng.choice(blocks))
    if rng.random() < 0.4:
        return Expr(rng.choice(UNARY), (random_expr(rng, blocks, depth - 1),))
    return Expr(
        rng.choice(BINARY),
        (random_expr(rng, blocks, depth - 1), random_expr(rng, blocks, depth - 1)),
    )


def mutate(rng: random.Random, expr: Expr, blocks: list[str], max_depth: int) -> Expr:
    """A neighbour: one subtree replaced by a random one, or one operator or leaf changed,
    within ``max_depth``."""
    for _ in range(20):
        path, sub = rng.choice(expr.nodes())
        room = max_depth - len(path)
        kind = rng.random()
        if not sub.args or kind < 0.5:
            new = random_expr(rng, blocks, min(room, 2 if sub.args else room))
        elif len(sub.args) == 1:
            new = Expr(rng.choice(UNARY), sub.args)
        else:
            new = Expr(rng.choice(BINARY), sub.args)
        candidate = expr.replace(path, new)
        if candidate != expr and candidate.depth() <= max_depth:
            return candidate
    return random_expr(rng, blocks, max_depth)


def crossover(rng: random.Random, a: Expr, b: Expr, max_depth: int) -> Expr:
    """``a`` with one of its subtrees replaced by one of ``b``'s, within ``max_depth``."""
    for _ in range(20):
        path, _ = rng.choice(a.nodes())
        _, donor = rng.choice(b.nodes())
        child = a.replace(path, donor)
        if child.depth() <= max_depth:
            return child
    return a


@dataclass
class Candidate:
    """One evaluated candidate of the search log."""

    index: int
    expr: Expr
    #: ``kept``, ``near-duplicate of #j`` or ``invalid: why``
    status: str
    objective: float | None = None
    values: Tensor | None = field(default=None, repr=False)

    @property
    def kept(self) -> bool:
        return self.status == "kept"


class Pool:
    """Evaluates candidates within a budget: the objective of each new expression, invalid and
    near-duplicate ones dropped (an expression already seen is answered from the log, free)."""

    def __init__(
        self,
        values: Mapping[str, Tensor],
        layer: Tensor,
        n_layers: int,
        objective: Callable[[Tensor], float],
        budget: int,
        duplicate: float = 0.99,
    ) -> None:
        self.values, self.layer, self.n_layers = values, layer, n_layers
        self.objective = objective
        self.budget = budget
        self.duplicate = duplicate
        self.log: list[Candidate] = []
        self.seen: dict[Expr, Candidate] = {}
        self._ranks: list[Tensor] = []  # centred, unit-norm ranks of the kept candidates
        self._kept: list[Candidate] = []

    @property
    def exhausted(self) -> bool:
        return len(self.log) >= self.budget

    def kept(self) -> list[Candidate]:
        return list(self._kept)

    def best(self) -> Candidate:
        return max(self._kept, key=lambda c: c.objective)  # type: ignore[arg-type, return-value]

    def try_(self, expr: Expr) -> Candidate:
        if expr in self.seen:
            return self.seen[expr]
        candidate = Candidate(len(self.log), expr, "kept")
        v = evaluate(expr, self.values, self.layer, self.n_layers)
        if not bool(torch.isfinite(v).all()):
            candidate.status = "invalid: not finite"
        elif float(v.max() - v.min()) == 0.0:
            candidate.status = "invalid: constant"
        else:
            r = ranks(v)
            r = r - r.mean()
            r = r / r.norm()
            if self._ranks:
                rho = torch.stack(self._ranks) @ r
                j = int(torch.argmax(rho))
                if float(rho[j]) > self.duplicate:
                    candidate.status = f"near-duplicate of #{self._kept[j].index}"
            if candidate.kept:
                candidate.objective = self.objective(v)
                candidate.values = v
                self._ranks.append(r)
                self._kept.append(candidate)
        self.log.append(candidate)
        self.seen[expr] = candidate
        return candidate


def _valid_random(rng: random.Random, pool: Pool, blocks: list[str], depth: int) -> Candidate:
    for _ in range(50):
        c = pool.try_(random_expr(rng, blocks, depth))
        if c.kept or pool.exhausted:
            return c
    return c


def anneal(
    pool: Pool,
    rng: random.Random,
    blocks: list[str],
    max_depth: int,
    t_start: float,
    t_end: float,
) -> None:
    """Simulated annealing: from the best candidate so far, move to a mutated neighbour when it
    is better, or with probability exp(delta / T) when worse; T falls geometrically from
    ``t_start`` to ``t_end`` over the budget. Dropped neighbours are rejected moves."""
    current = pool.best() if pool.kept() else _valid_random(rng, pool, blocks, max_depth)
    attempts = 0
    while not pool.exhausted and attempts < 50 * pool.budget:
        attempts += 1
        progress = len(pool.log) / pool.budget
        temperature = t_start * (t_end / t_start) ** progress
        c = pool.try_(mutate(rng, current.expr, blocks, max_depth))
        if not c.kept or c is current:
            continue
        delta = c.objective - current.objective  # type: ignore[operator]
        if delta >= 0 or rng.random() < math.exp(delta / temperature):
            current = c


def evolve(
    pool: Pool,
    rng: random.Random,
    blocks: list[str],
    max_depth: int,
    population: int,
    crossover_rate: float,
) -> None:
    """A genetic algorithm: tournament selection (3), subtree crossover with probability
    ``crossover_rate`` else mutation, elitist replacement (the best ``population`` of parents and
    children survive), until the budget is spent."""
    members = pool.kept()
    while len(members) < population and not pool.exhausted:
        c = _valid_random(rng, pool, blocks, max_depth)
        if c.kept and c not in members:
            members.append(c)
    members = sorted(members, key=lambda c: -c.objective)[:population]  # type: ignore[operator]

    def tournament() -> Candidate:
        return max(rng.sample(members, min(3, len(members))), key=lambda c: c.objective)  # type: ignore[arg-type, return-value]

    attempts = 0
    while not pool.exhausted and attempts < 50 * pool.budget:
        children: list[Candidate] = []
        while len(children) < population and not pool.exhausted and attempts < 50 * pool.budget:
            attempts += 1
            if rng.random() < crossover_rate and len(members) > 1:
                expr = crossover(rng, tournament().expr, tournament().expr, max_depth)
            else:
                expr = mutate(rng, tournament().expr, blocks, max_depth)
            c = pool.try_(expr)
            if c.kept and c not in members and c not in children:
                children.append(c)
        members = sorted(members + children, key=lambda c: -c.objective)[:population]  # type: ignore[operator]
