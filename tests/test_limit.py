"""method=limit (Zhang et al., NeurIPS 2024, arXiv 2306.05857): the L1 term, the actual-limit
sweep, stochastic Lanczos quadrature and the limit equation, against hand or exact values."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_config
from torch import nn
from torch.func import functional_call

from prune_cli.errors import ConfigError
from prune_cli.pruning.mask import prunable_parameters
from prune_cli.pruning.method import PruneContext
from prune_cli.pruning.methods.limit import L1Penalty, LimitConfig, PruningLimit
from prune_cli.pruning.spectrum import (
    PrunedNorm,
    actual_limits,
    hessian_vector_product,
    lanczos,
    limit_fraction,
    magnitude_sweep,
    predicted_limit,
    ritz,
    slq,
    zero_mass,
)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def tiny_data(n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=gen, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=gen
    )


def full_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The exact Hessian of the mean cross-entropy w.r.t. the prunable (weight) matrices."""
    params = prunable_parameters(model, [])
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]
    fixed = {k: v.detach() for k, v in model.named_parameters() if k not in params}

    def loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return F.cross_entropy(functional_call(model, {**fixed, **pieces}, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
    return torch.autograd.functional.hessian(loss, flat)


def context(weight_decay: float = 0.0, **kw) -> PruneContext:
    return PruneContext(
        level=0,
        seed=0,
        device=torch.device("cpu"),
        batches=lambda n: iter([]),
        loss_fn=F.cross_entropy,
        weight_decay=weight_decay,
        num_classes=3,
        load_state=lambda name: {},
        **kw,
    )


# --- LOMP: the L1 term --------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["all", "prunable"])
def test_l1_callback_gradient_equals_autograd_of_the_l1_term(scope):
    lam = 0.03
    model, (x, y) = tiny_net(), tiny_data()
    method = PruningLimit(LimitConfig(l1=lam, l1_scope=scope))
    chosen = method.l1_params(model)
    assert len(chosen) == (4 if scope == "all" else 2)  # 2 weights + 2 biases, or the weights

    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    penalty = method.callbacks(0, None, context())[0]
    assert isinstance(penalty, L1Penalty)
    penalty.on_level_start(model, 1, 1)
    penalty.on_after_backward(0, model)
    ours = {k: p.grad.clone() for k, p in model.named_parameters()}

    model.zero_grad()
    l1 = sum(p.abs().sum() for p in chosen.values())
    (F.cross_entropy(model(x), y) + lam * l1).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(ours[k], p.grad, rtol=0, atol=1e-12)
    # the penalty really acted: the biases' gradients differ exactly when they are in scope
    data_only = torch.autograd.grad(F.cross_entropy(model(x), y), model[0].bias)[0]
    assert torch.equal(ours["0.bias"], data_only) == (scope == "prunable")


def test_weight_decay_is_refused():
    method = PruningLimit(LimitConfig())
    with pytest.raises(ConfigError, match=r"train\.weight_decay=0"):
        method.prepare(tiny_net(), context(weight_decay=5e-4))
    method.prepare(tiny_net(), context(weight_decay=0.0))


def test_method_limit_selects_a_schedule_without_weight_decay_unless_told_otherwise():
    assert run_config(["method=limit"]).train.weight_decay == 0.0
    assert run_config(["method=limit", "train=cifar"]).train.weight_decay == 1e-4
    assert run_config(["method=magnitude"]).train.weight_decay == 5e-4


# --- the actual limit ----------------------------------------------------------------------------
def test_actual_limits_on_a_hand_made_sweep():
    rhos = [0.0, 0.1, 0.2, 0.3, 0.4]
    accuracies = [0.90, 0.90, 0.84, 0.95, 0.80]
    # strict: last >= 0.90 is 0.3; tolerance 0.05: last >= 0.85 is 0.3; first below 0.85: 0.2
    assert actual_limits(rhos, accuracies, 0.05) == {
        "strict": 0.3,
        "tolerance": 0.3,
        "first_drop": 0.1,
    }
    assert actual_limits(rhos, accuracies, 0.07)["first_drop"] == 0.3
    assert actual_limits(rhos, [0.9, 0.89, 0.88, 0.5, 0.5], 0.02)["strict"] == 0.0


def test_sweep_matches_a_brute_force_scan():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 4))
    x, y = torch.randn(50, 6), torch.randint(0, 4, (50,))
    params = prunable_parameters(model, [])
    total = sum(p.numel() for p in params.values())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grid = 40

    def evaluate(m: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            logits = m(x)
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())

    rows = magnitude_sweep(params, None, grid, lambda: evaluate(model))
    for k, v in model.state_dict().items():  # the weights are restored
        assert torch.equal(v, before[k])

    brute = []
    for i in range(grid):
        copy = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 4))
        copy.load_state_dict(before)
        weights = [copy[0].weight, copy[2].weight]
        flat = torch.cat([w.detach().reshape(-1) for w in weights]).abs()
        count = math.ceil(i / grid * total - 1e-9)
        threshold = flat.sort().values[count - 1] if count else -1.0
        with torch.no_grad():
            for w in weights:
                w.mul_(w.abs() > threshold)
        assert sum(int((w == 0).sum()) for w in weights) == count
        brute.append((i / grid, count, *evaluate(copy)))
    assert [r[:2] for r in rows] == [r[:2] for r in brute]
    np.testing.assert_allclose([r[2:] for r in rows], [r[2:] for r in brute], rtol=1e-6)
    # and the limits read off both agree with the definition, computed directly
    accuracies = [r[3] for r in brute]
    strict = max(r[0] for r in brute if r[3] >= accuracies[0])
    assert actual_limits([r[0] for r in rows], [r[3] for r in rows], 0.0)["strict"] == strict


# --- the Hessian spectrum ---------------------------------------------------------------------
def test_hessian_vector_products_are_the_columns_of_the_hessian_whatever_the_batching():
    model, (x, y) = tiny_net(), tiny_data()
    hessian = full_hessian(model, x, y)
    params = prunable_parameters(model, [])
    batches = [(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:], y[16:])]  # unequal sizes
    hvp = hessian_vector_product(model, params, batches, F.cross_entropy)
    v = torch.randn(hessian.shape[0], dtype=torch.float64)
    torch.testing.assert_close(hvp(v), hessian @ v, rtol=1e-10, atol=1e-12)


def test_lanczos_quadrature_is_exact_for_low_moments_and_finds_the_eigenvalues():
    model, (x, y) = tiny_net(), tiny_data()
    hessian = full_hessian(model, x, y)
    dim = hessian.shape[0]  # 24 prunable weights
    eigenvalues = torch.linalg.eigvalsh(hessian).numpy()
    v = (torch.randint(0, 2, (dim,), generator=torch.Generator().manual_seed(5)) * 2 - 1).double()
    q = v / v.norm()

    # m steps: an m-point Gauss quadrature, exact for polynomials of degree < 2m
    theta, tau = ritz(*lanczos(lambda u: hessian @ u, v, 6))
    assert len(theta) == 6 and tau.sum() == pytest.approx(1.0, abs=1e-12)
    for power in range(12):
        exact = float(q @ torch.linalg.matrix_power(hessian, power) @ q)
        scale = float(np.abs(eigenvalues).max()) ** power
        assert np.sum(tau * theta**power) == pytest.approx(exact, abs=1e-9 * scale)

    # as many steps as the dimension: the Ritz values are the eigenvalues that v sees
    theta, tau = ritz(*lanczos(lambda u: hessian @ u, v, 100))  # capped at the dimension
    top = float(np.abs(eigenvalues).max())
    for t in theta:
        assert np.min(np.abs(eigenvalues - t)) < 1e-8 * top
    assert theta.max() == pytest.approx(eigenvalues.max(), rel=1e-8)


def test_slq_moments_and_predicted_limit_agree_with_the_full_eigendecomposition():
    model, (x, y) = tiny_net(), tiny_data()
    hessian = full_hessian(model, x, y)
    dim = hessian.shape[0]
    eigenvalues = torch.linalg.eigvalsh(hessian).numpy()
    probes = 200
    spectrum = slq(lambda u: hessian @ u, dim, 8, probes, seed=0, device=torch.device("cpu"))
    assert spectrum.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert spectrum.steps == [8] * probes
    # tr(H^j) / P by Hutchinson: Var(v^T A v) = 2 sum_{i != j} A_ij^2 for Rademacher v, so the
    # stated tolerance is 4 standard errors of the mean over the probes
    for power in (1, 2):
        a = torch.linalg.matrix_power(hessian, power)
        exact = float(torch.trace(a)) / dim
        off = float((a**2).sum() - (torch.diagonal(a) ** 2).sum())
        tolerance = 4 * math.sqrt(2 * off / probes) / dim
        assert spectrum.moment(power) == pytest.approx(exact, abs=tolerance)
    assert spectrum.trace == pytest.approx(float(torch.trace(hessian)), rel=0.1)

    # the limit predicted from the SLQ spectrum and from the exact one, same eps and weights;
    # stated tolerance 0.01 (found 0.004). With a much smaller eps (1e-3) the 8-node quadrature
    # no longer resolves the 4 exactly flat directions (the softmax's shift invariance) from the
    # small eigenvalues beside them, and the two differ by 0.06: the prediction needs the small
    # end of the spectrum, which is where SLQ is coarsest.
    magnitudes = torch.cat(
        [p.detach().reshape(-1) for p in prunable_parameters(model, []).values()]
    )
    norm, eps = PrunedNorm(magnitudes), 0.01
    exact = predicted_limit(norm, eps, eigenvalues, np.full(dim, 1 / dim))
    estimate = predicted_limit(norm, eps, spectrum.nodes, spectrum.weights)
    assert 0.05 < exact < 0.95  # not a trivial case
    assert estimate == pytest.approx(exact, abs=0.01)


# --- the limit equation -----------------------------------------------------------------------
def test_pruned_norm_is_continuous_in_rho():
    norm = PrunedNorm(torch.tensor([3.0, -1.0, 2.0]))  # sorted squares 1, 4, 9
    assert norm(0.0) == 0.0
    assert norm(1 / 3) == pytest.approx(1.0)
    assert norm(0.5) == pytest.approx(math.sqrt(1 + 0.5 * 4))
    assert norm(1.0) == pytest.approx(math.sqrt(14))
    assert norm.at_count(2) == pytest.approx(math.sqrt(5))


def test_limit_equation_against_a_hand_solution():
    # half the mass flat (theta = 0), half at theta = 1; eps = 1/2, R(rho) = 4 rho / 3:
    # rho = 1/2 + (1/2) / (1 + (16/9) rho^2)  has the root rho = 3/4 (0.25 = 0.5 / (1 + 1))
    nodes, weights = np.array([0.0, 1.0]), np.array([0.5, 0.5])
    radius = lambda rho: 4 * rho / 3  # noqa: E731
    assert limit_fraction(radius(0.75), 0.5, nodes, weights) == pytest.approx(0.75)
    assert predicted_limit(radius, 0.5, nodes, weights) == pytest.approx(0.75, abs=1e-9)
    # a near-zero Ritz value counts as flat under the threshold rule
    noisy = np.array([1e-9, 1.0])
    assert np.array_equal(zero_mass(noisy, "threshold", 1e-4), nodes)
    assert np.array_equal(zero_mass(noisy, "none", 1e-4), noisy)
    # no curvature at all: every weight may go; eps = 0 with curvature: none may
    assert predicted_limit(radius, 0.5, np.zeros(2), weights) == pytest.approx(1.0, abs=1e-9)
    assert predicted_limit(radius, 0.0, np.array([1.0]), np.ones(1)) == pytest.approx(0, abs=1e-9)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="l1_scope"):
        LimitConfig(l1_scope="biases")
    with pytest.raises(ConfigError, match="zero_mass"):
        LimitConfig(zero_mass="guess")
    with pytest.raises(ConfigError, match="lanczos_iter"):
        LimitConfig(lanczos_iter=0)


# --- the run -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bare_method_limit_runs_and_writes_its_analysis(tmp_path):
    from prune_cli.experiment import Experiment

    cfg = run_config(
        [
            "method=limit",
            "progress=false",
            "train.epochs=3",
            "method.grid=50",
            "method.lanczos_iter=20",
            "method.probes=1",
            "method.hessian_samples=64",
        ]
    )
    summary = Experiment(cfg, tmp_path).run()
    info = summary["method_info"]
    assert 0 < info["predicted_limit"] < 1
    assert 0 <= info["actual_limit"] <= info["actual_limit_tolerance"] < 1
    assert info["eps"] > 0 and info["hessian_samples"] == 64
    assert info["lanczos_steps"] == [20]
    stored = json.loads((tmp_path / "summary.json").read_text())["method_info"]
    assert stored["predicted_limit"] == info["predicted_limit"]
    with open(tmp_path / "limit.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 50 and float(rows[0]["rho"]) == 0 and float(rows[0]["R"]) == 0
    assert float(rows[0]["accuracy"]) == info["dense_accuracy"]
    assert float(rows[0]["g_R"]) == pytest.approx(1.0)
    radii = [float(r["R"]) for r in rows]
    assert radii == sorted(radii)
    with open(tmp_path / "spectrum.csv") as fh:
        spectrum = list(csv.DictReader(fh))
    assert len(spectrum) == 20
    assert sum(float(r["weight"]) for r in spectrum) == pytest.approx(1.0)
    assert (tmp_path / "limit.png").stat().st_size > 0


def test_the_limit_on_a_split_with_no_samples_is_refused(tmp_path):
    """dataset.val_size=0 (selection by the last epoch): the sweep on method.split=val would
    measure nothing; one line says what to use instead."""
    from prune_cli.experiment import Experiment

    cfg = run_config(
        [
            "method=limit",
            "model=mlp",
            "progress=false",
            "train.epochs=1",
            "train.select=last",
            "dataset.val_size=0",
            "method.grid=5",
            "method.lanczos_iter=4",
            "method.probes=1",
            "method.hessian_samples=16",
        ]
    )
    with pytest.raises(ConfigError, match=r"method\.split=val holds no samples"):
        Experiment(cfg, tmp_path).run()


# --- the limit as an analysis of any run ------------------------------------------------------
def test_analysis_names_and_settings_are_validated_when_composed():
    assert run_config(["analysis=[limit]"]).analysis["limit"]["grid"] == 200
    assert run_config([]).analysis is None  # none chosen: nothing in the hash
    with pytest.raises(ConfigError, match=r"analysis\.limit: "):
        run_config(["analysis=[limit]", "analysis.limit.grid=0"])
    with pytest.raises(ConfigError, match=r"analysis\.limit: "):
        run_config(["analysis=[limit]", "+analysis.limit.sparsity_goal=3"])
    with pytest.raises(ConfigError, match="belong to method=limit's training"):
        run_config(["analysis=[limit]", "+analysis.limit.l1=0.1"])
    from prune_cli.analysis import check

    with pytest.raises(ConfigError, match="unknown analysis 'hessian'"):
        check({"hessian": {}})


@pytest.mark.slow
def test_an_analysed_run_records_the_predicted_limit_and_the_report_shows_it(tmp_path):
    from prune_cli.experiment import Experiment
    from prune_cli.report_cli import main as report_main

    cfg = run_config(
        [
            "model=mlp",
            "dataset.limit_train=512",
            "progress=false",
            "train.epochs=2",
            "method.levels=1",
            "analysis=[limit]",
            "analysis.limit.grid=20",
            "analysis.limit.lanczos_iter=10",
            "analysis.limit.probes=1",
            "analysis.limit.hessian_samples=64",
        ]
    )
    summary = Experiment(cfg, tmp_path / "run").run()
    limit = summary["analysis"]["limit"]
    assert 0 < limit["predicted_limit"] < 1 and limit["lanczos_steps"] == [10]
    # measured on the dense level: its accuracy is level 0's on the same split
    assert limit["dense_accuracy"] == pytest.approx(summary["levels"][0]["val_accuracy"])
    folder = tmp_path / "run" / "analysis" / "limit"
    assert {p.name for p in folder.iterdir()} == {"limit.csv", "spectrum.csv", "limit.png"}
    report_main([str(tmp_path / "run"), "-o", str(tmp_path / "report"), "--formats", "png"])
    table = (tmp_path / "report" / "accuracy.md").read_text()
    remaining = f"{100 * (1 - limit['predicted_limit']):.2f}"
    assert "predicted limit, remaining %" in table and remaining in table


# --- the authors' estimator (issue 25) ---------------------------------------------------------
def _authors_style_binned(nodes, weights, eps, rhos, radii, bins):
    """A direct reading of the authors' pipeline, one grid point at a time: the density on
    ``bins`` points, g at whole-number R, the sweep's rho nearest to its g."""
    low, high = nodes.min() - 0.01, nodes.max() + 0.01
    grid = [low + i * (high - low) / (bins - 1) for i in range(bins)]
    var = 1e-10 * max(1.0, high - low)
    density = []
    for x in grid:
        density.append(
            sum(
                w * math.exp(-((x - n) ** 2) / (2 * var))
                for n, w in zip(nodes, weights, strict=True)
            )
            / math.sqrt(2 * math.pi * var)
        )
    total = sum(density) * (grid[1] - grid[0])
    density = [d / total for d in density]
    gaps = []
    for rho, radius in zip(rhos, radii, strict=True):
        r = round(radius)  # Python's round: half to even, as numpy's
        g = sum(
            d * (2 * eps / abs(x)) / (r**2 + 2 * eps / abs(x))
            for x, d in zip(grid, density, strict=True)
            if d > 0
        )
        gaps.append(abs(g / sum(density) - rho))
    return rhos[gaps.index(min(gaps))]


def test_both_estimators_on_a_tiny_model_with_its_exact_hessian():
    from prune_cli.pruning.spectrum import binned_density, integer_radius_limit

    model, (x, y) = tiny_net(), tiny_data()
    hessian = full_hessian(model, x, y)
    dim = hessian.shape[0]
    # one probe, Lanczos to the full dimension: exact (it stops once the Krylov space is
    # invariant), so the quadrature reproduces q1^T H q1 exactly
    spectrum = slq(lambda u: hessian @ u, dim, dim, 1, seed=0, device=torch.device("cpu"))
    q1 = (torch.randint(0, 2, (dim,), generator=torch.Generator().manual_seed(0)) * 2 - 1).double()
    q1 = q1 / q1.norm()
    assert spectrum.moment(1) == pytest.approx(float(q1 @ hessian @ q1), abs=1e-10)
    magnitudes = torch.cat(
        [p.detach().reshape(-1) for p in prunable_parameters(model, []).values()]
    )
    # a large spread of the loss, so that the weights' norm (about 2) spans several integers
    norm, eps = PrunedNorm(magnitudes * 10), 0.5
    # quadrature: the root of rho = g(R(rho)) with the Ritz nodes and weights as they are
    quadrature = predicted_limit(norm, eps, spectrum.nodes, spectrum.weights)
    assert quadrature - limit_fraction(norm(quadrature), eps, spectrum.nodes, spectrum.weights) == (
        pytest.approx(0.0, abs=1e-6)
    )
    # binned: against the direct reading, on a grid small enough to loop over here
    bins = 3000
    rhos = [i / 40 for i in range(40)]
    radii = [norm(r) for r in rhos]
    grid, density = binned_density(spectrum, bins=bins)
    assert float(np.sum(density) * (grid[1] - grid[0])) == pytest.approx(1.0)
    binned, g_values = integer_radius_limit(rhos, radii, eps, grid, density)
    direct = _authors_style_binned(spectrum.nodes, spectrum.weights, eps, rhos, radii, bins)
    assert binned == direct
    assert binned in rhos and g_values[0] == pytest.approx(1.0)  # g(0) = 1
    # g is constant between whole-number R: rows of the same rounded R share one value
    same = [i for i in range(len(rhos)) if round(radii[i]) == round(radii[1])]
    assert len({g_values[i] for i in same}) == 1


def test_the_binned_estimator_is_recorded_with_its_zero_mass(tmp_path):
    from prune_cli.experiment import Experiment

    args = ["method=limit", "progress=false", "train.epochs=1", "method.grid=20"]
    small = ["method.lanczos_iter=10", "method.probes=1", "method.hessian_samples=32"]
    cfg = run_config([*args, *small, "method.estimator=binned", "method.zero_mass=none"])
    info = Experiment(cfg, tmp_path).run()["method_info"]
    assert info["estimator"] == "binned" and info["zero_mass"] == "none"
    assert info["predicted_limit"] in [i / 20 for i in range(20)]  # a sweep point
    # the Hessian is over every parameter, weights and biases
    assert (
        info["hessian_dim"] == json.loads((tmp_path / "summary.json").read_text())["params_total"]
    )
    assert info["prunable_weights"] < info["hessian_dim"]
