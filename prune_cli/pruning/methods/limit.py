"""The fundamental limit of the pruning ratio: Zhang et al., "How Sparse Can We Prune a Deep
Network: A Fundamental Limit Viewpoint" (NeurIPS 2024, arXiv 2306.05857; METHODS.md section 5).

``method=limit`` trains densely (level 0 only) with LOMP's objective, loss + l1 * ||w||_1, and
then, in ``finalize``, analyses the trained model without changing it:

- the actual limit: global one-shot magnitude pruning at rho = i / grid (i = 0..grid - 1), each
  pruned copy evaluated without fine-tuning on ``split``; the largest rho whose accuracy is >= the
  dense one (``strict``), within ``tolerance`` of it, and the authors' "last rho before the first
  drop". The authors measured on the test set; here the default is the validation split, so that
  the test set stays unused for anything that is selected or compared (``split: test`` for theirs);
- the prediction (``pruning/spectrum.py``): eps = standard deviation of per-batch training losses
  (eval mode, full batches only), the Hessian spectrum of the loss with respect to the prunable
  weights by stochastic Lanczos quadrature on ``hessian_samples`` training samples, and the rho*
  solving rho = g(R(rho)).

Files in the run directory: ``limit.csv`` (rho, pruned count, loss, accuracy, R, g(R)) and
``spectrum.csv`` (probe, Ritz value, weight); ``summary.json`` gets both limits, eps, the trace
estimate and the Lanczos settings under ``method_info``.

Two estimators of the prediction (``estimator``): null / ``quadrature`` (prune-run's: the
Ritz nodes and weights as they are, R(rho) continuous, rho* by bisection, the Hessian over
the prunable weights) follows the paper's formula; ``binned`` follows the authors' pipeline
(density_plot.py, cal_rate.py): the spectrum smoothed onto a 1e5-bin grid with a kernel
narrower than a bin (``spectrum.binned_density``), g(R) evaluated at whole-number R only and
rho* the sweep's rho nearest to g(round(R(rho))) (``spectrum.integer_radius_limit``), the
Hessian over every trainable parameter (weights and biases, BatchNorm's too). On one
L1-trained MLP with the exact Hessian (an independent check) the formula gives 0.781,
``quadrature`` 0.790-0.812 (``zero_mass=threshold``), the authors' pipeline 0.716: ``binned``
is the one to compare with the paper's tables.
``summary.json`` records ``estimator`` and ``zero_mass`` beside the prediction (``zero_mass``
applies to the Ritz nodes, or to the grid points with ``binned``; the authors' is ``none``).
The other estimator predicts on the same run too, with its own zero mass (``threshold`` for
``quadrature``, the authors' ``none`` for ``binned``; ``OWN_ZERO_MASS``), on a spectrum of its own
Hessian (one more Lanczos run where the two parameter sets differ): ``summary.json`` has
``predicted_limit_<estimator>``, ``zero_mass_<estimator>`` and ``hessian_dim_<estimator>`` for
both, and the report's limit table shows both beside ``predicted`` (the chosen one's).

Choices left open by the paper, as settings: ``l1_scope`` (``all``: every weight and bias,
BatchNorm's included, as the authors' ``get_regularization_loss_my``; ``prunable``: the conv and
linear weights only); ``zero_mass`` (how the near-zero eigenvalues are counted). The L1 term is
applied as its subgradient l1 * sign(w) added to the gradients after the backward pass (sign(0)
= 0, as autograd of |w| gives), so the training loop and its logged loss stay those of the data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prune_cli.callbacks import Callback
from prune_cli.errors import ConfigError
from prune_cli.io import save_csv
from prune_cli.pruning.derivatives import preserved, scoring_batches
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import (
    METHODS,
    Batch,
    MethodConfig,
    PruneContext,
    PruningMethod,
    check_range,
)
from prune_cli.pruning.results import Cell, Column, Marker, Results, Table
from prune_cli.pruning.spectrum import (
    ESTIMATORS,
    ZERO_MASS_MODES,
    PrunedNorm,
    Spectrum,
    actual_limits,
    binned_density,
    hessian_vector_product,
    integer_radius_limit,
    limit_fraction,
    magnitude_sweep,
    predicted_limit,
    slq,
    zero_mass,
)
from prune_cli.seeds import derive_seed

log = logging.getLogger("prune_cli.experiment")

L1_SCOPES = ("all", "prunable")


@dataclass
class LimitConfig(MethodConfig):
    name: str = "limit"
    #: lambda of the L1 term (the authors: 5e-5 FC5 and ResNet-18, 1e-4 VGG-16, 2e-5 ResNet-50)
    l1: float = 5e-5
    #: ``all``: every parameter (the authors' weights and biases); ``prunable``: conv/linear weights
    l1_scope: str = "all"
    #: accuracy (a fraction) the tolerant limit may lose: 0.01, as digits' validation split has
    #: 144 images (one is 0.7 points); the authors' 0.1 points = 0.001. This and the sizes of the
    #: sweep and of the Hessian suit the demo (LeNet-5 on digits, about a minute on 2 CPU cores);
    #: conf/experiment/limit_*.yaml hold the authors'
    tolerance: float = 0.01
    #: sweep rho = i / grid (the authors: i / 1000; a step of 0.005 keeps the demo short)
    grid: int = 200
    #: split the pruned copies are evaluated on (the authors used the test set)
    split: str = "val"
    #: training samples of the fixed subset on which the Hessian is taken (the authors: 1000)
    hessian_samples: int = 256
    #: samples per forward pass of a Hessian-vector product (null = train.batch_size): larger
    #: is faster, smaller needs less memory; the product does not depend on it
    hessian_batch: int | None = 256
    #: Lanczos steps per probe (capped at the number of prunable weights)
    lanczos_iter: int = 100
    #: Rademacher probes (the authors: one, ``lanczos_num: 1``)
    probes: int = 2
    #: ``threshold``: Ritz values with |theta| <= zero_tol * max |theta| count as 0; ``none``
    zero_mass: str = "threshold"
    zero_tol: float = 1e-4
    #: training batches whose loss spread is eps; null = one epoch
    eps_batches: int | None = None
    #: null / ``quadrature``: Ritz nodes, continuous R, bisection, Hessian over the prunable
    #: weights; ``binned``: the authors' pipeline (1e5-bin density, whole-number R, Hessian
    #: over all trainable parameters)
    estimator: str | None = None

    def __post_init__(self) -> None:
        if self.l1 < 0 or self.tolerance < 0 or self.zero_tol < 0:
            raise ConfigError("method.l1, method.tolerance and method.zero_tol must be >= 0")
        if self.l1_scope not in L1_SCOPES:
            raise ConfigError(
                f"method.l1_scope must be one of {', '.join(L1_SCOPES)}, got {self.l1_scope!r}"
            )
        if self.zero_mass not in ZERO_MASS_MODES:
            raise ConfigError(
                f"method.zero_mass must be one of {', '.join(ZERO_MASS_MODES)}, "
                f"got {self.zero_mass!r}"
            )
        if self.estimator not in (None, *ESTIMATORS):
            raise ConfigError(
                f"method.estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}"
            )
        if self.split not in ("val", "test"):
            raise ConfigError(f"method.split must be val or test, got {self.split!r}")
        for key in ("grid", "hessian_samples", "lanczos_iter", "probes"):
            check_range(key, getattr(self, key), 1)
        check_range("hessian_batch", self.hessian_batch, 1, nullable=True)
        check_range("eps_batches", self.eps_batches, 2, nullable=True)


class L1Penalty(Callback):
    """Adds l1 * sign(w) to the gradients: the subgradient of l1 * ||w||_1 over the parameters
    ``select(model)`` returns (found when the level starts: after ``prepare`` and ``.to``)."""

    def __init__(
        self, select: Callable[[nn.Module], Mapping[str, nn.Parameter]], l1: float
    ) -> None:
        self.select = select
        self.l1 = l1
        self.params: list[nn.Parameter] | None = None

    def on_level_start(self, model: nn.Module, steps_per_epoch: int, epochs: int) -> None:
        self.params = list(self.select(model).values())

    @torch.no_grad()
    def on_after_backward(self, step: int, model: nn.Module) -> None:
        if self.params is None:
            self.params = list(self.select(model).values())
        for p in self.params:
            if p.grad is not None:
                p.grad.add_(torch.sign(p), alpha=self.l1)


def loss_spread(model: nn.Module, batches: list[Batch], ctx: PruneContext) -> float:
    """eps: the standard deviation (unbiased) of per-batch mean training losses."""
    with preserved(model), torch.no_grad():
        losses = [float(ctx.loss_fn(model(x), y)) for x, y in batches]
    return float(np.std(losses, ddof=1)) if len(losses) > 1 else 0.0


LIMIT_NOTE = (
    "Mean ± std over seeds. `predicted`: the limit rho* from the weight magnitudes and the "
    "Hessian spectrum, by the run's `method.estimator` and `method.zero_mass`; `quadrature` / "
    "`binned`: each estimator's rho* on the same run (the one not chosen with its own zero mass: "
    "`threshold` for quadrature, the authors' `none` for binned; summary.json's "
    "`zero_mass_<estimator>`); `actual`: the largest rho whose one-shot pruned accuracy (no "
    "fine-tuning) is not below the dense one; `actual (tolerance)`: within `method.tolerance` of "
    "it; `dense acc`: on the split the limit is measured on."
)

#: the limit's figures (``measure_limit``'s keys) -> their report columns
LIMIT_COLUMNS = {
    "predicted_limit": "predicted_limit",
    "predicted_limit_quadrature": "predicted_limit_quadrature",
    "predicted_limit_binned": "predicted_limit_binned",
    "actual_limit": "actual_limit",
    "actual_limit_tolerance": "actual_limit_tolerance",
    "dense_accuracy": "limit_dense_accuracy",
    "eps": "limit_eps",
    "hessian_trace": "hessian_trace",
}


def limit_results(source: str = "method_info", prefix: str = "") -> Results:
    """What the pruning limit adds to the report. ``method=limit`` (figures in ``method_info``):
    the figures beside its one level and a table of predicted against actual limits, and the
    files ``measure_limit`` writes. ``analysis=[limit]`` (``source="analysis.limit"``, columns
    ``analysis_*``): the figures on every level row (the dense model's limit, to compare with
    what each level reached), the prediction as remaining weights in the accuracy table and as a
    line on the accuracy figure."""
    analysis = source != "method_info"
    columns = tuple(
        Column(
            key,
            f"{prefix}{column}",
            source=source,
            levels="all" if analysis else "last",
            heading="predicted limit, remaining %"
            if analysis and key == "predicted_limit"
            else None,
            display="remaining" if analysis and key == "predicted_limit" else None,
        )
        for key, column in LIMIT_COLUMNS.items()
    )
    if analysis:
        marker = Marker(f"{prefix}predicted_limit", "predicted limit")
        return Results(columns=columns, markers=(marker,))
    table = Table(
        name="limit",
        title="Pruning limit: predicted against actual (fraction of weights removed)",
        note=LIMIT_NOTE,
        when="predicted_limit",
        cells=(
            Cell("predicted_limit", "predicted"),
            Cell("predicted_limit_quadrature", "quadrature"),
            Cell("predicted_limit_binned", "binned"),
            Cell("actual_limit", "actual"),
            Cell("actual_limit_tolerance", "actual (tolerance)"),
            Cell("limit_dense_accuracy", "dense acc"),
        ),
    )
    return Results(
        columns=columns,
        tables=(table,),
        files=("limit.csv", "spectrum.csv", "limit.png"),
        target=None,  # the limit is measured, not targeted
        dense_baseline=False,  # it ends at level 0 by design: its own family
    )


@METHODS.register("limit")
class PruningLimit(PruningMethod):
    Config = LimitConfig
    results = limit_results()
    cfg: LimitConfig

    def num_levels(self) -> int:
        return 0  # train only; the analysis is in finalize

    def _check(self, ctx: PruneContext) -> None:
        # the L1 term must be the only regulariser: the limit is derived for LOMP's objective
        if ctx.weight_decay != 0:
            raise ConfigError(
                f"method=limit trains with the L1 term only: set train.weight_decay=0 "
                f"(got {ctx.weight_decay})"
            )

    def l1_params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        if self.cfg.l1_scope == "prunable":
            return self.prunable(model)
        return {k: p for k, p in model.named_parameters() if p.requires_grad}

    def prepare(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        self._check(ctx)
        return model

    def callbacks(self, level: int, masks: Masks, ctx: PruneContext) -> list[Callback]:
        # weight decay is checked in prepare, which every run (and every resumed one) calls
        if self.cfg.l1 == 0:
            return []
        return [L1Penalty(self.l1_params, self.cfg.l1)]

    def spectrum(self, model: nn.Module, ctx: PruneContext) -> tuple[Spectrum, int]:
        """The SLQ spectrum of the Hessian w.r.t. the prunable weights, and the samples used."""
        return hessian_spectrum(model, self.prunable(model), ctx, self.cfg)

    def finalize(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> dict[str, Any]:
        info = measure_limit(model, self.prunable(model), masks, ctx, self.cfg, ctx.artifact_path)
        return {**info, "l1": self.cfg.l1, "l1_scope": self.cfg.l1_scope}


def hessian_spectrum(
    model: nn.Module, params: Mapping[str, nn.Parameter], ctx: PruneContext, cfg: LimitConfig
) -> tuple[Spectrum, int]:
    """The SLQ spectrum of the Hessian w.r.t. ``params`` on a fixed subset of exactly
    ``cfg.hessian_samples`` training examples, and the number of samples used."""
    batches = scoring_batches(ctx, cfg.hessian_samples)
    x = torch.cat([b[0] for b in batches])[: cfg.hessian_samples]
    y = torch.cat([b[1] for b in batches])[: cfg.hessian_samples]
    size = cfg.hessian_batch or max(len(b[1]) for b in batches)
    subset = [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]
    dim = sum(p.numel() for p in params.values())
    with preserved(model):
        hvp = hessian_vector_product(model, params, subset, ctx.loss_fn)
        spectrum = slq(
            hvp,
            dim,
            cfg.lanczos_iter,
            cfg.probes,
            derive_seed(ctx.seed, "limit-probes"),
            next(iter(params.values())).device,
        )
    return spectrum, len(y)


#: the zero-mass rule of each estimator where it is not the chosen one (``method.zero_mass``
#: applies to the chosen one): prune-run's default for ``quadrature``, the authors' for
#: ``binned``, so that a run with the defaults also records the authors' pipeline as it is
OWN_ZERO_MASS = {"quadrature": "threshold", "binned": "none"}


@dataclass
class Estimate:
    """One estimator's prediction of the limit and what made it."""

    estimator: str
    zero_mass: str
    predicted: float
    #: g(R) of each row of the sweep (at whole-number R with ``binned``)
    g_values: list[float]
    spectrum: Spectrum
    #: the Hessian's samples, and the share of the mass ``zero_mass`` counts as exactly 0
    samples: int
    zero_mass_fraction: float


def estimate(
    estimator: str,
    zero_mass_mode: str,
    spectrum: Spectrum,
    samples: int,
    norm: PrunedNorm,
    eps: float,
    rhos: list[float],
    radii: list[float],
    zero_tol: float,
) -> Estimate:
    """The prediction of ``estimator`` from a Hessian ``spectrum`` (over the prunable weights
    for ``quadrature``, over every trainable parameter for ``binned``) and the sweep's
    sparsities ``rhos`` with the norms ``radii`` of what each removes."""
    if estimator == "binned":
        points, mass = binned_density(spectrum)
    else:
        points, mass = spectrum.nodes, spectrum.weights
    nodes = zero_mass(points, zero_mass_mode, zero_tol)
    if estimator == "binned":
        predicted, g_values = integer_radius_limit(rhos, radii, eps, nodes, mass)
    else:
        predicted = predicted_limit(norm, eps, nodes, mass)
        g_values = [limit_fraction(r, eps, nodes, mass) for r in radii]
    zero = nodes == 0
    fraction = float(mass[zero].sum() / max(float(mass.sum()), 1e-300))
    return Estimate(estimator, zero_mass_mode, predicted, g_values, spectrum, samples, fraction)


def measure_limit(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    masks: Masks,
    ctx: PruneContext,
    cfg: LimitConfig,
    path: Callable[[str], Path],
) -> dict[str, Any]:
    """The actual and the predicted pruning limit of ``model`` as it is; writes ``limit.csv``,
    ``spectrum.csv`` and ``limit.png`` where ``path(name)`` says. ``method=limit`` calls it
    after its L1 training; ``analysis=[limit]`` on any run's dense level.

    Both estimators predict: ``cfg.estimator`` with ``cfg.zero_mass`` gives ``predicted_limit``
    (and the files' g(R) and spectrum); the other, with its own zero mass (``OWN_ZERO_MASS``),
    is recorded beside it, each as ``predicted_limit_<estimator>`` with its
    ``zero_mass_<estimator>`` and ``hessian_dim_<estimator>``."""
    evaluate = ctx.evaluate
    if evaluate is None:
        raise ConfigError("the pruning limit needs a way to evaluate models (ctx.evaluate)")
    # eps from full batches only: a short last batch has a larger loss spread of its own
    batches = list(ctx.batches(cfg.eps_batches or 10**9))
    full = [b for b in batches if len(b[1]) == len(batches[0][1])]
    eps = loss_spread(model, full, ctx)
    chosen = cfg.estimator or "quadrature"
    order = (chosen, *(e for e in ESTIMATORS if e != chosen))
    # the authors take the Hessian over every trainable parameter, not the prunable weights;
    # one spectrum serves both where the two sets are the same (a model without biases)
    over = {
        "quadrature": dict(params),
        "binned": {k: p for k, p in model.named_parameters() if p.requires_grad},
    }
    spectra: dict[tuple[str, ...], tuple[Spectrum, int]] = {}
    for name in order:
        if tuple(over[name]) not in spectra:
            spectra[tuple(over[name])] = hessian_spectrum(model, over[name], ctx, cfg)
    magnitudes = torch.cat([(p.detach() * masks[k]).abs().reshape(-1) for k, p in params.items()])
    norm = PrunedNorm(magnitudes)
    rows = magnitude_sweep(params, masks, cfg.grid, lambda: evaluate(model, cfg.split))
    rhos = [r[0] for r in rows]
    radii = [norm.at_count(k) for _, k, _, _ in rows]
    estimates = {
        name: estimate(
            name,
            cfg.zero_mass if name == chosen else OWN_ZERO_MASS[name],
            *spectra[tuple(over[name])],
            norm,
            eps,
            rhos,
            radii,
            cfg.zero_tol,
        )
        for name in order
    }
    main = estimates[chosen]
    predicted, spectrum = main.predicted, main.spectrum

    dense_loss, dense_accuracy = rows[0][2], rows[0][3]
    if math.isnan(dense_accuracy):
        raise ConfigError(f"method.split={cfg.split} holds no samples here; use a split with data")
    limits = actual_limits(rhos, [r[3] for r in rows], cfg.tolerance)
    table = [
        (rho, k, loss, accuracy, radius, g)
        for (rho, k, loss, accuracy), radius, g in zip(rows, radii, main.g_values, strict=True)
    ]
    save_csv(
        table,
        ["rho", "pruned", "loss", "accuracy", "R", "g_R"],
        path("limit.csv"),
    )
    save_csv(
        zip(
            spectrum.probe.tolist(),
            spectrum.nodes.tolist(),
            spectrum.weights.tolist(),
            strict=True,
        ),
        ["probe", "ritz_value", "weight"],
        path("spectrum.csv"),
    )
    plot_limit(table, predicted, limits, path("limit.png"))
    log.info(
        "pruning limit: predicted %.4f (%s), actual %.4f (strict) / %.4f (tolerance %.4g); %s",
        predicted,
        chosen,
        limits["strict"],
        limits["tolerance"],
        cfg.tolerance,
        ", ".join(
            f"{e.estimator} {e.predicted:.4f} (zero_mass {e.zero_mass})" for e in estimates.values()
        ),
    )
    each: dict[str, Any] = {}
    for e in estimates.values():
        each[f"predicted_limit_{e.estimator}"] = e.predicted
        each[f"zero_mass_{e.estimator}"] = e.zero_mass
        each[f"hessian_dim_{e.estimator}"] = e.spectrum.dim
    return {
        "predicted_limit": predicted,
        "actual_limit": limits["strict"],
        "actual_limit_tolerance": limits["tolerance"],
        "actual_limit_first_drop": limits["first_drop"],
        "tolerance": cfg.tolerance,
        "split": cfg.split,
        "dense_accuracy": dense_accuracy,
        "dense_loss": dense_loss,
        "eps": eps,
        "eps_batches": len(full),
        "hessian_trace": spectrum.trace,
        "hessian_samples": main.samples,
        "lanczos_iter": cfg.lanczos_iter,
        "lanczos_steps": spectrum.steps,
        "probes": cfg.probes,
        # what made the prediction
        "estimator": chosen,
        "zero_mass": cfg.zero_mass,
        "zero_mass_fraction": main.zero_mass_fraction,
        "hessian_dim": spectrum.dim,
        # each estimator's prediction, the chosen one's included
        **each,
        "prunable_weights": sum(p.numel() for p in params.values()),
        "weights_norm": norm.at_count(norm.count),
        "files": ["limit.csv", "spectrum.csv", "limit.png"],
    }


def plot_limit(
    table: list[tuple[float, int, float, float, float, float]],
    predicted: float,
    limits: dict[str, float],
    path: Path,
) -> None:
    """Pruned accuracy and g(R(rho)) against rho, with the predicted and actual limits marked:
    the predicted limit is where the g curve crosses the diagonal rho."""
    import matplotlib  # imported here: only this analysis draws, and it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rho = [r[0] for r in table]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rho, [r[3] for r in table], label="pruned accuracy (no fine-tuning)")
    ax.plot(rho, [r[5] for r in table], label="g(R(rho))")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":", label="rho")
    ax.axvline(predicted, color="C2", linestyle="--", label=f"predicted {predicted:.3f}")
    ax.axvline(limits["strict"], color="C3", linestyle="-.", label=f"actual {limits['strict']:.3f}")
    ax.set_xlabel("pruning ratio rho (fraction of prunable weights removed)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
