"""Inference latency of thinner networks (filters physically removed) against the dense ones.

For each model: rank filters by magnitude, remove ``--sparsity`` of the prunable filters
(global ranking, each unit keeps floor(5%) + 1, first conv and classifier kept) through
prune-run's structured pruning, then time forward passes of the dense and the thinner network,
alternating, and print parameters, MACs, the median latencies and their ratio.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet56", "vgg16", "mobilenet_v1"])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    spec = DataSpec(3, 10, 32)
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch} "
        f"filter sparsity={args.sparsity}"
    )
    print(
        "model          params dense -> thin      MACs dense -> thin        "
        "dense ms   thin ms   thin/dense"
    )
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, spec).to(device).eval()
        x = torch.randn(args.batch, *spec.input_shape, device=device)
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
        method = METHODS.get("filter")(FilterConfig(measure="magnitude", sparsity=args.sparsity))
        masks = Masks.ones(method.prunable(model))
        masks.update(method.prune_fraction(model, masks, ctx, args.sparsity))
        thin = method.groups.thin(method.keep_from(masks, method.groups), x[:1]).to(device)
        macs_d, params_d = macs_and_params(model, x[:1])
        macs_t, params_t = macs_and_params(thin, x[:1])
        dense, slim = [], []
        for _ in range(args.rounds):
            dense.append(latency_ms(model, x, repeats=5))
            slim.append(latency_ms(thin, x, repeats=5))
        d, t = statistics.median(dense), statistics.median(slim)
        print(
            f"{name:12s} {params_d / 1e6:6.2f}M -> {params_t / 1e6:5.2f}M   "
            f"{macs_d / 1e6:8.1f}M -> {macs_t / 1e6:7.1f}M   {d:8.1f}  {t:8.1f}   {t / d:.2f}"
        )


if __name__ == "__main__":
    main()
