"""The latency table (prune_cli/pruning/latency.py): its grid, interpolation, residual and cache.

Every test but one injects a deterministic cost in place of the timing, so nothing depends on the
machine's speed: ``in**2 * out`` per linear layer (not bilinear, so interpolation differs from
the truth and the hand values test it), or the MACs of the module (bilinear in (in, out), so
the table predicts a thin network's MACs exactly, which tests the layers, units and shapes it
found on real CNNs). The one real measurement asserts no speed, only a finite positive value.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import threading
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from prune_cli.errors import ConfigError
from prune_cli.models import build_model
from prune_cli.pruning import latency
from prune_cli.pruning.latency import (
    LatencySetting,
    LatencyTable,
    build_table,
    measure_thin_error,
)
from prune_cli.pruning.structured import FilterGroups, remove_channels
from prune_cli.spec import DataSpec


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the fakes need no speed, and on a loaded machine two threads that
    wait for each other make a tiny convolution take 50 ms instead of 0.5."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(*widths: int) -> nn.Sequential:
    """Linear layers of the given widths with ReLUs between them (``0``, ``2``...)."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class Cost:
    """A fake measurement: ``in**2 * out`` summed over the module's linear layers, plus, for a
    whole network (one with a ReLU; a standalone layer has none), ``overhead`` per output
    channel of its layers (a residual that scales with the feature maps). Counts its calls."""

    def __init__(self, overhead: float = 0.0) -> None:
        self.overhead = overhead
        self.layers = 0
        self.networks = 0
        self.lock = threading.Lock()

    def __call__(self, module: nn.Module, x: Tensor) -> float:
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        whole = any(isinstance(m, nn.ReLU) for m in module.modules())
        with self.lock:
            if whole:
                self.networks += 1
            else:
                self.layers += 1
        cost = sum(m.in_features**2 * m.out_features for m in linears)
        return cost + (self.overhead * sum(m.out_features for m in linears) if whole else 0.0)


def table_of(model: nn.Module, prune_first: bool, measure, **kwargs) -> LatencyTable:
    x = torch.randn(2, model[0].in_features)
    groups = FilterGroups(model, x, prune_first=prune_first)
    setting = LatencySetting(batch=kwargs.pop("batch", 2), input_shape=(x.shape[1],), device="cpu")
    return build_table(model, groups, x, setting, measure=measure, **kwargs)


def g(a: int, b: int) -> int:
    return a * a * b


def test_the_grid_and_a_query_between_points_interpolate_as_by_hand():
    table = table_of(mlp(4, 12, 10, 3), True, Cost(), round_to=4)
    assert table.steps("0") == [1, 4, 8, 12] and table.steps("2") == [1, 4, 8, 10]
    # layer 0: in 4, out 6 between 4 and 8 (half-way): linear, 16 * 6 exactly
    first = 0.5 * g(4, 4) + 0.5 * g(4, 8)
    # layer 2: in 6 (half-way 4..8), out 5 (a quarter 4..8): bilinear of the four corners
    middle = 0.75 * (0.5 * g(4, 4) + 0.5 * g(8, 4)) + 0.25 * (0.5 * g(4, 8) + 0.5 * g(8, 8))
    # layer 4: in 5 (a quarter 4..8), out 3
    last = 0.75 * g(4, 3) + 0.25 * g(8, 3)
    assert (first, middle, last) == (96, 200, 84)  # the hand values; the truth is 96 + 180 + 75
    assert table.predict({"0": 6, "2": 5}) == pytest.approx(first + middle + last)
    assert table.predict({}) == pytest.approx(table.dense_ms) and table.dense_ms == 1932


def test_each_unit_is_gridded_by_its_own_block_size_and_keys_the_cache(tmp_path):
    """HALP's per-layer channel groups: a mapping gives each unit its multiple (a unit it does
    not name steps by 1), the grid follows it, and so does the cache: a table measured on
    another grid is not read back for this one."""
    table = table_of(mlp(4, 12, 10, 3), True, Cost(), round_to={"0": 4}, points=12)
    assert table.steps("0") == [1, 4, 8, 12] and table.steps("2") == list(range(1, 11))
    table = table_of(mlp(4, 12, 10, 3), True, Cost(), round_to={"0": 6, "2": 5}, points=12)
    assert table.steps("0") == [1, 6, 12] and table.steps("2") == [1, 5, 10]
    assert table.describe()["round_to"] == {"0": 6, "2": 5}
    both = table_of(mlp(4, 8, 8, 3), False, Cost(), round_to=4, cache_dir=tmp_path)
    again = Cost()
    mapped = table_of(mlp(4, 8, 8, 3), False, again, round_to={"2": 4}, cache_dir=tmp_path)
    assert again.layers > 0 and mapped.cache_path != both.cache_path  # measured, not read
    with pytest.raises(ConfigError, match="round_to must be at least 1"):
        table_of(mlp(4, 8, 8, 3), False, Cost(), round_to={"2": 0})


def test_prediction_at_grid_points_is_the_layers_measured_sum_plus_the_residual():
    cost = Cost(overhead=0.5)
    model = mlp(4, 12, 10, 3)
    table = table_of(model, True, cost, round_to=4)
    # the residual: 0.5 per output channel, of 12 + 10 + 3 in the dense network
    assert table.dense_ms == g(4, 12) + g(12, 10) + g(10, 3) + 0.5 * 25 == table.predict({})
    for widths in ({"0": 8, "2": 4}, {"0": 1, "2": 10}, {"0": 4}):
        a, b = widths.get("0", 12), widths.get("2", 10)
        expected = g(4, a) + g(a, b) + g(b, 3) + 0.5 * (a + b + 3)
        assert table.predict(widths) == pytest.approx(expected)
        removed = {"0": list(range(a, 12)), "2": list(range(b, 10))}
        thin = remove_channels(copy.deepcopy(model), removed, torch.randn(2, 4))
        assert table.predict(widths) == pytest.approx(cost(thin, torch.randn(2, 4)))


def test_identical_layer_shapes_are_measured_once():
    cost = Cost()
    table = table_of(mlp(4, 8, 8, 8, 3), False, cost, round_to=4, rounds=2)
    # layer 0: (4, 8); layer 2: (8, {1, 4, 8}); layer 4: {1, 4, 8} x {1, 4, 8}, of which
    # (4, 8) is layer 0's and (8, *) layer 2's; layer 6: ({1, 4, 8}, 3): 1 + 3 + 5 + 3 shapes
    # of 16 grid points
    assert table.describe()["measurements"] == 12 and cost.layers == 2 * 12  # once a round
    assert cost.networks == 2 * 2  # the dense network and the one at the floors


def test_the_cache_is_read_back_without_measuring_and_keyed_by_setting_and_model(tmp_path):
    first = Cost()
    table = table_of(mlp(4, 8, 8, 3), False, first, round_to=4, cache_dir=tmp_path)
    files = list(tmp_path.glob("latency-*.json"))
    assert len(files) == 1 and table.describe()["cache"] == str(files[0])
    assert first.layers > 0 and not table.from_cache

    again = Cost()
    read = table_of(mlp(4, 8, 8, 3), False, again, round_to=4, cache_dir=tmp_path)
    assert again.layers == again.networks == 0 and read.from_cache
    for widths in ({}, {"2": 3}, {"2": 6}):
        assert read.predict(widths) == table.predict(widths)

    other_setting = Cost()
    table_of(mlp(4, 8, 8, 3), False, other_setting, round_to=4, cache_dir=tmp_path, batch=3)
    other_model = Cost()
    table_of(mlp(4, 8, 9, 3), False, other_model, round_to=4, cache_dir=tmp_path)
    other_grid = Cost()
    table_of(mlp(4, 8, 8, 3), False, other_grid, round_to=2, cache_dir=tmp_path)
    assert min(other_setting.layers, other_model.layers, other_grid.layers) > 0
    assert len(list(tmp_path.glob("latency-*.json"))) == 4


def test_a_corrupt_cache_file_is_measured_again_with_a_warning(tmp_path, caplog):
    table_of(mlp(4, 8, 8, 3), False, Cost(), cache_dir=tmp_path)
    (path,) = tmp_path.glob("latency-*.json")
    path.write_text('{"format": "prune-run latency ta')
    cost = Cost()
    with caplog.at_level(logging.WARNING, logger="prune_cli"):
        table = table_of(mlp(4, 8, 8, 3), False, cost, cache_dir=tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "\n" not in warnings[0]
    assert cost.layers > 0 and not table.from_cache
    assert json.loads(path.read_text())["dense_ms"] == table.dense_ms  # rewritten whole


def test_jobs_started_at_once_measure_the_table_once(tmp_path):
    cost = Cost()
    tables: list[LatencyTable] = []

    def job() -> None:
        tables.append(table_of(mlp(4, 8, 8, 8, 3), False, cost, round_to=4, cache_dir=tmp_path))

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cost.layers == 3 * 12 and cost.networks == 3 * 2  # one measured (3 rounds), two read
    assert sorted(t.from_cache for t in tables) == [False, True, True]


def macs(module: nn.Module, x: Tensor) -> float:
    """The multiply-accumulates of the module's convolutions and linear layers on ``x``, from
    the output shapes of one pass (a flop counter's dispatch would take seconds here)."""
    total = 0

    def count(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * math.prod(m.kernel_size)
        else:
            total += out.numel() * m.in_features

    layers = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = [m.register_forward_hook(count) for m in layers]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for handle in handles:
            handle.remove()
    return float(total)


@pytest.mark.parametrize(
    ("name", "channels", "prune_first"),
    [("lenet5", 1, True), ("resnet20", 3, False), ("mobilenet_v1", 3, False)],
)
def test_the_table_of_macs_predicts_a_thin_cnns_macs_exactly(name, channels, prune_first):
    """MACs are bilinear in (in, out) per layer, so the interpolated table must equal the thin
    network's MACs at any widths if the layers, their shapes and the units' inputs and outputs
    were all found right (flatten, depthwise, zero-padding shortcuts)."""
    torch.manual_seed(0)
    model = build_model(name, DataSpec(channels, 10, 8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, channels, 8, 8)
    groups = FilterGroups(model, x, prune_first=prune_first)
    setting = LatencySetting(batch=2, input_shape=(channels, 8, 8), device="cpu")
    table = build_table(model, groups, x, setting, round_to=8, points=2, measure=macs)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert table.predict({}) == pytest.approx(macs(model, x))
    widths = {u.root: max(1, (2 * u.channels) // 5 + 1) for u in groups.units}
    removed = {u.root: list(range(widths[u.root], u.channels)) for u in groups.units}
    thin = remove_channels(copy.deepcopy(model), removed, x)
    assert table.predict(widths) == pytest.approx(macs(thin, x), rel=1e-9)
    convs = [layer for layer in table.layers if layer.kind == "conv"]
    if name != "lenet5":  # these models' convolutions all feed a BatchNorm; LeNet-5 has none
        assert all(layer.bn == "bn2d" for layer in convs)
    if name == "mobilenet_v1":
        assert sum(layer.depthwise for layer in convs) == 12  # features.2 .. 13: units


def test_consumers_are_the_layers_that_read_a_units_channels():
    def consumers(name: str, channels: int, prune_first: bool = False) -> dict[str, list[str]]:
        model = build_model(name, DataSpec(channels, 10, 8))
        groups = FilterGroups(model, torch.randn(2, channels, 8, 8), prune_first=prune_first)
        return {u.root: u.consumers for u in groups.units}

    assert consumers("lenet5", 1, prune_first=True) == {
        "features.0": ["features.3"],
        "features.3": ["classifier.0"],  # through the flatten
        "classifier.0": ["classifier.2"],
        "classifier.2": ["classifier.4"],
    }
    # ResNet-20: the streams are coupled through the zero-padding shortcuts to the first
    # convolution, so only the inner channels of each block are units
    assert consumers("resnet20", 3) == {
        f"layer{s}.{b}.conv1": [f"layer{s}.{b}.conv2"] for s in (1, 2, 3) for b in (0, 1, 2)
    }
    # MobileNet-V1: a unit is the channels of a pointwise conv and the depthwise conv after it
    # (a producer, not a consumer); the next pointwise conv reads them
    expected = {f"features.{k}.0.0": [f"features.{k}.1.0"] for k in range(2, 14)}
    expected["features.13.1.0"] = ["classifier"]
    assert consumers("mobilenet_v1", 3) == expected


def test_a_real_cpu_table_predicts_a_positive_finite_latency_for_a_thin_network():
    torch.manual_seed(0)
    model = build_model("lenet5", DataSpec(1, 10, 8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 1, 8, 8)
    groups = FilterGroups(model, x)
    setting = LatencySetting(batch=8, input_shape=(1, 8, 8), device="cpu", repeats=3)
    table = build_table(model, groups, x, setting, round_to=4, points=3)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    thin = {u.root: u.channels // 2 for u in groups.units}
    predicted = table.predict(thin)
    assert math.isfinite(predicted) and predicted > 0 and table.dense_ms > 0
    assert table.predict({}) == pytest.approx(table.dense_ms)
    info = table.describe()
    assert info["device_name"] and info["setting"]["batch"] == 8 and info["cache"] is None


def test_impossible_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="cpu or cuda"):
        LatencySetting(batch=2, input_shape=(4,), device="tpu")
    with pytest.raises(ConfigError, match="at least 1"):
        LatencySetting(batch=0, input_shape=(4,), device="cpu")
    with pytest.raises(ConfigError, match="at least 2 points"):
        table_of(mlp(4, 8, 3), False, Cost(), points=1)
    with pytest.raises(ConfigError, match="input_shape"):
        model = mlp(4, 8, 3)
        x = torch.randn(2, 4)
        groups = FilterGroups(model, x)
        build_table(model, groups, x, LatencySetting(2, (5,), "cpu"), measure=Cost())


def test_the_table_survives_a_round_trip_through_a_dict(tmp_path: Path):
    table = table_of(mlp(4, 12, 10, 3), True, Cost(overhead=0.5), round_to=4)
    copied = LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    for widths in ({}, {"0": 5}, {"0": 2, "2": 7}):
        assert copied.predict(widths) == table.predict(widths)
    assert copied.steps("2") == table.steps("2") and copied.dense_ms == table.dense_ms


def test_the_thin_error_is_against_the_latency_or_the_latency_ratio():
    table = table_of(mlp(4, 12, 10, 3), True, Cost(), round_to=4)
    widths = {"0": 8, "2": 4}
    predicted = g(4, 8) + g(8, 4) + g(4, 3)  # grid points: 128 + 256 + 48 = 432
    assert measure_thin_error(table, widths, 400.0) == pytest.approx(432 / 400 - 1)
    # the machine twice as slow when the check ran: the ratio's error is what is left
    ratio = (predicted / table.dense_ms) / (800.0 / (2 * table.dense_ms))
    assert measure_thin_error(table, widths, 800.0, 2 * table.dense_ms) == pytest.approx(ratio - 1)


class Spiked(Cost):
    """``Cost``, but the standalone (4 -> 4) linear layer times as if the machine had stalled."""

    def __call__(self, module: nn.Module, x: Tensor) -> float:
        cost = super().__call__(module, x)
        if isinstance(module, nn.Linear) and (module.in_features, module.out_features) == (4, 4):
            return 1e6
        return cost


def test_a_thinner_layer_that_timed_slower_than_a_wider_one_takes_the_wider_time():
    table = table_of(mlp(4, 12, 10, 3), True, Spiked(), round_to=4)
    # layer 0 at (4 -> 4) takes (4 -> 8)'s time, the least of the wider ones; layer 2 at
    # (4 -> 10) and layer 4 at (10 -> 3) are as measured
    assert table.predict({"0": 4, "2": 10}) == pytest.approx(g(4, 8) + g(4, 10) + g(10, 3))
    # (4 -> 4) is in the grids of layers 0 and 2, and in layer 2's it takes (4 -> 8)'s time
    assert table.predict({"0": 4, "2": 4}) == pytest.approx(g(4, 8) + g(4, 8) + g(4, 3))
    assert table.describe()["lowered"] == 2


@pytest.mark.parametrize(
    "dense, floor, share, split",
    [
        (10.0, 2.0, 0.2, (0.0, 10.0)),  # exact: 0 + 10 x 0.2 = 2
        (10.0, 5.0, 0.5, (0.0, 10.0)),  # exact: 0 + 10 x 0.5 = 5
        (10.0, 6.0, 0.5, (2.0, 8.0)),  # exact: 2 + 8 x 0.5 = 6
        (10.0, 1.0, 0.2, (0.0, 10.0)),  # 11.25 scaled would make fixed -1.25: all scaled
        (10.0, 12.0, 0.2, (10.0, 0.0)),  # the floor network slower than the dense: all fixed
        (10.0, 3.0, 1.0, (10.0, 0.0)),  # the floor network no thinner
        (-2.0, 0.0, 0.5, (0.0, -2.0)),  # a negative residual, clamped to its own sign
        (-2.0, -3.0, 0.5, (-2.0, 0.0)),
    ],
)
def test_the_residual_splits_as_by_hand_and_keeps_one_sign(dense, floor, share, split):
    fixed, scaled = latency._fit_residual(dense, floor, share)
    assert (fixed, scaled) == pytest.approx(split)
    assert fixed + scaled == pytest.approx(dense)  # the dense prediction is the measured one
