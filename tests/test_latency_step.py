"""The latency step of filter pruning (``prune_cli.pruning.latency_step``, issue 27): the
thin / dense latency that ``finalize`` records is the median of alternating timing pairs, and
crossword's premise check prunes its candidates to the latency budget when there is one. Every
timing here is injected (a scripted or table-driven fake of ``latency_ms``): nothing is timed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from conftest import conv_bn_net, prune_context, time_each_network
from torch import nn

from prune_cli.pruning import latency_step
from prune_cli.pruning.latency_budget import time_pairs
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS
from prune_cli.pruning.methods import filter_pruning
from prune_cli.pruning.methods.crossword import CrosswordConfig
from prune_cli.pruning.methods.filter_pruning import FilterConfig, FilterPruning


class Table:
    """A hand-built latency table: ``base`` + the sum of ``cost[root] * width``."""

    def __init__(self, full: Mapping[str, int], cost: Mapping[str, float], base: float) -> None:
        self.full, self.cost, self.base = dict(full), dict(cost), base

    def predict(self, widths: Mapping[str, int]) -> float:
        return self.base + sum(self.cost[r] * widths.get(r, n) for r, n in self.full.items())

    @property
    def dense_ms(self) -> float:
        return self.predict({})

    def describe(self) -> dict[str, object]:
        return {"synthetic": True, "dense_ms": self.dense_ms}


def synthetic_table(method: FilterPruning, model: nn.Module, ctx) -> Table:
    """Inject a table for the method's units, so that nothing is measured for it."""
    full = {u.root: u.channels for u in method.units(model, ctx).units}
    method.table = Table(full, {r: 1.0 + i for i, r in enumerate(full)}, base=1.0)
    return method.table


def widths_of_layers(model: nn.Module, roots) -> dict[str, int]:
    """Each unit's width as a network shows it: a thin network's output channels, or a masked
    one's filters that are not all zero."""
    modules = dict(model.named_modules())
    out = {}
    for r in roots:
        w = modules[r].weight.detach()
        out[r] = int((w.reshape(w.shape[0], -1).abs().sum(dim=1) > 0).sum())
    return out


# --- the paired timing --------------------------------------------------------------------------
def test_time_pairs_keeps_the_median_pair():
    pairs = iter([(3.0, 10.0), (8.0, 10.0), (5.0, 10.0)])
    timing = time_pairs(lambda: next(pairs), 3)
    assert timing.ratios == [0.3, 0.8, 0.5]
    assert timing.ratio == 0.5 and timing.median_pair == (5.0, 10.0)
    assert timing.spread == (0.3, 0.8)
    with pytest.raises(ValueError, match="pairs"):
        time_pairs(lambda: (1.0, 1.0), 0)


class Clock:
    """A fake ``perf_counter`` (in seconds) that the fake networks below advance."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Costed(nn.Module):
    """A network whose forward pass takes ``cost`` ms times the machine's slowdown at the time
    (``slowdown(calls so far)``), recorded in ``calls``."""

    def __init__(self, name: str, cost: float, clock: Clock, calls: list[str], slowdown) -> None:
        super().__init__()
        self.name, self.cost, self.clock, self.calls, self.slowdown = (
            name,
            cost,
            clock,
            calls,
            slowdown,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += self.cost * self.slowdown(len(self.calls)) / 1000
        self.calls.append(self.name)
        return x


def test_interleaved_passes_give_the_ratio_through_a_change_of_machine_speed():
    """A machine that becomes 1.5x slower part-way through (after 20 passes): timed one after
    the other, the thin network's passes fall before the change and the dense one's after it,
    and the ratio is off by the factor; interleaved, each pass pair sees one speed and the
    median pair's ratio is the cost ratio. Each timed pass follows an untimed one of the same
    network (the other's pass evicted the caches)."""
    from prune_cli.pruning.structured import interleaved_ms

    clock, calls = Clock(), []

    def slowdown(n: int) -> float:
        return 1.0 if n < 20 else 1.5

    thin = Costed("thin", 2.0, clock, calls, slowdown)
    dense = Costed("dense", 8.0, clock, calls, slowdown)
    x = torch.zeros(1)
    thin_ms, dense_ms = interleaved_ms(thin, dense, x, repeats=9, clock=clock)
    assert thin_ms / dense_ms == pytest.approx(0.25, rel=1e-9)
    assert calls[:4] == ["thin", "dense", "thin", "dense"]  # the warm-up
    assert calls[4:] == ["thin", "thin", "dense", "dense"] * 9
    # the same machine, timed network by network, reads the change as part of the ratio
    clock.now, calls[:] = 0.0, []
    one_by_one = [interleaved_ms(thin, thin, x, 5, clock=clock)[0]]
    one_by_one.append(interleaved_ms(dense, dense, x, 5, clock=clock)[0])
    assert one_by_one[0] / one_by_one[1] != pytest.approx(0.25, rel=0.1)


def test_the_cpu_pair_interleaves_and_restores_the_modes(monkeypatch):
    seen: list[tuple[str, bool]] = []

    class Net(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(("net", self.training))
            return super().forward(x)

    thin, dense = Net(3, 2).train(), Net(3, 2).eval()
    thin_ms, dense_ms = latency_step.time_pair(thin, dense, torch.zeros(4, 3), 2)
    assert thin_ms > 0 and dense_ms > 0
    assert not any(training for _, training in seen)  # timed in eval mode
    assert thin.training and not dense.training  # each left as it was
    timing = latency_step.paired_timing(thin, dense, torch.zeros(4, 3), 1, pairs=2)
    assert len(timing.pairs) == 2


# --- finalize's measurement ---------------------------------------------------------------------
#: (thin ms, dense ms) of each pair the fake timer gives, in order: ratios 0.3, 0.8, 0.5
PAIRS = [(3.0, 10.0), (16.0, 20.0), (6.0, 12.0)]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def zero_filters(model: nn.Module) -> int:
    """The output channels of ``model``'s convolutions whose weights are all zero."""
    return sum(
        int((m.weight.detach().flatten(1).abs().sum(dim=1) == 0).sum())
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    )


def scripted_timer(
    monkeypatch: pytest.MonkeyPatch, dense: nn.Module, zeros: list[int] | None = None
) -> list[str]:
    """Replace ``latency_ms`` by one that answers ``PAIRS`` in order, the dense model's entry
    for a network of ``dense``'s size and the thin one's for any other network; returns the
    calls' order (``zeros``: gets the zeroed filters of each dense network timed)."""
    thin_ms = iter(p[0] for p in PAIRS)
    dense_ms = iter(p[1] for p in PAIRS)
    calls: list[str] = []
    size = parameter_count(dense)

    def fake_latency_ms(model: nn.Module, batch: torch.Tensor, repeats: int) -> float:
        is_dense = parameter_count(model) == size
        calls.append("dense" if is_dense else "thin")
        if is_dense and zeros is not None:
            zeros.append(zero_filters(model))
        return next(dense_ms) if is_dense else next(thin_ms)

    time_each_network(monkeypatch, fake_latency_ms)
    monkeypatch.setattr(filter_pruning, "export", lambda model, example, path: "not exported")
    return calls


def pruned_method(tmp_path: Path, **settings):
    """A filter method on the small conv network, half its filters pruned, and its context."""
    model = conv_bn_net(4, 12, 10, side=10)
    batches = [(torch.randn(8, 1, 10, 10), torch.randint(0, 3, (8,)))]
    ctx = prune_context(batches, artifacts=tmp_path)
    cfg = FilterConfig(when="trained", latency_batch=8, latency_repeats=1, **settings)
    method = METHODS.get("filter")(cfg)
    masks = Masks.ones(method.prunable(model))
    return method, model, masks, ctx


def test_finalize_records_the_median_of_alternating_pairs_and_their_spread(tmp_path, monkeypatch):
    method, model, masks, ctx = pruned_method(tmp_path)
    masks.update(method.prune(model, masks, ctx))
    zeros: list[int] = []
    calls = scripted_timer(monkeypatch, model, zeros)
    info = method.finalize(model, masks, ctx)
    assert calls == ["thin", "dense"] * len(PAIRS)
    # the dense network timed is not the masked model, whose pruned filters are zero
    assert zero_filters(model) > 0 and zeros == [0] * len(PAIRS)
    assert info["latency_pairs"] == len(PAIRS) == latency_step.LATENCY_PAIRS
    assert info["latency_ratio"] == 0.5  # the median of 0.3, 0.8, 0.5
    assert (info["latency_thin_ms"], info["latency_dense_ms"]) == (6.0, 12.0)  # its pair
    assert (info["latency_ratio_min"], info["latency_ratio_max"]) == (0.3, 0.8)
    # the thin architecture unit by unit, in the model's order (torch-pruning's graph lists the
    # units last layer first)
    units = info["filters_by_unit"]
    assert list(units) == [n for n, _ in model.named_modules() if n in units] == ["3", "6"]
    assert [n for _, n in units.values()] == [12, 10]
    assert sum(k for k, _ in units.values()) == info["filters_kept"] < 22


def test_finalize_records_each_units_multiple_where_sizes_are_per_layer(tmp_path, monkeypatch):
    method, model, masks, ctx = pruned_method(tmp_path, round_to=2, round_to_layers={"6": 5})
    masks.update(method.prune(model, masks, ctx))
    scripted_timer(monkeypatch, model)
    info = method.finalize(model, masks, ctx)
    assert info["round_to_by_unit"] == {"3": 2, "6": 5}  # in the model's order
    assert all(
        kept % info["round_to_by_unit"][r] == 0 for r, (kept, _) in info["filters_by_unit"].items()
    )
    method, model, masks, ctx = pruned_method(tmp_path, round_to=2)
    masks.update(method.prune(model, masks, ctx))
    scripted_timer(monkeypatch, model)
    assert "round_to_by_unit" not in method.finalize(model, masks, ctx)  # one size: the config's


@pytest.mark.parametrize(
    "settings, key",
    [
        ({}, None),
        ({"round_to": 1}, 1),
        ({"round_to": 8}, 8),
        ({"round_to": 8, "round_to_layers": {"*": 8}}, 8),  # uniform: as round_to=8
        ({"round_to": 2, "round_to_layers": {"6": 5}}, {"3": 2, "6": 5}),
    ],
)
def test_the_table_is_keyed_by_round_to_unless_the_units_multiples_differ(
    tmp_path, monkeypatch, settings, key
):
    """Tables cached before per-layer multiples existed were keyed by ``round_to`` as given:
    a run whose units all keep that multiple passes it unchanged; only sizes that differ by
    unit key the table by each unit's."""
    seen = []

    def build_table(*args, **kwargs):
        seen.append(kwargs["round_to"])
        raise RuntimeError("stop: the key was seen")

    monkeypatch.setattr(latency_step.latency, "build_table", build_table)
    method, model, _, ctx = pruned_method(tmp_path, latency_target=0.5, **settings)
    with pytest.raises(RuntimeError, match="stop"):
        method.latency.table_for(method.units(model, ctx), ctx)
    assert seen == [key]


def test_a_latency_targets_table_error_is_against_the_median_pair(tmp_path, monkeypatch):
    method, model, masks, ctx = pruned_method(tmp_path, latency_target=0.6, latency_tolerance=9.0)
    table = synthetic_table(method, model, ctx)
    # the step itself is timed by the table (an exact device); finalize by the script
    roots = list(table.full)
    time_each_network(
        monkeypatch,
        lambda m, batch, repeats: table.predict(widths_of_layers(m, roots)),
    )
    masks.update(method.prune(model, masks, ctx))
    scripted_timer(monkeypatch, model)
    info = method.finalize(model, masks, ctx)
    widths = {r: int(k.sum()) for r, k in method.keep_from(masks, method.groups).items()}
    predicted = table.predict(widths)
    assert info["latency_predicted_ms"] == pytest.approx(predicted)
    assert info["latency_ratio"] == 0.5
    assert info["latency_table_error"] == pytest.approx((predicted / table.dense_ms) / 0.5 - 1)


def test_the_dense_reference_is_the_architecture_with_fresh_values():
    """Timing's dense network: the same layers and shapes as the pruned model, none of its
    zeroed filters, the model itself and the global random state untouched, the same copy on
    every call."""
    model = conv_bn_net(4, 12, 10, side=10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[: m.weight.shape[0] // 2] = 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    ref = latency_step.dense_reference(model)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert zero_filters(model) > 0 and zero_filters(ref) == 0
    shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert shapes == {k: v.shape for k, v in before.items()}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    again = latency_step.dense_reference(model)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ref.state_dict().items())


# --- crossword under a latency target -----------------------------------------------------------
@pytest.mark.parametrize("latency_by", ["knapsack", "fraction"])
def test_crossword_checks_its_candidates_at_the_latency_budget(tmp_path, monkeypatch, latency_by):
    """``sparsity`` 0.1 prunes far too little for 0.4 of the dense latency: each candidate's
    accuracy is measured on the network the latency budget selects (the table's prediction
    within the budget), not on 10% fewer filters."""
    net = conv_bn_net(4, 8, 8)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(12, 1, 8, 8, generator=gen), torch.arange(12) % 3) for _ in range(2)]
    seen: list[dict[str, int]] = []
    holder: dict[str, list[str]] = {}

    def evaluate(model: nn.Module, split: str) -> tuple[float, float]:
        seen.append(widths_of_layers(model, holder["roots"]))
        return 0.0, float(len(seen))

    ctx = prune_context(batches, 3, tmp_path, evaluate)
    cfg = CrosswordConfig(
        samples=12,
        budget=12,
        accuracy_sample=4,
        sparsity=0.1,
        latency_target=0.4,
        latency_by=latency_by,
        latency_batch=8,
        latency_repeats=1,
    )
    method = METHODS.get("crossword")(cfg)
    table = synthetic_table(method, net, ctx)
    holder["roots"] = list(table.full)
    time_each_network(
        monkeypatch,
        lambda m, batch, repeats: table.predict(widths_of_layers(m, holder["roots"])),
    )
    masks = Masks.ones(method.prunable(net))
    masks.update(method.prune(net, masks, ctx))
    budget = 0.4 * table.dense_ms
    assert len(seen) == 4
    by_sparsity = {r: n - int(0.1 * n) for r, n in table.full.items()}
    assert table.predict(by_sparsity) > budget  # the check at sparsity would miss the budget
    for widths in seen:
        assert table.predict(widths) <= budget * (1 + 1e-9)
    # the final pruning, calibrated on the (table-exact) timing, ends within one filter of the
    # dearer unit (2 of the 25 dense ms) of the target
    final = widths_of_layers(net, holder["roots"])
    assert abs(table.predict(final) / table.dense_ms - 0.4) <= 2 / 25 + 1e-9


# --- the ranks of a data-parallel run select alike ----------------------------------------------
def test_a_step_selects_by_the_timing_and_table_the_ranks_agree_on(tmp_path, monkeypatch):
    """Each rank times for itself; ``ctx.agree`` hands every rank rank 0's ratio and table, so
    the calibration follows those and the ranks' masks stay the same. Here this rank measures
    1.0 (nowhere near the target), rank 0 measured the target: one selection, not three."""
    import dataclasses

    from prune_cli.pruning import latency

    method, model, masks, ctx = pruned_method(tmp_path, latency_target=0.6)
    groups = method.units(model, ctx)
    own = synthetic_table(method, model, ctx)
    method.table = None  # built (here: handed over) at the first need
    rank0_table = Table(own.full, own.cost, base=own.base)
    monkeypatch.setattr(latency, "build_table", lambda *args, **kwargs: own)
    time_each_network(monkeypatch, lambda m, batch, repeats: 1.0)  # this rank: ratio 1.0
    agreed: list[object] = []

    def rank0(value):
        agreed.append(value)
        if value is own:
            return rank0_table
        return 0.6 if isinstance(value, float) else value

    ctx = dataclasses.replace(ctx, agree=rank0)
    masks.update(method.prune(model, masks, ctx))
    assert method.latency.table_for(groups, ctx) is rank0_table
    assert agreed == [own, pytest.approx(1.0)]  # the table, then one timing
    # in one process (and in rank 0's own pruning between levels) a value is taken as it is
    assert prune_context([]).agree(0.25) == 0.25


def test_the_ranks_agree_on_rank_0s_value_and_one_process_on_its_own():
    from prune_cli.distributed import World
    from prune_cli.ranks import Ranks

    value = {"ratio": 0.5}
    assert Ranks(World()).agree(value, torch.device("cpu")) is value
