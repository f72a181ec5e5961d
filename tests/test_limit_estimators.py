"""Issue 25, the pruning limit: one run records both estimators' predictions (``quadrature``,
prune-run's, and ``binned``, the authors' pipeline), each with the zero mass it used and the
dimension of its Hessian; checked on a tiny model against its exact Hessians."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import prune_context
from torch import nn
from torch.func import functional_call

from prune_cli.pruning.mask import Masks, prunable_parameters
from prune_cli.pruning.methods.limit import LimitConfig, limit_results, measure_limit
from prune_cli.pruning.spectrum import (
    PrunedNorm,
    binned_density,
    integer_radius_limit,
    predicted_limit,
    slq,
    zero_mass,
)
from prune_cli.seeds import derive_seed


def tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 3-5-3 tanh network with biases (so the two estimators' Hessians differ: 30 weights,
    38 parameters), and 24 samples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(24, 3, generator=gen, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (24,), generator=gen)


def exact_hessian(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor):
    """The Hessian of the mean cross-entropy over all samples w.r.t. ``names``, by autograd."""
    params = dict(model.named_parameters())
    shapes, sizes = [params[n].shape for n in names], [params[n].numel() for n in names]
    fixed = {k: v.detach() for k, v in params.items() if k not in names}

    def loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return F.cross_entropy(functional_call(model, {**fixed, **pieces}, (x,)), y)

    return torch.autograd.functional.hessian(
        loss, torch.cat([params[n].detach().reshape(-1) for n in names])
    )


def run(model, x, y, folder: Path, **settings) -> dict:
    """``measure_limit`` with a Lanczos as long as the larger Hessian (so it is exact), on
    four batches of 6 (eps their loss spread), the sweep evaluated on the same samples."""
    batches = [(x[i : i + 6], y[i : i + 6]) for i in range(0, 24, 6)]

    def evaluate(m: nn.Module, split: str) -> tuple[float, float]:
        with torch.no_grad():
            out = m(x)
        return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())

    ctx = prune_context(batches, evaluate=evaluate)
    cfg = LimitConfig(
        grid=40, hessian_samples=24, hessian_batch=None, lanczos_iter=38, probes=1, **settings
    )
    params = prunable_parameters(model)
    return measure_limit(model, params, Masks.ones(params), ctx, cfg, folder.joinpath)


def reference(model, x, y, estimator: str, mode: str, eps: float) -> float:
    """The estimator's prediction from the exact Hessian (prunable weights for quadrature,
    every parameter for binned), the same probe, and the sweep's rho and R written out."""
    weights = list(prunable_parameters(model))
    names = weights if estimator == "quadrature" else [n for n, _ in model.named_parameters()]
    hessian = exact_hessian(model, names, x, y)
    dim = hessian.shape[0]
    seed = derive_seed(0, "limit-probes")
    spectrum = slq(lambda u: hessian @ u, dim, dim, 1, seed, torch.device("cpu"))
    params = dict(model.named_parameters())
    norm = PrunedNorm(torch.cat([params[n].detach().abs().reshape(-1) for n in weights]))
    if estimator == "quadrature":
        nodes = zero_mass(spectrum.nodes, mode, 1e-4)
        return predicted_limit(norm, eps, nodes, spectrum.weights)
    grid, density = binned_density(spectrum)
    total = norm.count
    rhos = [i / 40 for i in range(40)]
    # the sweep prunes ceil(rho P) weights at rho
    radii = [norm.at_count(math.ceil(i * total / 40)) for i in range(40)]
    return integer_radius_limit(rhos, radii, eps, zero_mass(grid, mode, 1e-4), density)[0]


def test_one_run_records_both_estimators_each_with_its_zero_mass(tmp_path):
    model, x, y = tiny()
    info = run(model, x, y, tmp_path)  # the defaults: quadrature with threshold
    assert info["estimator"] == "quadrature" and info["zero_mass"] == "threshold"
    assert info["zero_mass_quadrature"] == "threshold"
    assert info["zero_mass_binned"] == "none"  # the authors' pipeline as it is
    assert info["hessian_dim_quadrature"] == 30 == info["hessian_dim"]
    assert info["hessian_dim_binned"] == 38  # weights and biases
    assert info["predicted_limit"] == info["predicted_limit_quadrature"]
    eps = info["eps"]
    assert eps > 0
    quadrature = reference(model, x, y, "quadrature", "threshold", eps)
    assert info["predicted_limit_quadrature"] == pytest.approx(quadrature, abs=1e-7)
    binned = reference(model, x, y, "binned", "none", eps)
    assert info["predicted_limit_binned"] == binned
    assert binned in [i / 40 for i in range(40)]  # a point of the sweep


def test_choosing_the_other_estimator_swaps_which_one_is_predicted_limit(tmp_path):
    """The recorded other estimate is what choosing it gives: the two runs agree on both."""
    model, x, y = tiny()
    default = run(model, x, y, tmp_path)
    authors = run(model, x, y, tmp_path, estimator="binned", zero_mass="none")
    assert authors["estimator"] == "binned" and authors["zero_mass"] == "none"
    assert authors["predicted_limit"] == authors["predicted_limit_binned"]
    assert authors["hessian_dim"] == 38
    for key in ("predicted_limit_quadrature", "predicted_limit_binned"):
        assert authors[key] == pytest.approx(default[key], abs=1e-9)
    assert authors["zero_mass_quadrature"] == "threshold"
    # the chosen estimator's zero mass is the setting's: quadrature with none differs in mode
    bare = run(model, x, y, tmp_path, zero_mass="none")
    assert bare["zero_mass_quadrature"] == "none" and bare["zero_mass_binned"] == "none"
    eps = bare["eps"]
    assert bare["predicted_limit"] == pytest.approx(
        reference(model, x, y, "quadrature", "none", eps), abs=1e-7
    )


def test_the_report_declares_both_predictions():
    results = limit_results()
    (table,) = results.tables
    headings = {c.column: c.heading for c in table.cells}
    assert headings["predicted_limit_quadrature"] == "quadrature"
    assert headings["predicted_limit_binned"] == "binned"
    keys = {c.key for c in results.columns}
    assert {"predicted_limit_quadrature", "predicted_limit_binned"} <= keys
