"""One command on a GPU machine: the GPU tests, the training and latency benchmarks, one table.

Runs, in order (on an H100 in about 5-8 minutes before step 3's per-layer rows and step 4
were added; with them an estimated 10-14, not yet timed on a GPU):

1. ``pytest -m gpu`` (the CUDA path; needs hydra-core and the others from ``.whl/``);
2. ``bench_train``: ResNet-56, 50,000 synthetic 32x32 uint8 images, batch 128: the torchvision
   DataLoader reference with 4, 8 and 16 workers; prune-run eager and compiled, bf16 and fp32,
   masks at 0% and 90% (and 90% not enforced); the whole step as one CUDA graph
   (``train.cuda_graphs``), bf16 and fp32, masks 0% and 90%; the plain loop over precomputed
   batches; the cost of one mask multiply;
3. ``bench_thin``: structured pruning (50% of the filters) of ResNet-56, VGG-16 and
   MobileNet-V1, latency of the dense and the thinner network at batch 256 (channel counts
   rounded to multiples of 8 and not, ranked globally; rounded to 8, ranked per layer), and of
   ResNet-50 at 224x224 (rounded to 8; the global ranking and the per-layer one, which also
   thins the residual streams);
4. ``bench_latency`` part 1 (issue 27): the same four networks pruned to 0.5 and 0.7 of the
   dense latency on this GPU (``--latency-targets``; a latency table measured here, bf16,
   channels-last, graphed), by the knapsack and by the global and per-layer rankings tuned to
   the same latency; batch 256 at 32x32, 64 at 224x224; the measured ratio against the
   target (``--no-latency``: skipped; ``--device cpu``: the same code at toy sizes);
5. only if 1-4 took less than ``--budget-s``: compiled kernels (``torch.compile`` default mode)
   with the whole step as one CUDA graph, and the compiled forward/backward with CUDA graphs of
   their own (``reduce-overhead``), bf16, masks 90%, added to the training table
   (``torch.compile``'s default mode without graphs only with ``--compile-default``).

It prints everything, and writes a Markdown section (device, torch version, date, command,
tables) into docs/BENCHMARKS.md between ``<!-- gpu-check:begin -->`` and
``<!-- gpu-check:end -->``, and to ``--out`` when given. ``make gpu-check`` runs it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"


def log(text: str = "") -> None:
    print(text, flush=True)


def run_tests() -> tuple[str, int]:
    """``pytest -m gpu``: its summary line and exit code; the output streams to stdout."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    log(f"$ {' '.join(cmd)}")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.strip():
            last = line.strip()
    return last, proc.wait()


def train_summary(args: argparse.Namespace) -> dict:
    """The required training measurements (``bench_train.run_all``)."""
    import bench_train

    bargs = bench_train.parser().parse_args(
        [
            "--model",
            args.model,
            "--size",
            "32",
            "--n",
            str(args.n),
            "--batch-size",
            "128",
            "--warmup",
            "1",
            "--epochs",
            str(args.epochs),
            "--workers",
            *[str(w) for w in args.workers],
            "--ref-epochs",
            "1",
            "--compile-modes",
            *(["default"] if args.compile else []),
            "--sparsities",
            "0",
            "0.9",
            "--device",
            args.device,
        ]
    )
    return bench_train.run_all(bargs, log=log)


def add_compiled_rows(args: argparse.Namespace, summary: dict) -> None:
    """Compiled kernels (``torch.compile`` default mode) with the whole step as one CUDA graph,
    then the compiled forward/backward with CUDA graphs of their own (``reduce-overhead``);
    bf16, masks at 90%. Each compiles for a minute or two, hence optional."""
    import bench_train

    for mode, graphs in (("default", True), ("reduce-overhead", False)):
        try:
            row, _, _ = bench_train.trainer_row(
                summary["setup"], True, mode, 0.9, epochs=args.epochs, graphs=graphs
            )
        except Exception as exc:  # report it, keep the other figures
            traceback.print_exc()
            log(f"  {mode} failed: {type(exc).__name__}: {exc}")
            summary.setdefault("notes", []).append(
                f"compiled ({mode}{', whole-step graph' if graphs else ''}) failed: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            )
            continue
        summary["rows"].append(row)
        log(f"  {row.name}: {row.images_per_s:,.0f} images/s, {row.s_per_epoch:.2f} s")
    bench_train.derive(summary)


def thin_section(args: argparse.Namespace) -> str:
    import bench_thin

    results = []
    # (ranking, kept filters rounded to): the per-layer ranking at 8 only, where the global
    # one is fastest; it had never been timed on a GPU
    variants = (("global", 1), ("global", 8), ("layer", 8))
    for name in args.thin_models:
        for scope, round_to in variants:
            results.append(
                bench_thin.measure(
                    name,
                    torch.device(args.device),
                    0.5,
                    args.thin_batch,
                    3,
                    round_to=round_to,
                    scope=scope,
                )
            )
            log(bench_thin.table(results[-1:]).splitlines()[-1])
    # a network large enough to keep the GPU busy: at 32x32 the small CIFAR networks use a few
    # percent of an H100, and their latency follows kernel count more than MACs. Both rankings:
    # the global one spares ResNet-50's wide residual streams (their coupled filters' scores
    # add up), the per-layer one thins them too
    for name, size, classes in args.thin_large:
        for scope in ("global", "layer"):
            results.append(
                bench_thin.measure(
                    name,
                    torch.device(args.device),
                    0.5,
                    args.thin_batch,
                    3,
                    round_to=8,
                    size=size,
                    classes=classes,
                    scope=scope,
                )
            )
            log(bench_thin.table(results[-1:]).splitlines()[-1])
    return bench_thin.table(results)


def guarded(what: str, make: Callable[[], str]) -> str:
    """A section made by ``make``, or, when it fails, the traceback printed and one line that
    says so in its place: the other sections still get written."""
    try:
        return make()
    except Exception as exc:
        traceback.print_exc()
        return f"{what} failed: {type(exc).__name__}: {exc}"


def latency_section(args: argparse.Namespace) -> str:
    """``bench_latency`` part 1 on ``args.device``: its Markdown table and verdict lines. On CUDA
    the GPU's cases (batch 256 at 32x32, 64 at 224x224); elsewhere the toy ones, a dry run."""
    import bench_latency

    device = torch.device(args.device)
    cases = bench_latency.CUDA_CASES if device.type == "cuda" else bench_latency.QUICK_CASES
    cases = tuple(c for c in cases if c.model in args.latency_models)
    noise: list[dict] = []
    with bench_latency.cache_folder(None) as cache:
        rows = bench_latency.run_budgets(
            cases, args.latency_targets, device, cache, rounds=3, round_to=8, say=log, noise=noise
        )
    return "\n\n".join(
        [
            bench_latency.budget_table(rows),
            bench_latency.budget_verdict(rows),
            "Timing noise on this device:",
            bench_latency.noise_lines(noise),
        ]
    )


def publish(
    section: str, out: Path | None, doc: Path | None, begin: str = BEGIN, end: str = END
) -> None:
    """Write a benchmark's section to ``out`` (when given) and between its markers in ``doc``
    (when given)."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(section + "\n")
        log(f"wrote {out}")
    if doc is not None:
        write_section(doc, section, begin, end)
        log(f"wrote the section into {doc}")


def write_section(doc: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the text between the markers ``begin`` and ``end`` (gpu-check's by default; each
    benchmark script has its own), or append the markers and the section."""
    text = doc.read_text() if doc.exists() else ""
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the Markdown section to this file")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    ap.add_argument("--no-doc", action="store_true", help="do not edit docs/BENCHMARKS.md")
    ap.add_argument("--n", type=int, default=50_000, help="training images per epoch")
    ap.add_argument("--epochs", type=int, default=1, help="timed epochs per variant")
    ap.add_argument("--workers", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument(
        "--compile-default",
        dest="compile",
        action="store_true",
        help="also time torch.compile's default mode (2026-11-23 on an H100: about 100 s to "
        "compile, no faster than eager; CUDA graphs are the variant that pays)",
    )
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="the default")
    ap.add_argument(
        "--no-compiled-rows", dest="cudagraphs", action="store_false", help="skip step 5"
    )
    ap.add_argument("--no-tests", dest="tests", action="store_false")
    ap.add_argument("--thin-models", nargs="+", default=["resnet56", "vgg16", "mobilenet_v1"])
    ap.add_argument("--thin-batch", type=int, default=256)
    ap.add_argument(
        "--thin-large",
        type=lambda v: (v.split(":")[0], int(v.split(":")[1]), int(v.split(":")[2])),
        nargs="*",
        default=[("resnet50", 224, 1000)],
        help="MODEL:SIZE:CLASSES timed with channels rounded to 8, ranked globally and per layer "
        "(none: --thin-large)",
    )
    ap.add_argument(
        "--latency-targets",
        type=float,
        nargs="+",
        default=[0.5, 0.7],
        help="bench_latency part 1: thin / dense latency targets",
    )
    ap.add_argument(
        "--latency-models",
        nargs="+",
        default=["resnet56", "vgg16", "mobilenet_v1", "resnet50"],
        help="bench_latency part 1: which of its four networks",
    )
    ap.add_argument("--no-latency", dest="latency", action="store_false", help="skip step 4")
    ap.add_argument("--model", default="resnet56", help="training benchmark model")
    ap.add_argument("--device", default="cuda", help="cpu: a quick dry run of this script")
    ap.add_argument(
        "--budget-s",
        type=int,
        default=330,
        help="the CUDA-graph rows run only if the required parts took less (seconds)",
    )
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible")

    started = time.perf_counter()
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor()})"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = os.environ.get("GPU_CHECK_COMMAND", "python3 scripts/gpu_check.py")
    log(f"gpu-check on {device}, torch {torch.__version__}, CUDA {torch.version.cuda}, {date}")
    parts = [
        f"Measured on {device}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"Python {platform.python_version()}, {os.cpu_count()} CPU cores, {date}. "
        f"Command: `{command}`.",
        "",
    ]
    if args.tests:
        summary, code = run_tests()
        parts += [f"GPU tests (`pytest -m gpu`): {summary} (exit code {code}).", ""]

    log(f"\n== training: {args.model}, 32x32x3, batch 128 ==")
    summary: dict | None = None
    train_error = ""
    try:
        summary = train_summary(args)
    except Exception as exc:
        traceback.print_exc()
        train_error = f"training benchmark failed: {type(exc).__name__}: {exc}"

    log(f"\n== structured pruning latency, batch {args.thin_batch} ==")
    thin = guarded("latency benchmark", lambda: thin_section(args))
    log(thin)

    budgets = ""
    if args.latency:
        log(f"\n== latency targets {args.latency_targets} (bench_latency part 1) ==")
        budgets = guarded("latency-target benchmark", lambda: latency_section(args))
        log(budgets)

    # optional, last, while the budget allows: the required figures are in by now
    elapsed = time.perf_counter() - started
    if summary is not None and args.cudagraphs and cuda:
        if elapsed < args.budget_s:
            log(f"\n== compiled training ({elapsed:.0f} s used) ==")
            add_compiled_rows(args, summary)
        else:
            note = f"compiled rows skipped: {elapsed:.0f} s used"
            log(note)
            summary.setdefault("notes", []).append(note)

    import bench_train

    train = train_error or bench_train.report(summary)
    if summary is not None and summary.get("notes"):
        train += "\n" + "\n".join(f"- {n}" for n in summary["notes"])
    log(f"\n{train}")
    parts += [
        f"Training, {args.model} on {args.n:,} synthetic 32x32x3 uint8 images (crop + flip), "
        f"batch 128, SGD; median of {args.epochs} timed epochs after one warm-up epoch "
        "(compile time: the warm-up's extra time):",
        "",
        train,
        "",
        f"Thinner networks (50% of the prunable filters removed), batch {args.thin_batch}, "
        "bf16 autocast, channels-last, forward pass replayed as a CUDA graph, CUDA events; "
        "goal: latency gain / MACs reduction >= 0.8:",
        "",
        thin,
        "",
    ]
    if args.latency:
        parts += [
            "Pruned to a latency target (issue 27, `scripts/bench_latency.py` part 1): "
            "random-init weights, L1 scores, kept filters rounded to 8, latency table measured "
            "on this device (bf16, channels-last, graphed); ratios thin / dense, the median of "
            "3 alternating measurements after the selection; goal: within 5% of the target:",
            "",
            budgets,
            "",
        ]
    parts += [f"gpu-check took {time.perf_counter() - started:.0f} s."]
    publish("\n".join(parts), args.out, None if args.no_doc else args.doc)


if __name__ == "__main__":
    main()
