"""``method.when=steps``: HALP's schedule (Shen et al., NeurIPS 2022) for filter pruning. Train
dense, then prune during the fine-tuning level after every ``interval`` optimizer steps for
``rounds`` steps, on the geometric path (kept filters (1 - p)^(k/n), or the latency ratio
F^(k/n)), the last latency step alone calibrated on measured latency."""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import conv_bn_net, prune_context, run_config
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.experiment import Experiment
from prune_cli.pruning.filter_schedule import (
    HALP_INTERVAL,
    ChannelSchedule,
    geometric_fraction,
    geometric_ratio,
    step_round,
)
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS
from prune_cli.pruning.methods.filter_pruning import FilterConfig


def test_the_geometric_path_and_the_steps_it_falls_on_against_hand_values():
    # F = 0.25 over 2 steps: 0.5, then 0.25 (HALP's log-linear interpolation)
    assert geometric_ratio(1, 2, 0.25) == pytest.approx(0.5)
    assert geometric_ratio(2, 2, 0.25) == pytest.approx(0.25)
    assert geometric_ratio(3, 3, 0.7) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        geometric_ratio(0, 3, 0.5)
    # p = 0.75 over 2 steps: half of what remains each time, a quarter kept in the end
    assert geometric_fraction(2, 0.75) == pytest.approx(0.5)
    assert (1 - geometric_fraction(3, 0.875)) ** 3 == pytest.approx(0.125)
    # HALP's 30 steps every 40 iterations: after completed steps 40, 80, ..., 1200
    assert [step_round(d, 40, 30) for d in (0, 39, 40, 41, 80, 1200, 1240)] == [
        None,
        None,
        1,
        None,
        2,
        30,
        None,
    ]
    assert FilterConfig(when="steps").step_interval == HALP_INTERVAL == 40
    with pytest.raises(ConfigError, match=r"method\.interval"):
        FilterConfig(when="steps", interval=0)


def steps_method(**settings):
    """The filter method on ``when: steps`` over the small conv network (units: the 16 + 16
    filters of its second and third convolutions; the first keeps its filters)."""
    model = conv_bn_net(8, 16, 16, side=10)
    batches = [(torch.randn(8, 1, 10, 10), torch.randint(0, 3, (8,)))]
    ctx = prune_context(batches)
    cfg = FilterConfig(when="steps", measure="l1", latency_batch=8, latency_repeats=1, **settings)
    method = METHODS.get("filter")(cfg)
    masks = Masks.ones(method.prunable(model))
    return method, model, masks, ctx


def kept_filters(method, masks) -> int:
    return sum(int(k.sum()) for k in method.keep_from(masks, method.groups).values())


def test_steps_prune_in_the_fine_tuning_level_on_the_geometric_path_and_masks_only_shrink():
    method, model, masks, ctx = steps_method(sparsity=0.75, rounds=2, interval=3)
    assert method.num_levels() == 1 and method.shares_dense()  # level 0: plain dense training
    # the level starts from the dense model: the pruning is the callback's
    assert all(torch.equal(m, masks[k]) for k, m in method.prune(model, masks, ctx).items())
    method.units(model, ctx)
    assert kept_filters(method, masks) == 32
    dense_callback = ChannelSchedule(method, masks, ctx, level=0)
    dense_callback.on_level_start(model, steps_per_epoch=4, epochs=2)
    for step in range(8):
        dense_callback.on_step_end(step, model)
    assert kept_filters(method, masks) == 32  # level 0 is not pruned
    callback = ChannelSchedule(method, masks, ctx, level=1)
    callback.on_level_start(model, steps_per_epoch=4, epochs=2)
    kept, before = [], {k: m.clone() for k, m in masks.items()}
    for step in range(8):
        callback.on_step_end(step, model)
        kept.append(kept_filters(method, masks))
        assert all(not (masks[k] & ~before[k]).any() for k in masks)  # masks only shrink
        before = {k: m.clone() for k, m in masks.items()}
    # after completed steps 3 and 6: half of 32, then half of the rest (a quarter kept)
    assert kept == [32, 32, 16, 16, 16, 8, 8, 8]
    # the pruned channels' BatchNorm parameters are zero, as in the thin network
    for i, width in ((4, 16), (7, 16)):
        bn = model[i]
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == width
        conv = model[i - 1]
        gone = conv.weight.detach().reshape(width, -1).abs().sum(dim=1) == 0
        assert int(gone.sum()) > 0 and not bn.weight.detach()[gone].any()


def test_the_steps_must_fit_in_the_fine_tuning():
    method, model, masks, ctx = steps_method(rounds=3, interval=3)
    callback = ChannelSchedule(method, masks, ctx, level=1)
    with pytest.raises(
        ConfigError, match=r"need 9 steps; the fine-tuning has 8 \(2 x 4 steps per epoch\)"
    ):
        callback.on_level_start(model, steps_per_epoch=4, epochs=2)
    ChannelSchedule(method, masks, ctx, level=0).on_level_start(model, 4, 2)  # level 0: no check


def test_a_latency_targets_steps_follow_f_to_the_k_over_n_and_only_the_last_is_timed(
    monkeypatch,
):
    method, model, masks, ctx = steps_method(latency_target=0.64, rounds=2, interval=3)
    asked: list[tuple[float, bool]] = []

    def fake_choose(groups, device_keep, scores, ctx, ratio, by_fraction, *, timed=True):
        asked.append((ratio, timed))
        return device_keep

    monkeypatch.setattr(method.latency, "choose", fake_choose)
    method.prune_step(model, masks, ctx, 1)
    method.prune_step(model, masks, ctx, 2)
    assert [t for _, t in asked] == [False, True]
    assert [r for r, _ in asked] == pytest.approx([0.8, 0.64])
    # the step's state is put back: a later one-shot step aims at F, timed
    assert method.step_latency is None and method.step_timed
    assert math.isclose(method.step_ratio(), 0.64)


def test_a_run_on_the_steps_schedule_prunes_during_fine_tuning_to_the_sparsity(tmp_path):
    cfg = run_config(
        [
            "model=lenet5",
            "dataset.limit_train=256",
            "train.batch_size=32",  # 8 steps of fine-tuning: the 3 pruning steps end at 6
            "method=filter",
            "method.when=steps",
            "method.rounds=3",
            "method.interval=2",
            "method.sparsity=0.5",
            "method.measure=l1",
            "method.latency_repeats=2",
            "method.latency_batch=8",
            "train.epochs=1",
            "train.retrain.epochs=1",
            "progress=false",
        ]
    )
    summary = Experiment(cfg, tmp_path).run()
    assert summary["status"] == "completed"
    info = summary["method_info"]
    # (1 - 0.5)^(1/3) kept per step, per-unit floors and whole filters: near 0.5, not exact
    assert info["filter_sparsity"] == pytest.approx(0.5, abs=0.06)
    assert info["params_after"] < info["params_before"] and info["max_output_difference"] < 1e-4
    # the fine-tuning level starts from the dense model and prunes as it trains
    dense, tuned = summary["levels"]
    assert tuned["pruned_test_accuracy"] == dense["test_accuracy"]
    log = (tmp_path / "run.log").read_text()
    steps = re.findall(r"pruning step (\d)/3 after optimizer step (\d+): (\d+) of (\d+)", log)
    assert [(k, after) for k, after, _, _ in steps] == [("1", "2"), ("2", "4"), ("3", "6")]
    kept = [int(n) for _, _, n, _ in steps]
    assert kept == sorted(kept, reverse=True) and kept[0] < int(steps[0][3])
