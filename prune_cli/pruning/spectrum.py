"""The Hessian spectrum by stochastic Lanczos quadrature, and the pruning-limit prediction of
Zhang et al., "How Sparse Can We Prune a Deep Network: A Fundamental Limit Viewpoint"
(NeurIPS 2024, arXiv 2306.05857; METHODS.md section 5).

Stochastic Lanczos quadrature (SLQ): for a Rademacher probe v, m Lanczos steps on the Hessian H
from q1 = v / ||v|| give a tridiagonal T_m whose eigenvalues theta_k (Ritz values) and squared
first eigenvector components tau_k (Ritz weights, summing to 1) form an m-point Gauss quadrature
of the spectral density seen from q1: sum_k tau_k f(theta_k) = q1^T f(H) q1 exactly for every
polynomial f of degree < 2m. Its expectation over probes is tr f(H) / P, so the (theta, tau) of
several probes, pooled with weights tau / probes, estimate the eigenvalue density of H.

Lanczos runs in float64 with full reorthogonalisation (each new vector is orthogonalised twice
against all earlier ones, "twice is enough"), so lost orthogonality does not create spurious
copies of the extreme eigenvalues; it stops early when the Krylov space is invariant (then the
quadrature is exact). The Hessian-vector products are double back-propagation on a fixed set of
batches (no PyHessian: its release calls ``torch.eig``, which torch 2 removed).

The prediction: with eps the standard deviation of per-batch training losses and R(rho) the L2
norm of the weights that global magnitude pruning removes at sparsity rho, the limit rho* solves

    rho = g(R(rho)),   g(R) = sum_k tau_k * 2 eps / (2 eps + R^2 |theta_k|)

(METHODS.md writes the same as 1 - (1/P) sum_i R^2 / (R^2 + r_i^2) with r_i^2 = 2 eps / |lambda_i|).
rho - g(R(rho)) increases from -1 at rho = 0 to >= 0 at rho = 1, so bisection finds the root.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]
#: a flat float64 vector -> the Hessian times it (float64, same device)
HVP = Callable[[Tensor], Tensor]

ZERO_MASS_MODES = ("threshold", "none")


def hessian_vector_product(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batches: Sequence[Batch],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> HVP:
    """H v for the Hessian of the mean loss over ``batches`` with respect to ``params`` (flat,
    in the order of ``params``), by double back-propagation, one batch at a time.

    Batches are weighted by their size, so the result does not depend on how the samples are
    split into batches. The model's mode is the caller's (evaluate in eval mode: BatchNorm's
    running statistics, as the pruned model is evaluated).
    """
    tensors = [params[k] for k in params]
    total = sum(len(y) for _, y in batches)
    if total == 0:
        raise ValueError("no samples for the Hessian")

    def hvp(v: Tensor) -> Tensor:
        pieces = [
            chunk.view_as(p).to(p.dtype)
            for chunk, p in zip(v.split([p.numel() for p in tensors]), tensors, strict=True)
        ]
        out = torch.zeros_like(v)
        for x, y in batches:
            grads = torch.autograd.grad(loss_fn(model(x), y), tensors, create_graph=True)
            dot = sum((g * u).sum() for g, u in zip(grads, pieces, strict=True))
            hv = torch.autograd.grad(dot, tensors)
            out += torch.cat([h.reshape(-1) for h in hv]).to(v.dtype) * (len(y) / total)
        return out

    return hvp


def lanczos(hvp: HVP, start: Tensor, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta): the diagonal and off-diagonal of the Lanczos tridiagonal matrix from
    ``start`` (float64), after at most ``iterations`` steps (fewer if the Krylov space becomes
    invariant, where the quadrature is already exact)."""
    n = start.numel()
    m = min(iterations, n)
    basis = torch.zeros(m, n, dtype=torch.float64, device=start.device)
    basis[0] = start.to(torch.float64) / start.norm()
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    for j in range(m):
        w = hvp(basis[j])
        alpha = float(w @ basis[j])
        alphas.append(alpha)
        w = w - alpha * basis[j]
        if j > 0:
            w = w - betas[-1] * basis[j - 1]
        done = basis[: j + 1]
        for _ in range(2):  # full reorthogonalisation, twice
            w = w - done.T @ (done @ w)
        if j == m - 1:
            break
        beta = float(w.norm())
        scale = max(scale, abs(alpha), beta)
        if beta <= 1e-10 * scale:  # invariant subspace: further steps would be noise
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    return np.asarray(alphas), np.asarray(betas)


def ritz(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values theta_k and weights tau_k (squared first components of the tridiagonal
    matrix's eigenvectors: they sum to 1)."""
    if len(alphas) == 1:
        return alphas.copy(), np.ones(1)
    # imported here: scipy.linalg adds a few tenths of a second to start-up, which every run
    # would pay for a method (limit) that few runs use
    from scipy.linalg import eigh_tridiagonal

    theta, vectors = eigh_tridiagonal(alphas, betas)
    return theta, vectors[0] ** 2


@dataclass
class Spectrum:
    """The pooled SLQ estimate: nodes theta, weights tau / probes (summing to 1), the probe of
    each node, and the dimension P of the Hessian."""

    nodes: np.ndarray
    weights: np.ndarray
    probe: np.ndarray
    dim: int
    #: Lanczos steps each probe took (at most ``lanczos_iter`` and the dimension)
    steps: list[int]

    def moment(self, power: int) -> float:
        """Estimate of tr(H^power) / P."""
        return float(np.sum(self.weights * self.nodes**power))

    @property
    def trace(self) -> float:
        return self.dim * self.moment(1)


def slq(
    hvp: HVP, dim: int, iterations: int, probes: int, seed: int, device: torch.device
) -> Spectrum:
    """Stochastic Lanczos quadrature with ``probes`` Rademacher probes (seeded by ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    nodes, weights, probe, steps = [], [], [], []
    for i in range(probes):
        v = (torch.randint(0, 2, (dim,), generator=gen, dtype=torch.float64) * 2 - 1).to(device)
        theta, tau = ritz(*lanczos(hvp, v, iterations))
        nodes.append(theta)
        weights.append(tau / probes)
        probe.append(np.full(len(theta), i))
        steps.append(len(theta))
    return Spectrum(
        np.concatenate(nodes), np.concatenate(weights), np.concatenate(probe), dim, steps
    )


def zero_mass(nodes: np.ndarray, mode: str, tol: float) -> np.ndarray:
    """Nodes with the near-zero eigenvalues set to exactly 0.

    A Hessian of a deep network has a large mass of (near-)zero eigenvalues; SLQ resolves it as
    Ritz nodes close to 0 whose weights carry the mass (the quadrature is exact for low-degree
    moments), but their values are Lanczos noise of order ``|theta|_max * 1e-8`` and more.
    ``threshold``: nodes with |theta| <= tol * max |theta| count as exactly flat directions
    (r = infinity: they never limit pruning); ``none``: take the Ritz values as they are.
    """
    if mode == "none":
        return nodes.copy()
    if mode != "threshold":
        raise ValueError(f"unknown zero-mass mode {mode!r}; valid: {', '.join(ZERO_MASS_MODES)}")
    top = float(np.max(np.abs(nodes))) if len(nodes) else 0.0
    return np.where(np.abs(nodes) <= tol * top, 0.0, nodes)


def limit_fraction(radius: float, eps: float, nodes: np.ndarray, weights: np.ndarray) -> float:
    """g(R) = sum_k tau_k * 2 eps / (2 eps + R^2 |theta_k|) / sum_k tau_k: the fraction of
    directions whose tolerance radius r_k = sqrt(2 eps / |theta_k|) exceeds R, softly counted."""
    denominator = 2 * eps + radius**2 * np.abs(nodes)
    # a flat direction (theta = 0) or a zero radius always tolerates the pruning: term 1
    safe = np.where(denominator > 0, denominator, 1.0)
    terms = np.where(denominator > 0, 2 * eps / safe, 1.0)
    return float(np.sum(weights * terms) / np.sum(weights))


class PrunedNorm:
    """R(rho): the L2 norm of the weights global magnitude pruning removes at sparsity rho,
    continuous in rho (the next weight's square enters linearly within its 1/P step)."""

    def __init__(self, magnitudes: Tensor) -> None:
        squares = np.sort(magnitudes.detach().double().cpu().numpy().reshape(-1)) ** 2
        self.squares = squares
        self.cumulative = np.concatenate([[0.0], np.cumsum(squares)])
        self.count = len(squares)

    def __call__(self, rho: float) -> float:
        x = min(max(rho, 0.0), 1.0) * self.count
        i = min(math.floor(x), self.count - 1)
        return math.sqrt(self.cumulative[i] + (x - i) * self.squares[i])

    def at_count(self, k: int) -> float:
        """R after pruning exactly the k smallest weights."""
        return math.sqrt(self.cumulative[k])


def predicted_limit(
    norm: Callable[[float], float],
    eps: float,
    nodes: np.ndarray,
    weights: np.ndarray,
    tol: float = 1e-10,
) -> float:
    """rho* solving rho = g(R(rho)), by bisection on [0, 1] (rho - g(R(rho)) is increasing)."""
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if mid - limit_fraction(norm(mid), eps, nodes, weights) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def pruned_count(i: int, grid: int, total: int) -> int:
    """Weights pruned at rho = i / grid: ceil(rho * P), in integers (no rounding error)."""
    return -(-i * total // grid)


@torch.no_grad()
def magnitude_sweep(
    params: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None,
    grid: int,
    evaluate: Callable[[], tuple[float, float]],
) -> list[tuple[float, int, float, float]]:
    """Global one-shot magnitude pruning at rho = i / grid, i = 0..grid - 1, without
    fine-tuning: (rho, pruned count, loss, accuracy) of each pruned copy.

    The copies are made in place: rho only grows, so each step zeroes the next weights of one
    global order by magnitude (masked weights first; ties by position, so the count is exact);
    the weights are restored at the end, whatever happens.
    """
    names = list(params)
    flat = torch.cat([params[k].detach().reshape(-1) for k in names])
    score = flat.abs()
    if masks is not None:
        keep = torch.cat([masks[k].reshape(-1) for k in names]).bool()
        score = torch.where(keep, score, torch.full_like(score, -1.0))
    order = torch.sort(score, stable=True).indices
    originals = {k: params[k].detach().clone() for k in names}
    sizes = [params[k].numel() for k in names]
    work = flat.clone()
    rows = []
    done = 0
    try:
        for i in range(grid):
            k = pruned_count(i, grid, flat.numel())
            if k > done:
                work[order[done:k]] = 0
                done = k
                for name, chunk in zip(names, work.split(sizes), strict=True):
                    params[name].copy_(chunk.view_as(params[name]))
            loss, accuracy = evaluate()
            rows.append((i / grid, k, loss, accuracy))
    finally:
        for name in names:
            params[name].copy_(originals[name])
    return rows


def actual_limits(
    rhos: Sequence[float], accuracies: Sequence[float], tolerance: float
) -> dict[str, float]:
    """The actual limit from a sweep whose first entry is the dense model (rho = 0).

    ``strict``: the largest rho whose pruned accuracy is >= the dense one; ``tolerance``: the
    largest with accuracy >= dense - tolerance; ``first_drop``: the last rho before the first
    one below dense - tolerance (the authors' reading of their sweep, cal_rate.py).
    """
    dense = accuracies[0]
    strict = max(r for r, a in zip(rhos, accuracies, strict=True) if a >= dense)
    within = max(r for r, a in zip(rhos, accuracies, strict=True) if a >= dense - tolerance)
    first = rhos[-1]
    for i in range(1, len(rhos)):
        if accuracies[i] < dense - tolerance:
            first = rhos[i - 1]
            break
    return {"strict": strict, "tolerance": within, "first_drop": first}


#: the estimators of the limit: ``quadrature`` (the Ritz nodes and weights as they are, R
#: continuous, the root by bisection) and ``binned`` (the authors' pipeline, below)
ESTIMATORS = ("quadrature", "binned")


def binned_density(
    spectrum: Spectrum, bins: int = 100_000, variance: float = 1e-10, overhead: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """(grid, density): the SLQ spectrum smoothed onto ``bins`` equally spaced points, as the
    authors' ``density_generate`` does (Zhang et al.'s code, density_plot.py).

    The grid runs from the probes' mean smallest Ritz value - ``overhead`` to their mean
    largest + ``overhead``; each node adds its weight times a Gaussian of variance
    ``variance * max(1, width)`` at every grid point, and the density is normalised to
    integrate to 1 over the grid. The kernel (standard deviation 1e-5 for a width up to 1) is
    narrower than a bin (width / 1e5) once the width exceeds about 1e-5, so a node between two
    grid points may add almost nothing: the density's mass is not the nodes' weights, which is
    one reason this estimator's limit differs from the quadrature's.
    """
    lows = [spectrum.nodes[spectrum.probe == i].min() for i in np.unique(spectrum.probe)]
    highs = [spectrum.nodes[spectrum.probe == i].max() for i in np.unique(spectrum.probe)]
    low, high = float(np.mean(lows)) - overhead, float(np.mean(highs)) + overhead
    grid = np.linspace(low, high, num=bins)
    var = variance * max(1.0, high - low)
    density = np.zeros(bins)
    for node, weight in zip(spectrum.nodes, spectrum.weights, strict=True):
        # weights are tau / probes: their sum over nodes is the authors' mean over probes
        density += weight * np.exp(-((grid - node) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
    total = float(np.sum(density)) * (grid[1] - grid[0])
    return grid, density / total if total > 0 else density


def integer_radius_limit(
    rhos: Sequence[float], radii: Sequence[float], eps: float, grid: np.ndarray, density: np.ndarray
) -> tuple[float, list[float]]:
    """The authors' prediction (cal_rate.py): g evaluated at whole-number R only, the sweep's
    rho_i whose g(round(R(rho_i))) is nearest to rho_i; and g(round(R_i)) of every row.

    ``rhos`` and ``radii``: the magnitude sweep's sparsities and the L2 norms of what each
    removes. Rounding is to the nearest integer, half to even (numpy's and torch's rule)."""
    values = [limit_fraction(float(np.rint(r)), eps, grid, density) for r in radii]
    gaps = [abs(g - rho) for g, rho in zip(values, rhos, strict=True)]
    return float(rhos[int(np.argmin(gaps))]), values
