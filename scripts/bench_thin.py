"""Inference latency of thinner networks (filters physically removed) against the dense ones.

For each model: rank filters by magnitude, remove ``--sparsity`` of the prunable filters
(global ranking, each unit keeps floor(5%) + 1, first conv and classifier kept; ``--round-to``:
each unit's kept count rounded to a multiple, ``method.round_to``; ``--scope layer``: the same
fraction of every unit, residual streams included, ``method.scope=layer``) through
prune-run's structured pruning, then time forward passes of the dense and the thinner network,
alternating, and print parameters, MACs, the median latencies, their ratio, and the latency gain
(dense / thin) as a share of the MACs reduction (dense MACs / thin MACs; 1.0 = the latency falls
as much as the arithmetic).

Timing (``prune_cli.pruning.structured.latency_ms``): on the CPU, wall time of single passes; on
CUDA, bf16 autocast and channels-last as training runs there, cuDNN's algorithm search on, and
the forward pass replayed as a CUDA graph, timed with CUDA events (``--no-graphs``: eager passes,
which at small inputs measure Python and kernel launches more than the GPU).
Run: ``python scripts/bench_thin.py --models resnet56 vgg16 mobilenet_v1 --batch 64``.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from prune_cli.models import build_model
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS, PruneContext
from prune_cli.pruning.methods.filter_pruning import FilterConfig
from prune_cli.pruning.structured import latency_ms, macs_and_params
from prune_cli.spec import DataSpec


def measure(
    name: str,
    device: torch.device,
    sparsity: float,
    batch: int,
    rounds: int,
    graphs: bool = True,
    bf16: bool = True,
    round_to: int | None = None,
    size: int = 32,
    classes: int = 10,
    compiled: bool = False,
    scope: str | None = None,
) -> dict:
    """Parameters, MACs and median latencies of the dense and the thinner ``name``."""
    spec = DataSpec(3, classes, size)
    torch.manual_seed(0)
    model = build_model(name, spec).to(device).eval()
    x = torch.randn(batch, *spec.input_shape, device=device)
    ctx = PruneContext(
        level=1,
        seed=0,
        device=device,
        batches=lambda n, x=x: iter([(x, x)]),
        loss_fn=nn.functional.cross_entropy,
        weight_decay=0.0,
        num_classes=10,
        load_state=lambda s: {},
    )
    method = METHODS.get("filter")(
        FilterConfig(measure="magnitude", sparsity=sparsity, round_to=round_to, scope=scope)
    )
    masks = Masks.ones(method.prunable(model))
    masks.update(method.prune_fraction(model, masks, ctx, sparsity))
    thin = method.groups.thin(method.keep_from(masks, method.groups), x[:1]).to(device)
    macs_d, params_d = macs_and_params(model, x[:1])
    macs_t, params_t = macs_and_params(thin, x[:1])
    dense, slim = [], []
    for _ in range(rounds):  # alternating, so that other load hits both alike
        dense.append(latency_ms(model, x, repeats=5, graphs=graphs, bf16=bf16, compiled=compiled))
        slim.append(latency_ms(thin, x, repeats=5, graphs=graphs, bf16=bf16, compiled=compiled))
    d, t = statistics.median(dense), statistics.median(slim)
    return {
        "model": name,
        "round_to": round_to or 1,
        "scope": scope or "global",
        "size": size,
        "batch": batch,
        "params_dense": params_d,
        "params_thin": params_t,
        "macs_dense": macs_d,
        "macs_thin": macs_t,
        "dense_ms": d,
        "thin_ms": t,
        "latency_ratio": t / d,
        "macs_ratio": macs_t / macs_d,
        # latency gain (dense / thin) over MACs reduction (dense / thin): the goal is >= 0.8
        "gain_share": (d / t) / (macs_d / macs_t),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| model | input, batch | ranking | channels rounded to | params dense -> thin "
        "| MACs dense -> thin | dense ms | thin ms | thin/dense latency | thin/dense MACs "
        "| latency gain / MACs reduction |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['size']}x{r['size']}, {r['batch']} | {r['scope']} "
            f"| {r['round_to']} "
            f"| {r['params_dense'] / 1e6:.2f} M -> {r['params_thin'] / 1e6:.2f} M "
            f"| {r['macs_dense'] / 1e6:.1f} M -> {r['macs_thin'] / 1e6:.1f} M "
            f"| {r['dense_ms']:.3f} | {r['thin_ms']:.3f} | **{r['latency_ratio']:.2f}** "
            f"| {r['macs_ratio']:.2f} | **{r['gain_share']:.2f}** |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet56", "vgg16", "mobilenet_v1"])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=32, help="input height and width")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    ap.add_argument("--no-graphs", dest="graphs", action="store_false", help="CUDA: eager passes")
    ap.add_argument(
        "--compiled", action="store_true", help="CUDA: time compiled networks (BatchNorm folded)"
    )
    ap.add_argument("--fp32", dest="bf16", action="store_false", help="CUDA: no bf16 autocast")
    ap.add_argument(
        "--round-to", type=int, nargs="+", default=[1, 8], help="kept-filter multiples to time"
    )
    ap.add_argument(
        "--scope",
        nargs="+",
        default=["global"],
        choices=["global", "layer"],
        help="global: one ranking (wide coupled streams keep their width); layer: the same "
        "fraction of every unit",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch} "
        f"filter sparsity={args.sparsity} graphs={args.graphs} bf16={args.bf16}"
    )
    results = []
    for name in args.models:
        for scope in args.scope:
            for r in args.round_to:
                results.append(
                    measure(
                        name,
                        device,
                        args.sparsity,
                        args.batch,
                        args.rounds,
                        args.graphs,
                        args.bf16,
                        r,
                        args.size,
                        args.classes,
                        args.compiled,
                        scope,
                    )
                )
                print(table(results[-1:]).splitlines()[-1])
    print()
    print(table(results))


if __name__ == "__main__":
    main()
