"""One command on a GPU machine: the GPU tests, the training and latency benchmarks, one table.

Runs, in this order (on an H100 in about 5-8 minutes before the per-layer rows of step 3 and
step 2 were added; with them an estimated 10-14, not yet timed on a GPU, hence the deadline):

1. ``pytest -m gpu`` (the CUDA path; needs hydra-core and the others from ``.whl/``);
2. ``bench_latency`` part 1 (issue 27): four networks (ResNet-56, VGG-16 and MobileNet-V1 at
   32x32, ResNet-50 at 224x224) pruned to 0.5 and 0.7 of the dense latency on this GPU
   (``--latency-targets``; a latency table measured here, bf16, channels-last, graphed), by the
   knapsack and by the global and per-layer rankings tuned to the same latency; batch 256 at
   32x32, 64 at 224x224; the measured ratio against the target (``--no-latency``: skipped;
   ``--device cpu``: the same code at toy sizes);
3. ``bench_thin``: structured pruning (50% of the filters) of ResNet-56, VGG-16 and
   MobileNet-V1, latency of the dense and the thinner network at batch 256 (channel counts
   rounded to multiples of 8 and not, ranked globally; rounded to 8, ranked per layer), and of
   ResNet-50 at 224x224 (rounded to 8; the global ranking and the per-layer one, which also
   thins the residual streams);
4. ``bench_train``: ResNet-56, 50,000 synthetic 32x32 uint8 images, batch 128: the torchvision
   DataLoader reference with 4, 8 and 16 workers; prune-run eager and compiled, bf16 and fp32,
   masks at 0% and 90% (and 90% not enforced); the whole step as one CUDA graph
   (``train.cuda_graphs``), bf16 and fp32, masks 0% and 90%; the plain loop over precomputed
   batches; the cost of one mask multiply;
5. only if 1-4 took less than ``--budget-s``: compiled kernels (``torch.compile`` default mode)
   with the whole step as one CUDA graph, and the compiled forward/backward with CUDA graphs of
   their own (``reduce-overhead``), bf16, masks 90%, added to the training table
   (``torch.compile``'s default mode without graphs only with ``--compile-default``).

The figures no GPU session has taken yet (step 2, the per-layer rows of step 3) come first,
the training figures (measured on an H100 on 2026-11-23) after. No step, and no network of
step 2, starts after ``--deadline-s`` seconds; the ones left out are named in the section. A
device machine may stop a command at a fixed limit (10 minutes where this project's GPU
sessions run): the section is therefore written after every step (and every network of step
2), so a check stopped from outside still leaves what it finished, marked as partial.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
#: the clock of the deadline (a test replaces it)
clock: Callable[[], float] = time.perf_counter


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


def latency_section(
    args: argparse.Namespace,
    progress: Callable[[str], None] | None = None,
    deadline: Callable[[], str | None] | None = None,
) -> str:
    """``bench_latency`` part 1 on ``args.device``: its Markdown table and verdict lines. On CUDA
    the GPU's cases (batch 256 at 32x32, 64 at 224x224); elsewhere the toy ones, a dry run.

    One network at a time: after each, ``progress`` gets the section so far (so a run stopped
    from outside keeps the networks done), and before the next, ``deadline`` may say why not to
    start it (the networks left are then named in the section)."""
    import bench_latency

    device = torch.device(args.device)
    cases = bench_latency.CUDA_CASES if device.type == "cuda" else bench_latency.QUICK_CASES
    cases = tuple(c for c in cases if c.model in args.latency_models)
    noise: list[dict] = []
    rows: list[dict] = []
    left: list[str] = []

    def text() -> str:
        parts = [
            bench_latency.budget_table(rows),
            bench_latency.budget_verdict(rows),
            "Timing noise on this device:",
            bench_latency.noise_lines(noise),
        ]
        if left:
            parts.append(f"Not measured: {', '.join(left)} ({why}).")
        return "\n\n".join(parts)

    why = ""
    with bench_latency.cache_folder(None) as cache:
        for i, case in enumerate(cases):
            why = (deadline() if deadline else None) or ""
            if why:
                left = [c.model for c in cases[i:]]
                log(f"latency targets: {', '.join(left)} not measured: {why}")
                break
            rows += bench_latency.run_budgets(
                (case,),
                args.latency_targets,
                device,
                cache,
                rounds=3,
                round_to=8,
                say=log,
                noise=noise,
            )
            if progress is not None:
                progress(text())
    return text()


def publish(
    section: str,
    out: Path | None,
    doc: Path | None,
    begin: str = BEGIN,
    end: str = END,
    quiet: bool = False,
) -> None:
    """Write a benchmark's section to ``out`` (when given) and between its markers in ``doc``
    (when given); ``quiet``: without saying so (the partial sections written between steps)."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(section + "\n")
        if not quiet:
            log(f"wrote {out}")
    if doc is not None:
        write_section(doc, section, begin, end)
        if not quiet:
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


#: the steps in the order they run: issue 27's latency targets before the training figures,
#: which earlier GPU sessions measured, so a check cut short by ``--deadline-s`` (or by the
#: machine's limit on one command) still brings back the figures never taken
STEPS = ("tests", "latency", "thin", "train", "compiled")


@dataclass
class Report:
    """The gpu-check section as the steps fill it in, written after every step: a run stopped
    from outside (a machine's limit on one command) leaves the steps it finished."""

    args: argparse.Namespace
    header: str
    started: float = field(default_factory=lambda: clock())
    tests: str = ""
    train: str = ""
    thin: str = ""
    latency: str = ""
    not_run: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        return clock() - self.started

    def past_deadline(self) -> str | None:
        """Why a step may not start now (the deadline is reached), or None."""
        used = self.elapsed()
        if used >= self.args.deadline_s:
            return f"{used:.0f} s used, deadline {self.args.deadline_s} s"
        return None

    def render(self, running: str | None = None) -> str:
        a = self.args
        parts = [self.header, ""]
        if self.tests:
            parts += [f"GPU tests (`pytest -m gpu`): {self.tests}.", ""]
        if self.train:
            parts += [
                f"Training, {a.model} on {a.n:,} synthetic 32x32x3 uint8 images (crop + flip), "
                f"batch 128, SGD; median of {a.epochs} timed epochs after one warm-up epoch "
                "(compile time: the warm-up's extra time):",
                "",
                self.train,
                "",
            ]
        if self.thin:
            parts += [
                f"Thinner networks (50% of the prunable filters removed), batch {a.thin_batch}, "
                "bf16 autocast, channels-last, forward pass replayed as a CUDA graph, CUDA "
                "events; goal: latency gain / MACs reduction >= 0.8:",
                "",
                self.thin,
                "",
            ]
        if self.latency:
            parts += [
                "Pruned to a latency target (issue 27, `scripts/bench_latency.py` part 1): "
                "random-init weights, L1 scores, kept filters rounded to 8, latency table "
                "measured on this device (bf16, channels-last, graphed); ratios thin / dense, "
                "the median of 3 alternating measurements after the selection; goal: within "
                "5% of the target:",
                "",
                self.latency,
                "",
            ]
        parts += [f"- {line}" for line in self.not_run]
        if self.not_run:
            parts.append("")
        if running is None:
            parts.append(f"gpu-check took {self.elapsed():.0f} s.")
        else:
            parts.append(
                f"gpu-check had run {self.elapsed():.0f} s and was in its step `{running}` "
                "when this was written: the steps above are complete, the rest are missing."
            )
        return "\n".join(parts)

    def write(self, running: str | None = None) -> None:
        a = self.args
        publish(self.render(running), a.out, None if a.no_doc else a.doc, quiet=running is not None)


def parser() -> argparse.ArgumentParser:
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
    ap.add_argument("--no-tests", dest="tests", action="store_false", help="skip step 1")
    ap.add_argument("--no-train", dest="train", action="store_false", help="skip steps 4 and 5")
    ap.add_argument("--no-thin", dest="thin", action="store_false", help="skip step 3")
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
    ap.add_argument("--no-latency", dest="latency", action="store_false", help="skip step 2")
    ap.add_argument("--model", default="resnet56", help="training benchmark model")
    ap.add_argument("--device", default="cuda", help="cpu: a quick dry run of this script")
    ap.add_argument(
        "--budget-s",
        type=int,
        default=330,
        help="the compiled rows (step 5) run only if the steps before took less (seconds)",
    )
    ap.add_argument(
        "--deadline-s",
        type=int,
        default=480,
        help="no step (and no network of step 2) starts after this many seconds; the default "
        "leaves a step begun just before it time to end inside a 10-minute limit on one command",
    )
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible")

    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor()})"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = command_line(sys.argv[1:] if argv is None else list(argv))
    log(f"gpu-check on {device}, torch {torch.__version__}, CUDA {torch.version.cuda}, {date}")
    report = Report(
        args,
        f"Measured on {device}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"Python {platform.python_version()}, {os.cpu_count()} CPU cores, {date}. "
        f"Command: `{command}`.",
    )
    wanted = {
        "tests": args.tests,
        "latency": args.latency,
        "thin": args.thin,
        "train": args.train,
        "compiled": args.train and args.cudagraphs and cuda,
    }
    summary: dict | None = None
    for step in STEPS:
        if not wanted[step]:
            continue
        why = report.past_deadline()
        if step == "compiled" and why is None and report.elapsed() >= args.budget_s:
            why = f"{report.elapsed():.0f} s used, --budget-s {args.budget_s}"
        if why is not None:
            report.not_run.append(f"step `{step}` not run: {why}.")
            log(report.not_run[-1])
            continue
        report.write(running=step)
        if step == "tests":
            line, code = run_tests()
            report.tests = f"{line} (exit code {code})"
        elif step == "latency":
            log(f"\n== latency targets {args.latency_targets} (bench_latency part 1) ==")

            def partial(text: str) -> None:
                report.latency = text
                report.write(running="latency")

            report.latency = guarded(
                "latency-target benchmark",
                lambda: latency_section(args, partial, report.past_deadline),
            )
            log(report.latency)
        elif step == "thin":
            log(f"\n== structured pruning latency, batch {args.thin_batch} ==")
            report.thin = guarded("latency benchmark", lambda: thin_section(args))
            log(report.thin)
        elif step == "train":
            log(f"\n== training: {args.model}, 32x32x3, batch 128 ==")
            try:
                summary = train_summary(args)
            except Exception as exc:
                traceback.print_exc()
                report.train = f"training benchmark failed: {type(exc).__name__}: {exc}"
            else:
                report.train = training_text(summary)
        elif step == "compiled" and summary is not None:
            log(f"\n== compiled training ({report.elapsed():.0f} s used) ==")
            add_compiled_rows(args, summary)
            report.train = training_text(summary)
    log(f"\n{report.train}" if report.train else "")
    report.write()


def command_line(argv: Sequence[str]) -> str:
    """The command as typed: ``make gpu-check`` (which names itself in ``GPU_CHECK_COMMAND``)
    with its ``GPU_CHECK_ARGS``, or the script with its arguments."""
    given = " ".join(argv)
    make = os.environ.get("GPU_CHECK_COMMAND")
    if make:
        return f'{make} GPU_CHECK_ARGS="{given}"' if given else make
    return f"python3 scripts/gpu_check.py {given}".rstrip()


def training_text(summary: dict) -> str:
    """The training table and its notes (``bench_train.report``)."""
    import bench_train

    text = bench_train.report(summary)
    if summary.get("notes"):
        text += "\n" + "\n".join(f"- {n}" for n in summary["notes"])
    return text


if __name__ == "__main__":
    main()
