"""Issue 13: the Crossword Puzzle search: grammar, rank-aware objective, searches, the method."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from conftest import conv_bn_net, prune_context, run_config
from scipy.stats import kurtosis, rankdata, spearmanr
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.experiment import Experiment
from prune_cli.pruning.crossword import (
    EPS,
    Expr,
    Pool,
    anneal,
    centralisation,
    evaluate,
    evolve,
    parse,
    ranks,
    spearman,
    statistic,
)
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS, PruneContext
from prune_cli.pruning.methods.crossword import CrosswordConfig
from prune_cli.pruning.methods.filter_pruning import FilterConfig

BLOCKS = ["a", "b", "c"]


def layered(n_layers: int = 3, per_layer: int = 20, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    layer = torch.arange(n_layers).repeat_interleave(per_layer)
    values = {k: torch.rand(len(layer), generator=gen, dtype=torch.float64) + 0.1 for k in BLOCKS}
    return values, layer


# --- grammar ---------------------------------------------------------------------------------
def test_expressions_parse_print_and_evaluate_exactly():
    values = {"a": torch.tensor([1.0, 4.0, 9.0, 2.0]), "b": torch.tensor([2.0, 0.0, -3.0, 1.0])}
    layer = torch.tensor([0, 0, 1, 1])
    text = "add(mul(a, b), div(sqrt(a), b))"
    expr = parse(text, ["a", "b"])
    assert str(expr) == text and parse(str(expr), ["a", "b"]) == expr and expr.depth() == 4
    got = evaluate(expr, values, layer, 2)
    # div keeps the denominator EPS away from zero with its sign (0 counts as positive)
    expected = torch.tensor([2.0 + 1 / 2, 0.0 + 2 / EPS, -27.0 + 3 / -3.0, 2.0 + 2**0.5 / 1])
    assert torch.allclose(got, expected.to(torch.float64))
    assert torch.isfinite(evaluate(parse("log(sub(a, a))", ["a"]), values, layer, 2)).all()
    z = evaluate(parse("z(a)", ["a"]), values, layer, 2)  # per layer: (x - mean) / std
    assert torch.allclose(z, torch.tensor([-1.0, 1.0, 1.0, -1.0], dtype=torch.float64))
    lnorm = evaluate(parse("lnorm(b)", ["b"]), values, layer, 2)  # x / mean |x| of the layer
    assert torch.allclose(lnorm, torch.tensor([2.0, 0.0, -1.5, 0.5], dtype=torch.float64))


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "a + b",
        "exp(a)",
        "add(a)",
        "add(a, b) c",
        "mul(a, d)",
        "sqrt(a",
    ],
)
def test_the_grammar_refuses_what_it_does_not_define(text):
    with pytest.raises(ValueError):
        parse(text, ["a", "b", "c"])


# --- objective -------------------------------------------------------------------------------
def test_ranks_and_spearman_agree_with_scipy():
    v = torch.tensor([3.0, 1.0, 3.0, 2.0, 5.0, 1.0])
    w = torch.tensor([1.0, 2.0, 0.5, 4.0, 3.0, 2.0])
    assert torch.equal(ranks(v), torch.tensor(rankdata(v.numpy()), dtype=torch.float64))
    assert spearman(v, w) == pytest.approx(spearmanr(v.numpy(), w.numpy())[0])


def test_statistics_by_hand():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 100.0])
    # median 2, MAD = median(2, 1, 0, 1, 98) = 1: within 2 MADs are 0..4, four of five
    assert statistic(x, "mad_mass", k=2.0) == pytest.approx(0.8)
    assert statistic(x, "kurtosis") == pytest.approx(kurtosis(x.numpy(), fisher=False))
    assert statistic(x, "neg_cv") == pytest.approx(-float(x.std(correction=0) / x.mean()))


def centralised_and_spread():
    """Two layers of 40 filters. Spread: the layers interleave in the global ranking, so each
    layer's quantiles are uniform. Centralised: each layer's filters sit together in the ranking
    around one centre, with two outliers at the far ends."""
    layer = torch.arange(2).repeat_interleave(40)
    spread = torch.cat([torch.arange(0, 80, 2), torch.arange(1, 80, 2)]).to(torch.float64)
    inner = torch.linspace(30, 50, 38, dtype=torch.float64)
    low = torch.cat([torch.tensor([-100.0]), inner - 25, torch.tensor([200.0])])
    high = torch.cat([torch.tensor([-99.0]), inner + 25, torch.tensor([201.0])])
    return layer, spread, torch.cat([low, high])


@pytest.mark.parametrize("name", ["kurtosis", "mad_mass", "neg_cv"])
def test_the_objective_ranks_a_centralised_model_above_a_spread_one(name):
    layer, spread, central = centralised_and_spread()
    if name == "mad_mass":  # the mass within 2 MADs counts the absence of outliers: the
        # interleaved layers have none (uniform quantiles all lie within 2 MADs), the other has
        assert centralisation(spread, layer, 2, name) == 1.0
        assert centralisation(central, layer, 2, name) == pytest.approx(1 - 3 / 80)
    else:
        assert centralisation(central, layer, 2, name) > centralisation(spread, layer, 2, name)
    # by hand: each layer's quantiles u = global rank / 80, the statistic per layer, weighted
    u = ranks(central) / 80
    expected = (statistic(u[:40], name) + statistic(u[40:], name)) / 2
    assert centralisation(central, layer, 2, name) == pytest.approx(expected)
    uniform = torch.arange(1, 81, 2, dtype=torch.float64) / 80
    assert centralisation(spread, layer, 2, "kurtosis") == pytest.approx(
        kurtosis(uniform.numpy(), fisher=False)
    )


@pytest.mark.parametrize("name", ["kurtosis", "mad_mass", "neg_cv"])
def test_the_objective_is_invariant_to_monotone_transforms_and_only_to_them(name):
    values, layer = layered()
    v = values["a"]
    base = centralisation(v, layer, 3, name)
    for transformed in (v.exp(), v.log(), v**3, 7 * v - 2, torch.sigmoid(v)):
        assert centralisation(transformed, layer, 3, name) == pytest.approx(base, abs=1e-12)
    # the naive formulation on raw values is what a monotone transform games
    assert statistic(v.exp() ** 5, name) != pytest.approx(statistic(v, name))
    # a per-layer transform changes the global ranking, so the objective may change
    per_layer = v * (1 + 10 * layer)
    assert centralisation(per_layer, layer, 3, name) != pytest.approx(base)


# --- search ----------------------------------------------------------------------------------
def objective_for(layer):
    return lambda v: centralisation(v, layer, 3, "kurtosis")


def run_search(kind: str, seed: int, budget: int = 40, objective=None):
    values, layer = layered()
    pool = Pool(values, layer, 3, objective or objective_for(layer), budget)
    for b in BLOCKS:
        pool.try_(Expr(b))
    rng = random.Random(seed)
    if kind == "anneal":
        anneal(pool, rng, BLOCKS, 3, 0.05, 0.001)
    else:
        evolve(pool, rng, BLOCKS, 3, 6, 0.7)
    return pool


@pytest.mark.parametrize("kind", ["anneal", "genetic"])
def test_the_search_is_deterministic_for_a_seed_and_improves_the_objective(kind):
    a, b, other = run_search(kind, 1), run_search(kind, 1), run_search(kind, 2)
    log = [(str(c.expr), c.status, c.objective) for c in a.log]
    assert log == [(str(c.expr), c.status, c.objective) for c in b.log]
    assert log != [(str(c.expr), c.status, c.objective) for c in other.log]
    assert len(a.log) == 40  # the budget, spent
    assert a.best().objective >= max(c.objective for c in a.log[:3])
    # on an objective with a known optimum above every block (closeness in ranking to
    # a * b / c) the search climbs past the blocks towards it
    values, layer = layered()
    target = evaluate(parse("div(mul(a, b), c)", BLOCKS), values, layer, 3)
    climb = run_search(kind, 1, objective=lambda v: spearman(v, target))
    blocks_best = max(c.objective for c in climb.log[:3])
    assert climb.best().objective > blocks_best + 0.1


def test_near_duplicates_and_invalid_candidates_are_dropped():
    values, layer = layered()
    pool = Pool(values, layer, 3, objective_for(layer), budget=10)
    assert pool.try_(Expr("a")).kept
    assert pool.try_(parse("log(a)", BLOCKS)).status == "near-duplicate of #0"  # same ranking
    assert pool.try_(parse("sub(a, a)", BLOCKS)).status == "invalid: constant"
    # 1 up to rounding and 0 where a value is 0: ties and noise would rank the filters
    noisy = {k: t.clone() for k, t in values.items()}
    noisy["b"][::2] = 0.0
    ties = Pool(noisy, layer, 3, objective_for(layer), budget=10)
    status = ties.try_(parse("mul(div(b, b), div(c, c))", BLOCKS)).status
    assert status.startswith("invalid: 2 distinct values")
    assert pool.try_(parse("add(a, b)", BLOCKS)).kept
    again = pool.try_(Expr("a"))  # seen before: answered from the log, not counted
    assert again.index == 0 and len(pool.log) == 4 and len(pool.kept()) == 2


# --- the method ------------------------------------------------------------------------------
def conv_net() -> nn.Module:
    return conv_bn_net(4, 8, 8)


def context(tmp_path: Path | None = None, evaluate=None) -> PruneContext:
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(12, 1, 8, 8, generator=gen), torch.arange(12) % 3) for _ in range(2)]
    return prune_context(batches, 3, tmp_path, evaluate)


@pytest.mark.parametrize("expression", ["l1", "fpgm", "random", "log(magnitude)"])
def test_a_given_expression_prunes_as_the_filter_method_with_that_measure(expression):
    """The baselines go through the same path: expression=l1 is L1-norm filter pruning."""
    net = conv_net()
    ctx = context()
    cfg = CrosswordConfig(expression=expression, samples=12, budget=8)
    crossword = METHODS.get("crossword")(cfg)
    measure = expression.removeprefix("log(").removesuffix(")")
    baseline = METHODS.get("filter")(FilterConfig(measure=measure, when="trained"))
    a = crossword.prune(net, Masks.ones(crossword.prunable(net)), ctx)
    b = baseline.prune(conv_net_like(net), Masks.ones(baseline.prunable(net)), ctx)
    assert crossword.found["expression"] == expression
    assert all(torch.equal(a[k], b[k]) for k in a)


def conv_net_like(net: nn.Module) -> nn.Module:
    other = conv_net()
    other.load_state_dict(net.state_dict())
    return other


def test_the_method_logs_every_candidate_and_checks_the_premise(tmp_path):
    net = conv_net()
    evaluated = []

    def evaluate(model, split):  # a stand-in accuracy: how much of the first conv's output remains
        evaluated.append(split)
        return 0.0, float(model[3].weight.detach().abs().sum())

    ctx = context(tmp_path, evaluate)
    cfg = CrosswordConfig(samples=12, budget=12, accuracy_sample=6, latency_repeats=1)
    method = METHODS.get("crossword")(cfg)
    masks = Masks.ones(method.prunable(net))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    masks.update(method.prune(net, masks, ctx))
    info = method.finalize(net, masks, ctx)
    found = method.found
    assert info["expression"] == found["expression"] and info["candidates"] == 12
    assert info["accuracy_candidates"] == 6 == len(evaluated) and set(evaluated) == {"val"}
    assert info["objective_accuracy_spearman"] is not None
    assert info["filter_sparsity"] == pytest.approx(0.5, abs=0.05)
    lines = (tmp_path / info["search_log"]).read_text().splitlines()
    assert lines[0].split(",")[:4] == ["index", "expression", "status", "objective"]
    assert len(lines) == 13
    assert found["rows"][0]["expression"] == "l1" and found["rows"][0]["spearman_l1"] == 1.0
    # the candidates' accuracy checks left the model as it was, except the final pruning
    kept = method.keep_from(masks, method.groups)
    assert torch.equal(net[0].weight, before["0.weight"])
    assert torch.equal(net[3].weight[kept["3"]], before["3.weight"][kept["3"]])
    # resuming: the search outcome is method state, not searched again
    again = METHODS.get("crossword")(cfg)
    again.load_state_dict(method.state_dict())
    assert again.found == found


def test_without_a_validation_split_there_is_no_accuracy_check(tmp_path):
    """The run's evaluate gives (nan, nan) for a split with no samples (dataset.val_size=0):
    the search is unchanged, and no candidate shows a pruned accuracy of 0 that was never
    measured."""
    net = conv_net()
    calls = []

    def evaluate(model, split):
        calls.append(split)
        return math.nan, math.nan

    cfg = CrosswordConfig(samples=12, budget=12, accuracy_sample=6, latency_repeats=1)
    method = METHODS.get("crossword")(cfg)
    masks = Masks.ones(method.prunable(net))
    masks.update(method.prune(net, masks, context(tmp_path, evaluate)))
    info = method.finalize(net, masks, context(tmp_path, evaluate))
    assert calls == ["val"]  # tried once, then given up
    assert info["accuracy_candidates"] == 0 and info["objective_accuracy_spearman"] is None
    assert info["pruned_val_accuracy"] is None
    assert info["filter_sparsity"] == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(
    "override",
    [
        {"blocks": ["l1", "nope"]},
        {"blocks": ["l1", "synflow_typo"]},
        {"search": "ants"},
        {"statistic": "entropy"},
        {"space": "log"},
        {"expression": "add(l1, nope)"},
        {"measure": "fpgm"},
        {"budget": 2},
    ],
)
def test_impossible_crossword_settings_are_refused(override):
    with pytest.raises(ConfigError):
        CrosswordConfig(**override)


@pytest.mark.slow
def test_bare_crossword_completes_on_the_demo(tmp_path):
    cfg = run_config(["method=crossword", "progress=false"])
    summary = Experiment(cfg, tmp_path).run()
    assert summary["status"] == "completed"
    info = summary["method_info"]
    assert info["filter_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert info["candidates"] == cfg.method.budget and info["accuracy_candidates"] >= 3
    assert (tmp_path / "crossword_search.csv").exists()
    assert summary["levels"][-1]["test_accuracy"] >= 0.85
