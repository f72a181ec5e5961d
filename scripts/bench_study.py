"""Study benchmark (issue 24): one sweep of M methods x S sparsities x K seeds, run with the dense
level shared (``share_dense=true``, the default) and with every job training its own
(``share_dense=false``), in one process tree, each in a fresh output folder.

It prints both wall times, their ratio and the ideal ratio for the grid: with sharing the sweep
trains K dense models and M x S x K fine-tunings instead of M x S x K of each, so for one-shot
pruning whose fine-tuning is as long as the dense training the ideal is
(K + M S K) / (2 M S K) (2 x 2 x 2: 10 / 16 = 0.625). The measured ratio also carries what
sharing cannot save (start-up, evaluation, measuring each level), so it is above the ideal.
Numbers are this machine's: compare the ratio, not the seconds.

    .venv/bin/python scripts/bench_study.py                  # LeNet-5 on digits, 2 x 2 x 2
    .venv/bin/python scripts/bench_study.py --model mlp --rounds 2
    .venv/bin/python scripts/bench_study.py --dataset fashion_mnist train.epochs=3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("magnitude", "random")
SPARSITIES = ("0.5", "0.8")
SEEDS = ("0", "1")


def sweep(
    share: bool, root: Path, model: str, dataset: str, extra: list[str]
) -> tuple[float, int, int]:
    """Run the sweep once; (wall seconds, completed jobs, dense trainings it did)."""
    command = [
        sys.executable,
        "-m",
        "prune_cli.cli",
        "-m",
        f"method={','.join(METHODS)}",
        f"method.sparsity={','.join(SPARSITIES)}",
        f"seed={','.join(SEEDS)}",
        "method.levels=1",
        f"model={model}",
        f"dataset={dataset}",
        "progress=false",
        f"share_dense={str(share).lower()}",
        f"output_root={root}",
        f"hydra.sweep.dir={root}/multirun",
        *extra,
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench_study: the sweep failed:\n{done.stderr[-2000:]}")
    summaries = [json.loads(p.read_text()) for p in (root / "multirun").glob("*/summary.json")]
    completed = sum(s.get("status") == "completed" for s in summaries)
    # a dense training happened in each shared dense run, or in each job that trained its own
    shared = list((root / "dense").glob("*/summary.json"))
    dense = len(shared) if share else sum("dense_shared" not in s for s in summaries)
    return wall, completed, dense


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (median)")
    parser.add_argument(
        "overrides", nargs="*", help="more prune-run settings for every job (train.epochs=3)"
    )
    args = parser.parse_args()
    m, s, k = len(METHODS), len(SPARSITIES), len(SEEDS)
    times: dict[bool, list[float]] = {True: [], False: []}
    counts: dict[bool, tuple[int, int]] = {}
    for _ in range(args.rounds):
        for share in (False, True):
            with tempfile.TemporaryDirectory() as folder:
                wall, completed, dense = sweep(
                    share, Path(folder), args.model, args.dataset, args.overrides
                )
            times[share].append(wall)
            counts[share] = (completed, dense)
    median = {share: sorted(t)[len(t) // 2] for share, t in times.items()}
    ideal = (k + m * s * k) / (2 * m * s * k)
    extra = f" ({' '.join(args.overrides)})" if args.overrides else ""
    print(f"grid: {m} methods x {s} sparsities x {k} seeds, {args.model} on {args.dataset}{extra}")
    for share in (False, True):
        completed, dense = counts[share]
        label = "shared  " if share else "unshared"
        print(
            f"{label}: {median[share]:.1f} s (median of {args.rounds}), {completed} jobs "
            f"completed, {dense} dense trainings"
        )
    print(f"ratio shared / unshared: {median[True] / median[False]:.2f} (ideal {ideal:.3f})")


if __name__ == "__main__":
    main()
