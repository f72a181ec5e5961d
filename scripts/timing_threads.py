"""How steady is a thin / dense latency ratio on this CPU, at a given number of torch threads?
(issue 27: the 5% goal of ``scripts/bench_latency.py`` part 1 is read beside it.)

Builds the registered network (randomly initialised, seed 0) and a thin copy with every filter
unit at ``--width`` filters, three instances of it, and times each instance against the dense
network ``--rounds`` times, as the latency step of ``method=filter`` measures (the median of 3
pairs of interleaved passes, ``latency_step.paired_timing``). The printed rows show whether the
ratio wanders between instances (a property of the built modules) or between rounds (of the
machine at that minute). Example::

    python scripts/timing_threads.py --model resnet56 --threads 2
    python scripts/timing_threads.py --model resnet56 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench_latency  # noqa: E402 (scripts/ is not a package)

from prune_cli.pruning.latency_step import paired_timing  # noqa: E402
from prune_cli.pruning.method import METHODS  # noqa: E402
from prune_cli.pruning.methods.filter_pruning import FilterConfig  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [c.model for c in bench_latency.CPU_CASES]
    ap.add_argument("--model", choices=names, default="resnet56")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--width", type=int, default=8, help="filters each unit keeps")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    if args.threads < 1 or args.width < 1 or args.rounds < 1:
        ap.error("--threads, --width and --rounds must be at least 1")
    torch.set_num_threads(args.threads)
    case = next(c for c in bench_latency.CPU_CASES if c.model == args.model)
    dense = bench_latency.build_dense(case, torch.device("cpu"))
    torch.manual_seed(0)
    x = torch.randn(case.batch, 3, case.size, case.size)
    with tempfile.TemporaryDirectory() as cache:
        ctx = bench_latency._context(x, case.classes, torch.device("cpu"), Path(cache))
        method = METHODS.get("filter")(FilterConfig(measure="l1"))
        groups = method.units(dense, ctx)
    keep = {u.root: torch.arange(u.channels) < min(args.width, u.channels) for u in groups.units}
    thins = [groups.thin(keep, x[:1]) for _ in range(3)]
    print(
        f"{args.model}, batch {case.batch}, {args.threads} torch thread(s), every unit at "
        f"{args.width} filters: thin / dense of 3 instances, {args.rounds} rounds",
        flush=True,
    )
    for _ in range(args.rounds):
        ratios = [paired_timing(t, dense, x, case.repeats).ratio for t in thins]
        print("  " + "  ".join(f"{r:.3f}" for r in ratios), flush=True)


if __name__ == "__main__":
    main()
