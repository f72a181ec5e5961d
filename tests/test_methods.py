"""Issue-3 methods against hand computation: SAP, LT, OS, GP, UP, recall distortion, GMP."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_config
from torch import nn

from prune_cli.errors import ConfigError, UserError
from prune_cli.experiment import Experiment
from prune_cli.io import load_torch
from prune_cli.paths import RunPaths
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS, PruneContext
from prune_cli.pruning.methods.gmp import GmpConfig, GradualMagnitude, cubic_sparsity
from prune_cli.pruning.methods.sap import SapConfig
from prune_cli.recording.distortion import alpha, distortion_rows


def ctx(level=1, batches=(), states=None, weight_decay=0.0) -> PruneContext:
    return PruneContext(
        level=level,
        seed=0,
        device=torch.device("cpu"),
        batches=lambda n: iter(list(batches)[:n]),
        loss_fn=nn.functional.cross_entropy,
        weight_decay=weight_decay,
        num_classes=3,
        load_state=lambda name: (states or {})[name],
    )


def linear(weight: list[list[float]]) -> nn.Module:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return nn.Sequential(layer)


def hand_pqi(values: list[float], p: float, q: float) -> float:
    d = len(values)
    mp = (sum(abs(v) ** p for v in values) / d) ** (1 / p)
    mq = (sum(abs(v) ** q for v in values) / d) ** (1 / q)
    return 1 - mp / mq


def hand_sap_count(values, p, q, eta_r, gamma, beta) -> int:
    d = len(values)
    index = hand_pqi(values, p, q)
    r = math.ceil(d * (1 + eta_r) ** (-q / (q - p)) * (1 - index) ** (q * p / (q - p)) - 1e-9)
    return math.floor(d * min(max(gamma * (1 - r / d), 0.0), beta) + 1e-9)


WEIGHTS = [[4.0, -0.1, 0.2, 3.0, -0.05, 0.3], [0.01, 2.0, -0.4, 0.02, 1.5, -0.03]]


@pytest.mark.parametrize(
    ("p", "q", "eta_r", "gamma", "beta"),
    [
        (0.5, 1.0, 0.0, 1.0, 0.9),
        (1.0, 2.0, 0.0, 1.0, 0.9),
        (0.5, 1.0, 0.2, 0.8, 0.9),
        (1.0, 2.0, 0.1, 1.5, 0.3),
    ],
)
def test_sap_count_and_choice_match_a_hand_computation(p, q, eta_r, gamma, beta):
    model = linear(WEIGHTS)
    cfg = SapConfig(p=p, q=q, eta_r=eta_r, gamma=gamma, beta=beta, levels=1)
    method = METHODS.get("sap")(cfg)
    params = method.prunable(model)
    mask = method.prune(model, Masks.ones(params), ctx())["0.weight"]
    flat = [v for row in WEIGHTS for v in row]
    expected = hand_sap_count(flat, p, q, eta_r, gamma, beta)
    assert int((~mask).sum()) == expected
    smallest = sorted(range(len(flat)), key=lambda i: abs(flat[i]))[:expected]
    assert sorted(torch.nonzero(~mask.flatten()).flatten().tolist()) == sorted(smallest)


def test_sap_05_1_prunes_exactly_the_pqi_fraction_and_respects_beta():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30, bias=False), nn.Linear(30, 5, bias=False))
    for scope in ("global", "layer", "neuron"):
        method = METHODS.get("sap")(SapConfig(scope=scope, beta=1.0))
        params = method.prunable(model)
        new = method.prune(model, Masks.ones(params), ctx())
        for name, w in params.items():
            groups = {
                "global": None,
                "layer": w.reshape(1, -1),
                "neuron": w.reshape(w.shape[0], -1),
            }
            if scope == "global":
                continue
            for row, mrow in zip(
                groups[scope], new[name].reshape(groups[scope].shape), strict=True
            ):
                d = row.numel()
                assert int((~mrow).sum()) == math.floor(d * hand_pqi(row.tolist(), 0.5, 1.0))
        if scope == "global":
            flat = torch.cat([w.detach().flatten() for w in params.values()]).tolist()
            pruned = sum(int((~m).sum()) for m in new.values())
            assert pruned == math.floor(len(flat) * hand_pqi(flat, 0.5, 1.0))
    # a nearly one-hot vector has PQI close to 1: beta caps the pruned fraction
    spiky = linear([[100.0] + [1e-6] * 19])
    method = METHODS.get("sap")(SapConfig(beta=0.5))
    mask = method.prune(spiky, Masks.ones(method.prunable(spiky)), ctx())["0.weight"]
    assert int((~mask).sum()) == 10


def test_lottery_ticket_reaches_one_minus_0_8_to_the_k():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 10))
    method = METHODS.get("lt")(METHODS.get("lt").Config(levels=6))
    params = method.prunable(model)
    masks = Masks.ones(params)
    n = masks.numel()
    for k in range(1, 7):
        with torch.no_grad():  # retraining changes the weights between levels
            for p in params.values():
                p.add_(torch.randn_like(p) * 0.01)
        masks.update(method.prune(model, masks, ctx(level=k)))
        masks.apply_(params)
        assert n - masks.kept() == round((1 - 0.8**k) * n)


def test_one_shot_ranking_uses_the_dense_level_0_weights():
    dense = [[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.05, 0.6]]
    model = linear([[0.01, 5.0, 0.02, 4.0], [3.0, 0.03, 6.0, 0.04]])  # opposite ranking now
    method = METHODS.get("os")(METHODS.get("os").Config(rate=0.25, levels=3))
    states = {"level_0": {"0.weight": torch.tensor(dense)}}
    mask = method.prune(model, Masks.ones(method.prunable(model)), ctx(1, states=states))
    assert (~mask["0.weight"]).nonzero().tolist() == [[0, 1], [1, 2]]  # 0.1 and 0.05 of level 0
    lt = METHODS.get("lt")(METHODS.get("lt").Config(rate=0.25))
    mask_lt = lt.prune(model, Masks.ones(lt.prunable(model)), ctx(1))
    assert (~mask_lt["0.weight"]).nonzero().tolist() == [[0, 0], [0, 2]]  # latest magnitudes


def test_gradient_and_undecayed_scores_match_the_hand_gradient():
    w = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]])
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]])
    y = torch.tensor([0, 1])
    model = linear(w.tolist())
    # hand gradient of the mean cross-entropy of logits = x W^T: (softmax - onehot)^T x / B
    probs = torch.softmax(x @ w.T, dim=1)
    grad = (probs - nn.functional.one_hot(y, 2).float()).T @ x / 2
    context = ctx(batches=[(x, y)], weight_decay=0.01)
    mp = METHODS.get("magnitude")(METHODS.get("magnitude").Config())
    gp = METHODS.get("gradient")(METHODS.get("gradient").Config(grad_batches=1))
    up = METHODS.get("undecayed")(METHODS.get("undecayed").Config(grad_batches=1))
    up_eps = METHODS.get("undecayed")(METHODS.get("undecayed").Config(grad_batches=1, eps=0.3))
    params = gp.prunable(model)
    from prune_cli.pruning.scores import SCORES

    assert torch.allclose(SCORES.get(mp.score)(model, params, context)["0.weight"], w.abs())
    assert torch.allclose(gp.scores(model, params, context)["0.weight"], (w * grad).abs())
    assert torch.allclose(
        up.scores(model, params, context)["0.weight"], (-w * grad + 0.01 * w**2).abs()
    )
    assert torch.allclose(
        up_eps.scores(model, params, context)["0.weight"], (-w * grad + 0.3 * w**2).abs()
    )


def test_undecayed_equals_magnitude_ranking_at_a_stationary_point():
    # g = -eps * theta at a stationary point of loss + eps/2 |theta|^2: UP = 2 eps theta^2
    w = torch.tensor([[0.3, -2.0, 1.0, 0.1]])
    from prune_cli.pruning.scores import undecayed_score

    score = undecayed_score({"w": w}, {"w": -0.01 * w}, 0.01)["w"]
    assert torch.allclose(score, 2 * 0.01 * w**2)


def test_gradient_mode_train_leaves_batchnorm_buffers_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    before = {k: b.clone() for k, b in model.named_buffers()}
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    gp = METHODS.get("gradient")(METHODS.get("gradient").Config(grad_batches=1, grad_mode="train"))
    gp.scores(model, gp.prunable(model), ctx(batches=[batch]))
    assert all(torch.equal(before[k], b) for k, b in model.named_buffers())


def test_ratio_sets_the_sparsity():
    cfg = METHODS.get("magnitude").Config(ratio=4.0, levels=1)
    assert cfg.final_sparsity == 0.75
    assert METHODS.get("magnitude")(cfg).target(1) == pytest.approx(0.75)


#: a setting out of its range, per method, and the one line that refuses it (one validator,
#: ``method.check_range``, writes them all)
OUT_OF_RANGE = [
    ("magnitude", {"sparsity": 1.0}, "method.sparsity must be in [0, 1), got 1.0"),
    ("gmp", {"sparsity": math.nan}, "method.sparsity must be in [0, 1), got nan"),
    ("random", {"rate": 1.0}, "method.rate must be in (0, 1), got 1.0"),
    ("lt", {"ratio": 0.5}, "method.ratio must be >= 1, got 0.5"),
    ("sap", {"beta": 0.0}, "method.beta must be in (0, 1], got 0.0"),
    ("filter", {"min_keep": 1.0}, "method.min_keep must be in [0, 1), got 1.0"),
    ("filter", {"round_to": 0}, "method.round_to must be >= 1 or null, got 0"),
    ("sapp", {"sparsify_fraction": 1.5}, "method.sparsify_fraction must be in [0, 1], got 1.5"),
    ("sapp", {"c": 0.0}, "method.c must be > 0, got 0.0"),
    ("block_magnitude", {"block_size": 0}, "method.block_size must be >= 1, got 0"),
    ("grda", {"mu": 0.0}, "method.mu must be > 0, got 0.0"),
    ("limit", {"eps_batches": 1}, "method.eps_batches must be >= 2 or null, got 1"),
    ("gradient", {"grad_batches": 0}, "method.grad_batches must be >= 1, got 0"),
]


@pytest.mark.parametrize(("name", "settings", "message"), OUT_OF_RANGE)
def test_a_setting_out_of_range_is_refused_in_one_line_with_its_interval(name, settings, message):
    with pytest.raises(ConfigError) as info:
        METHODS.get(name).Config(**settings)
    assert str(info.value) == message


def test_alpha_and_distortion_rows_on_a_constructed_example():
    assert alpha([0.1, -0.1, 0.2], [0.2, -0.2, 0.4]) == pytest.approx(2.0)
    assert alpha([0.0, 0.0], [0.1, -0.1]) is None
    # dense: recall (0.9, 0.7), accuracy 0.8 -> B = (0.125, -0.125)
    # pruned: recall (0.9, 0.5), accuracy 0.7 -> B = (2/7, -2/7)
    rows, a = distortion_rows(3, [0.9, 0.7], 0.8, [0.9, 0.5], 0.7)
    assert rows[0][:4] == (3, 0, 0.9, 0.9)
    assert rows[0][4] == pytest.approx(0.125) and rows[1][5] == pytest.approx(-2 / 7)
    assert rows[0][6] == pytest.approx((2 / 7) / 0.125)
    assert a == pytest.approx((0.125 * 2 / 7 * 2) / (2 * 0.125**2))


def test_gmp_follows_the_cubic_schedule_step_by_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 4))
    cfg = GmpConfig(sparsity=0.8, initial_sparsity=0.1, start_epoch=1, end_epoch=3, frequency=4)
    method = METHODS.get("gmp")(cfg)
    params = method.prunable(model)
    masks = Masks.ones(params)
    (callback,) = method.callbacks(0, masks, ctx(0))
    callback.on_level_start(model, steps_per_epoch=10, epochs=4)
    n = masks.numel()
    t0, dt, steps = 10, 4, 5  # (30 - 10) // 4 = 5 updates after t0
    pruned_at = []
    for step in range(40):
        before = masks.version
        callback.on_step_end(step, model)
        done = step + 1  # t counts completed steps: step (0-based) completes step + 1
        if done >= t0 and (done - t0) % dt == 0 and (done - t0) // dt <= steps:
            j = (done - t0) // dt
            target = 0.8 + (0.1 - 0.8) * (1 - j / steps) ** 3
            assert n - masks.kept() == round(target * n)
            pruned_at.append(step)
        else:
            assert masks.version == before
    # after 10, 14, ..., 30 completed steps: the loop's steps 9, 13, ..., 29 (this test expected
    # 10, 14, ..., 30 before, the schedule one step late that stopped short of s_f at the end)
    assert pruned_at == [9, 13, 17, 21, 25, 29]
    assert n - masks.kept() == round(0.8 * n)
    assert isinstance(callback, GradualMagnitude)
    assert cubic_sparsity(9, 10, 4, 5, 0.1, 0.8) is None


def _gmp(cfg: GmpConfig, steps_per_epoch: int, epochs: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 4))
    method = METHODS.get("gmp")(cfg)
    masks = Masks.ones(method.prunable(model))
    (callback,) = method.callbacks(0, masks, ctx(0))
    callback.on_level_start(model, steps_per_epoch=steps_per_epoch, epochs=epochs)
    pruned_at = []
    for step in range(steps_per_epoch * epochs):
        before = masks.version
        callback.on_step_end(step, model)
        if masks.version != before:
            pruned_at.append(step)
    return masks, pruned_at


def test_gmp_reaches_the_final_sparsity_at_the_last_step():
    """end_epoch == train.epochs, (end - start) divisible by the frequency: 3 epochs of 21 steps,
    an update every 21 steps from epoch 1 ends at the last step (62) with s_f = 0.9, not at the
    step after the last one (which left 0.9 - 0.9 / 8 = 0.7875)."""
    cfg = GmpConfig(sparsity=0.9, initial_sparsity=0.0, start_epoch=1, end_epoch=3, frequency=21)
    masks, pruned_at = _gmp(cfg, steps_per_epoch=21, epochs=3)
    assert pruned_at == [20, 41, 62]
    n = masks.numel()
    assert n - masks.kept() == round(0.9 * n)


def test_a_gmp_run_ends_at_the_final_sparsity(tmp_path):
    """The same boundary through the training loop: an update every epoch, from epoch 1 to the
    last epoch (3), on digits; the run's final masks are at s_f."""
    from prune_cli.data import build_dataset

    quick = ["model=mlp", "method=gmp", "train.epochs=3", "progress=false"]
    quick += ["method.start_epoch=1", "method.end_epoch=3", "method.sparsity=0.9"]
    cfg = run_config(quick)
    steps = build_dataset(cfg.dataset, torch.device("cpu")).num_batches(
        "train", cfg.train.batch_size
    )
    summary = Experiment(run_config([*quick, f"method.frequency={steps}"]), tmp_path).run()
    (level,) = summary["levels"]
    assert level["sparsity"] == pytest.approx(0.9, abs=1e-4)  # was 0.7875


def test_gmp_from_step_zero_prunes_to_the_initial_sparsity_before_training():
    cfg = GmpConfig(sparsity=0.8, initial_sparsity=0.2, start_epoch=0, end_epoch=2, frequency=5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 4))
    method = METHODS.get("gmp")(cfg)
    masks = Masks.ones(method.prunable(model))
    (callback,) = method.callbacks(0, masks, ctx(0))
    callback.on_level_start(model, steps_per_epoch=10, epochs=2)
    n = masks.numel()
    assert n - masks.kept() == round(0.2 * n)  # t = 0: s_i
    callback.on_level_start(model, steps_per_epoch=10, epochs=2)  # a resume: no change
    assert n - masks.kept() == round(0.2 * n)
    masks, pruned_at = _gmp(cfg, steps_per_epoch=10, epochs=2)
    assert pruned_at == [4, 9, 14, 19]  # after 5, 10, 15 and 20 (the last) completed steps
    assert n - masks.kept() == round(0.8 * n)


@pytest.mark.slow
def test_rewinding_restores_the_initial_values_of_surviving_weights(tmp_path):
    cfg = run_config(
        [
            "model=mlp",
            "method=lt",
            "method.levels=1",
            "train.epochs=2",
            "train.retrain.epochs=0",
            "progress=false",
        ]
    )
    Experiment(cfg, tmp_path).run()
    paths = RunPaths(tmp_path)
    init = load_torch(paths.init_state)
    level1 = load_torch(paths.level_model(1))
    trained0 = load_torch(paths.level_model(0))["model"]
    for name, mask in level1["mask"].items():
        assert torch.equal(level1["model"][name], init[name] * mask)
        assert not torch.equal(trained0[name], init[name])
    for name in ("net.1.bias", "net.3.bias"):  # all other parameters rewind too
        assert torch.equal(level1["model"][name], init[name])


@pytest.mark.slow
def test_dense_from_reuses_a_trained_dense_model(tmp_path):
    base = ["model=mlp", "train.epochs=2", "progress=false", "seed=1"]
    first = Experiment(run_config([*base, "method=magnitude", "method.levels=1"]), tmp_path / "a")
    dense = first.run()["levels"][0]
    second = Experiment(
        run_config([*base, "method=undecayed", f"dense_from={tmp_path / 'a'}"]), tmp_path / "b"
    ).run()
    assert second["levels"][0]["test_accuracy"] == dense["test_accuracy"]
    assert second["levels"][1]["alpha"] is not None
    a = load_torch(RunPaths(tmp_path / "a").level_model(0))["model"]
    b = load_torch(RunPaths(tmp_path / "b").level_model(0))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="other seed"):
        Experiment(
            run_config(
                [
                    "model=mlp",
                    "train.epochs=2",
                    "progress=false",
                    "seed=2",
                    f"dense_from={tmp_path / 'a'}",
                ]
            ),
            tmp_path / "c",
        ).run()
