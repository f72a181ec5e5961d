"""Pruning to a latency budget (issue 27; HALP, Shen et al., NeurIPS 2022): does the measured
latency meet the target, and is the knapsack's network at least as accurate at equal latency?

Part 1, **targets met** (``--part 1``): ResNet-56, VGG-16 and MobileNet-V1 at 32x32 and
ResNet-50 at 224x224, randomly initialised (L1 filter scores: the timing does not depend on the
weights' values), for each target F (0.5 and 0.7 of the dense latency) and each way of choosing
the filters, through ``method=filter`` itself (``FilterPruning.prune`` with
``method.latency_target=F``): the knapsack over the latency table (``latency_by=knapsack``), and
the global and per-layer rankings at the filter fraction bisected to the same latency
(``latency_by=fraction``, ``scope=global`` / ``layer``). Each selection is then thinned, and the
dense and the thin network are timed again here as the method times them (``--rounds`` pairs,
each of interleaved passes on the CPU), so that the printed ratio was measured in this run;
beside it the table's predicted ratio, the error against F, the MACs and parameter ratios, the
share of the summed L1 importance kept, and the seconds each selection took (the first one of a
model includes measuring its latency table; the others read it from the cache). Batches on the
CPU: 64 at 32x32 and 8 at 224x224, which keeps the part in minutes (CUDA: 256 and 64,
``scripts/gpu_check.py``).

Part 2, **accuracy at equal latency** (``--part 2``): ``prune-run -m`` sweeps on Fashion-MNIST
(``experiment=latency_fmnist_lenet5`` and ``latency_fmnist_vgg11``: LeNet-5 on 10,000 training
images, and VGG-11 at a quarter of its width on 6,000), three seeds, the same target for the
knapsack and the two tuned rankings, pruned once after the dense training
(``method.when=trained``), then fine-tuned; one sweep per filter importance (``--study-measure``,
default ``l1``, ``taylor`` and ``halp``, HALP's own group Taylor score), all under one
``output_root``, so each seed's dense model is trained once for all of them; ``prune-report``
summarises each sweep, and its table is what goes into the docs, with the commands.

The script prints everything and writes each part's Markdown section (device: the CPU model
from /proc/cpuinfo or the GPU's name, torch threads, torch version, date, load average,
command) into docs/BENCHMARKS.md, part 1 between ``<!-- bench-latency:begin -->`` and
``<!-- bench-latency:end -->``, part 2 between the ``bench-latency-study`` markers, so that
running one part keeps the other's figures (``--no-doc``: not; ``--out``: also to that file);
``--section NAME`` writes between markers of that name instead (``bench-latency-NAME``,
``bench-latency-study-NAME``; ``--threads N`` alone: ``threads-N``), so that a variant (one
thread, another schedule, ``--study-override train.retrain.epochs=6``) sits beside the
default figures instead of replacing them.
``--quick`` runs both parts at toy sizes (batch 2, ResNet-50 at 64x64, 3 grid points, one seed,
500 images): a check of the script, not figures. ``make bench-latency`` runs the full CPU
benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune_cli.api import load_runs
from prune_cli.errors import UserError
from prune_cli.models import build_model
from prune_cli.pruning.latency import kept_widths
from prune_cli.pruning.latency_step import paired_timing, time_pair
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS, PruneContext
from prune_cli.pruning.methods.filter_pruning import FilterConfig
from prune_cli.pruning.structured import macs_and_params
from prune_cli.spec import DataSpec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from gpu_check import publish  # noqa: E402 (scripts/ is not a package)
from gpu_check import write_section as _write_section  # noqa: E402

BEGIN, END = "<!-- bench-latency:begin -->", "<!-- bench-latency:end -->"  # part 1
STUDY_BEGIN, STUDY_END = "<!-- bench-latency-study:begin -->", "<!-- bench-latency-study:end -->"

#: the ways of choosing filters under a latency target: (label, method.latency_by, method.scope,
#: method.latency_solver); part 2 compares these three
ARMS: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("knapsack", "knapsack", None, None),
    ("global ranking, tuned", "fraction", "global", None),
    ("per-layer ranking, tuned", "fraction", "layer", None),
)
#: part 1 adds HALP's solver of the knapsack (the same budget: more importance kept, or equal)
PART1_ARMS = (*ARMS, ("knapsack, HALP's DP", "knapsack", None, "dp"))
#: goal of part 1: the measured latency ratio within 5% of the target (relative)
GOAL = 0.05


@dataclass(frozen=True)
class Case:
    """One network of part 1 and how it is timed."""

    model: str
    size: int  # input height and width
    classes: int
    batch: int  # latency batch (``method.latency_batch``)
    points: int  # latency table grid points per controlled dimension (``method.latency_points``)
    repeats: int  # timed passes per measurement (``method.latency_repeats``)


#: the issue's four networks on the CPU: batches that keep part 1 in minutes on 2 cores
CPU_CASES = (
    Case("resnet56", 32, 10, 64, 6, 10),
    Case("vgg16", 32, 10, 64, 5, 10),
    Case("mobilenet_v1", 32, 10, 64, 5, 10),
    Case("resnet50", 224, 1000, 8, 3, 3),  # 1.3 s a dense pass on one thread (docs)
)
#: the same at toy sizes (``--quick``): the code path, not figures
QUICK_CASES = (
    Case("resnet56", 32, 10, 2, 3, 3),
    Case("vgg16", 32, 10, 2, 3, 3),
    Case("mobilenet_v1", 32, 10, 2, 3, 3),
    Case("resnet50", 64, 10, 1, 3, 3),
)
#: on CUDA (``make gpu-check``): batches that fill more of the GPU, fewer grid points (each
#: standalone layer is captured and replayed as a CUDA graph, about 0.1 s a point)
CUDA_CASES = (
    Case("resnet56", 32, 10, 256, 4, 20),
    Case("vgg16", 32, 10, 256, 4, 20),
    Case("mobilenet_v1", 32, 10, 256, 4, 20),
    Case("resnet50", 224, 1000, 64, 4, 20),
)


def log(text: str = "") -> None:
    print(text, flush=True)


# --- part 1: targets met ---------------------------------------------------------------------
def _context(x: torch.Tensor, classes: int, device: torch.device, cache_dir: Path) -> PruneContext:
    """A ``PruneContext`` whose batches are ``x`` (random inputs: only the latency and the
    weights' L1 norms are used, no gradient); the latency tables are cached in ``cache_dir``."""
    labels = torch.zeros(len(x), dtype=torch.long, device=device)
    return PruneContext(
        level=1,
        seed=0,
        device=device,
        batches=lambda n: iter([(x, labels)] * n),
        loss_fn=nn.functional.cross_entropy,
        weight_decay=0.0,
        num_classes=classes,
        load_state=lambda name: {},
        cache_dir=cache_dir,
    )


def budgeted(
    case: Case,
    target: float,
    arm: tuple[str, str, str | None, str | None],
    dense: nn.Module,
    device: torch.device,
    cache_dir: Path,
    *,
    rounds: int = 3,
    round_to: int | None = 8,
    round_to_layers: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Prune a copy of ``dense`` to ``target`` of its latency the way ``arm`` says, through
    ``method=filter`` (each unit's multiple ``round_to``, or ``round_to_layers``' per-layer one);
    measure the thin network against the dense one here. One result row."""
    label, latency_by, scope, solver = arm
    torch.manual_seed(0)
    x = torch.randn(case.batch, 3, case.size, case.size, device=device)
    ctx = _context(x, case.classes, device, cache_dir)
    cfg = FilterConfig(
        measure="l1",
        when="trained",
        latency_target=target,
        latency_by=latency_by,
        latency_solver=solver,
        scope=scope,
        round_to=round_to,
        round_to_layers=dict(round_to_layers or {}),
        latency_batch=case.batch,
        latency_repeats=case.repeats,
        latency_points=case.points,
    )
    method = METHODS.get("filter")(cfg)
    model = copy.deepcopy(dense)  # pruning zeroes the removed channels of the model it is given
    started = time.perf_counter()
    masks = Masks.ones(method.prunable(model))
    groups = method.units(model, ctx)
    scores = method.channel_scores(model, groups, ctx)  # L1: the weights, no data needed
    masks.update(method.prune(model, masks, ctx))
    seconds = time.perf_counter() - started
    keep = method.keep_from(masks, groups)
    thin = groups.thin(keep, x[:1]).to(device)
    table = method.table
    assert table is not None, "a latency target builds the table"
    widths = kept_widths(keep)
    predicted_ratio = table.predict(widths) / table.predict({})
    # what the table predicts with every unit at its floor (min_keep, rounded to the unit's
    # multiple): a target below it cannot be met, and the arms then choose the same network
    floors = method.fewest(groups)
    floor_ratio = table.predict(floors) / table.predict({})
    # measured as the method measures (interleaved passes on the CPU), in ``rounds`` pairs
    timing = paired_timing(thin, dense, x, case.repeats, pairs=rounds)
    thin_ms, dense_ms = timing.median_pair
    macs_d, params_d = macs_and_params(dense, x[:1])
    macs_t, params_t = macs_and_params(thin, x[:1])
    total = sum(float(s.sum()) for s in scores.values())
    kept = sum(float(scores[r][k.to(scores[r].device)].sum()) for r, k in keep.items())
    ratio = timing.ratio
    return {
        "model": case.model,
        "input": f"{case.size}x{case.size}",
        "batch": case.batch,
        "target": target,
        "arm": label,
        "predicted_ratio": predicted_ratio,
        "dense_ms": dense_ms,
        "thin_ms": thin_ms,
        "ratio": ratio,
        "error": ratio / target - 1,
        "macs_ratio": macs_t / macs_d,
        "params_ratio": params_t / params_d,
        "filters_kept": sum(widths.values()) / sum(u.channels for u in groups.units),
        "widths": widths,  # each unit's kept count (not in the table: a check's)
        "importance_kept": kept / total if total > 0 else float("nan"),
        "table_from_cache": bool(table.from_cache),
        # the method warned that the per-unit floors keep the target out of reach
        "at_floors": bool(getattr(method, "latency_warned", False)),
        "floor_ratio": floor_ratio,
        "seconds": seconds,
    }


def experiment_multiples(experiment: str) -> dict[str, int]:
    """``method.round_to_layers`` of a registered experiment (its YAML, as Hydra composes it)."""
    from hydra import compose, initialize_config_dir

    from prune_cli.config import CONF_DIR, register_configs

    register_configs()  # the groups' schemas, as the CLI registers them
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"])
    return {str(k): int(v) for k, v in (cfg.method.get("round_to_layers") or {}).items()}


def build_dense(case: Case, device: torch.device) -> nn.Module:
    """The randomly initialised (seed 0) registered network of ``case``, in eval mode."""
    torch.manual_seed(0)
    return build_model(case.model, DataSpec(3, case.classes, case.size)).to(device).eval()


#: alternating pairs of the timing-noise check (the dense network against a copy of itself)
NOISE_PAIRS = 5


def timing_noise(case: Case, dense: nn.Module, device: torch.device) -> dict[str, Any]:
    """The dense network timed against a copy of itself in ``NOISE_PAIRS`` alternating pairs:
    the spread of those ratios (ideally all 1) is what this machine's timing noise alone does
    to a measured ratio, beside which the 5% goal is to be read."""
    torch.manual_seed(0)
    x = torch.randn(case.batch, 3, case.size, case.size, device=device)
    twin = copy.deepcopy(dense)
    ratios = []
    for i in range(NOISE_PAIRS):  # which goes first alternates: a fixed order could bias one way
        if i % 2 == 0:
            t, d = time_pair(twin, dense, x, case.repeats)
        else:
            d, t = time_pair(dense, twin, x, case.repeats)
        ratios.append(t / d)
    return {"model": case.model, "low": min(ratios), "high": max(ratios)}


def noise_lines(noise: Sequence[dict[str, Any]]) -> str:
    """One line per network: the self-ratio spread of :func:`timing_noise`."""
    return "\n".join(
        f"- {n['model']}: the dense network against a copy of itself, {NOISE_PAIRS} pairs: "
        f"ratios {n['low']:.3f} to {n['high']:.3f}"
        for n in noise
    )


def run_budgets(
    cases: Sequence[Case],
    targets: Sequence[float],
    device: torch.device,
    cache_dir: Path,
    *,
    arms: Sequence[tuple[str, str, str | None, str | None]] = PART1_ARMS,
    rounds: int = 3,
    round_to: int | None = 8,
    round_to_layers: dict[str, int] | None = None,
    say: Callable[[str], None] = log,
    noise: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Part 1: every case x target x arm, one row each, printed as it comes; with ``noise``,
    each network's :func:`timing_noise` is appended to it first."""
    rows: list[dict[str, Any]] = []
    for case in cases:
        dense = build_dense(case, device)
        if noise is not None:
            noise.append(timing_noise(case, dense, device))
            say(noise_lines(noise[-1:]))
        for target in targets:
            for arm in arms:
                row = budgeted(
                    case,
                    target,
                    arm,
                    dense,
                    device,
                    cache_dir,
                    rounds=rounds,
                    round_to=round_to,
                    round_to_layers=round_to_layers,
                )
                rows.append(row)
                say(budget_table([row]).splitlines()[-1])
    return rows


def budget_table(rows: Sequence[dict[str, Any]]) -> str:
    """Part 1's rows as a Markdown table."""
    lines = [
        "| model | input, batch | target | filters chosen by | table's ratio | measured ratio "
        "| error vs target | dense -> thin ms | MACs ratio | params ratio | filters kept "
        "| L1 importance kept | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "" if abs(r["error"]) <= GOAL else " (missed)"
        if r.get("at_floors") or r.get("floor_ratio", 0) > r["target"]:
            met += f" (floors: {r.get('floor_ratio', float('nan')):.3f})"
        lines.append(
            f"| {r['model']} | {r['input']}, {r['batch']} | {r['target']:g} | {r['arm']} "
            f"| {r['predicted_ratio']:.3f} | **{r['ratio']:.3f}** | {100 * r['error']:+.1f}%{met} "
            f"| {r['dense_ms']:.4g} -> {r['thin_ms']:.4g} | {r['macs_ratio']:.3f} "
            f"| {r['params_ratio']:.3f} | {r['filters_kept']:.3f} | {r['importance_kept']:.3f} "
            f"| {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def same_network_lines(rows: Sequence[dict[str, Any]]) -> str:
    """Where several rows chose the same network (same model, MACs, parameters and filters: the
    arms at the floors, or one network reached for both targets), the spread of its measured
    ratio: how much the thin / dense ratio of one fixed pair of networks moves between
    measurements a minute apart on this machine (more than a network timed against its own
    copy, as the machine's state slows the two sizes differently)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["model"], r["batch"], round(r["macs_ratio"], 6), round(r["params_ratio"], 6))
        groups.setdefault((*key, round(r["filters_kept"], 6)), []).append(r)
    out = []
    for (model, *_), same in groups.items():
        if len(same) > 1:
            ratios = [r["ratio"] for r in same]
            out.append(
                f"- {model}: one network chosen {len(same)} times, measured ratios "
                f"{min(ratios):.3f} to {max(ratios):.3f}"
            )
    return "\n".join(out)


def budget_verdict(rows: Sequence[dict[str, Any]]) -> str:
    """One line per arm: how many rows met the goal, and the largest error."""
    out = []
    for label, *_ in PART1_ARMS:
        mine = [r for r in rows if r["arm"] == label]
        if not mine:
            continue
        met = sum(abs(r["error"]) <= GOAL for r in mine)
        worst = max(abs(r["error"]) for r in mine)
        out.append(
            f"- {label}: {met} of {len(mine)} within {100 * GOAL:.0f}% of the target "
            f"(largest error {100 * worst:.1f}%)"
        )
    return "\n".join(out)


# --- part 2: accuracy at equal latency ---------------------------------------------------------
@dataclass(frozen=True)
class Study:
    """Part 2's sweep."""

    experiments: tuple[str, ...] = ("latency_fmnist_lenet5", "latency_fmnist_vgg11")
    target: float = 0.5
    seeds: tuple[int, ...] = (0, 1, 2)
    #: method settings every arm adds (``--quick``'s latency measurement)
    method: tuple[tuple[str, str], ...] = ()
    extra: tuple[str, ...] = ()  # more overrides (``--quick``'s sizes)


QUICK_STUDY = Study(
    seeds=(0,),
    method=(("latency_batch", "16"), ("latency_repeats", "3"), ("latency_points", "3")),
    extra=(
        "dataset.limit_train=500",
        "dataset.val_size=200",
        "train.epochs=1",
        "train.retrain.epochs=1",
    ),
)


def _tool(name: str) -> str:
    """The console script ``name`` of this environment (beside the running Python)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        print(f"bench_latency: {name} not found; install prune-run (make install)", file=sys.stderr)
        sys.exit(2)
    return found


def arm_overrides(study: Study) -> list[str]:
    """Each arm as a dict that Hydra merges into the experiment's ``method``, holding every
    method setting of the study: a plain ``method.KEY=VALUE`` beside a swept ``experiment``
    would be applied before the experiment picks ``method=filter`` and fail."""
    out = []
    for _, by, scope, solver in ARMS:
        items = [("latency_target", f"{study.target:g}"), ("latency_by", by), *study.method]
        if scope is not None:
            items.append(("scope", scope))
        if solver is not None:
            items.append(("latency_solver", solver))
        out.append("{" + ",".join(f"{k}:{v}" for k, v in items) + "}")
    return out


def study_entry(entry: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``--study-measure``'s ``MEASURE[,KEY=VALUE...]``: the importance and the method settings
    every arm of its sweep adds."""
    measure, *rest = entry.split(",")
    settings = []
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"--study-measure {entry}: expected KEY=VALUE, got {item!r}")
        settings.append((key, value))
    return measure, tuple(settings)


def sweep_name(
    measure: str, settings: Sequence[tuple[str, str]], overrides: Sequence[str] = ()
) -> str:
    """The sweep folder of one ``--study-measure`` entry: its settings and the
    ``--study-override``s in the name, so that a variant never adds its jobs to another
    sweep's folder (whose report would then mix the two)."""
    parts = ["sweep", measure, *(f"{k}-{v}" for k, v in settings)]
    parts += [re.sub(r"[^A-Za-z0-9_.-]+", "-", o.lstrip("+~")) for o in overrides]
    return "-".join(parts)


def sweep_command(study: Study, out: Path, name: str = "sweep") -> list[str]:
    """The ``prune-run -m`` command of part 2: the arms as dict overrides of ``method`` (one
    sweep, so the three share each seed's dense model; the sweeps of other importance
    measures under the same ``out`` share it too), into ``out / name``."""
    return [
        _tool("prune-run"),
        "-m",
        "progress=false",
        f"experiment={','.join(study.experiments)}",
        f"method=choice({','.join(arm_overrides(study))})",
        f"seed={','.join(str(s) for s in study.seeds)}",
        *study.extra,
        f"output_root={out}",
        f"hydra.sweep.dir={out / name}",
    ]


def report_command(out: Path, name: str = "sweep") -> list[str]:
    return [_tool("prune-report"), str(out / name), "-o", str(out / f"{name}-report")]


def shown(cmd: Sequence[str]) -> str:
    """A command as one types it (the tools by name, not by their path)."""
    return shlex.join([Path(cmd[0]).name, *cmd[1:]])


def run(cmd: Sequence[str]) -> None:
    log(f"$ {shown(cmd)}")
    code = subprocess.call(list(cmd), cwd=ROOT)
    if code != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} exited with status {code}")


def study_verdict(csv_path: Path) -> str:
    """From ``prune-report``'s accuracy.csv: for each model, the pruned level's mean test
    accuracy and reached latency of each arm (knapsack, global, layer), whether the knapsack is
    at least as accurate as both rankings, and a warning where the arms' reached latencies are
    more than 5% apart (then it is no comparison at equal latency)."""
    with open(csv_path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["level"] != "0"]
    by_model: dict[str, dict[str, dict[str, str]]] = {}
    for r in rows:
        arm = "knapsack" if r.get("method.latency_by") == "knapsack" else r.get("method.scope", "")
        by_model.setdefault(r["model"], {})[arm] = r
    order = {"knapsack": 0, "global": 1, "layer": 2}
    out = []
    for model, arms in by_model.items():
        parts = []
        for arm, r in sorted(arms.items(), key=lambda item: (order.get(item[0], 3), item[0])):
            std = f" ± {100 * float(r['test_std']):.2f}" if r.get("test_std") else ""
            parts.append(
                f"{arm} {100 * float(r['test_mean']):.2f}{std}% at latency "
                f"{float(r['latency_reached_mean']):.3f}"
            )
        line = f"- {model}: " + "; ".join(parts)
        if "knapsack" in arms and len(arms) > 1:
            best = max(float(r["test_mean"]) for a, r in arms.items() if a != "knapsack")
            ok = float(arms["knapsack"]["test_mean"]) >= best
            line += f" — knapsack {'at least as accurate' if ok else 'less accurate'}"
        reached = [float(r["latency_reached_mean"]) for r in arms.values()]
        if min(reached) <= 0 or max(reached) / min(reached) > 1 + GOAL:
            line += " (reached latencies more than 5% apart: not at equal latency)"
        out.append(line)
    return "\n".join(out)


def width_lines(sweep: Path) -> str:
    """What each arm built: per model and arm (as :func:`study_verdict` names them), each unit's
    kept filters, the median over the seeds (``filters_by_unit`` in the runs' summaries), in
    the model's order, then the median test accuracy. A budget that strips one layer to its
    floor and keeps another whole shows here; the accuracy table alone does not say why."""
    kept: dict[tuple[str, str], list[dict[str, list[int]]]] = {}
    accuracy: dict[tuple[str, str], list[float]] = {}
    for r in load_runs(sweep):
        info = r.summary.get("method_info") or {}
        units = info.get("filters_by_unit")
        if r.summary.get("status") != "completed" or not units:
            continue
        test = (r.summary.get("levels") or [{}])[-1].get("test_accuracy")
        if not isinstance(test, int | float):
            continue
        # in the model's order, as its mask lists its parameters (the units come in the order
        # of torch-pruning's graph, and older runs recorded them so); a run whose mask cannot
        # be read keeps the recorded order rather than ending the benchmark
        try:
            position = {name.rpartition(".")[0]: i for i, name in enumerate(r.mask(0))}
        except (UserError, OSError):
            position = {}
        units = dict(sorted(units.items(), key=lambda item: position.get(item[0], len(position))))
        method = r.config.get("method") or {}
        arm = "knapsack" if method.get("latency_by") == "knapsack" else str(method.get("scope"))
        key = (str(r.summary.get("model")), arm)
        kept.setdefault(key, []).append(units)
        accuracy.setdefault(key, []).append(float(test))
    order = {"knapsack": 0, "global": 1, "layer": 2}
    out = []
    for key in sorted(kept, key=lambda k: (k[0], order.get(k[1], 3), k[1])):
        runs = kept[key]
        widths = [
            f"{statistics.median(run[u][0] for run in runs):g}/{runs[0][u][1]}" for u in runs[0]
        ]
        acc = 100 * statistics.median(accuracy[key])
        out.append(
            f"- {key[0]}, {key[1]}: {', '.join(widths)} (median of {len(runs)}; test {acc:.1f}%)"
        )
    return "\n".join(out)


def run_study(study: Study, out: Path, name: str = "sweep") -> tuple[str, str, list[str]]:
    """Part 2: the sweep into ``out / name`` and its report; (the report's accuracy table, the
    verdict, the commands as typed)."""
    sweep, report = sweep_command(study, out, name), report_command(out, name)
    run(sweep)
    run(report)
    folder = out / f"{name}-report"
    table = (folder / "accuracy.md").read_text().strip()
    verdict = study_verdict(folder / "accuracy.csv")
    if widths := width_lines(out / name):
        verdict += "\n\nKept filters per unit (kept / filters, in the model's order):\n\n"
        verdict += widths
    return table, verdict, [shown(sweep), shown(report)]


# --- the document ----------------------------------------------------------------------------
def device_line(device: torch.device) -> str:
    """The machine the figures are from: the GPU's name or the CPU's model, and more."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or "CPU"
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Measured on {name} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
        f"torch {torch.__version__}, Python {platform.python_version()}, {date}; load average "
        f"at the start {load}"
    )


def section_markers(part: int, section: str | None) -> tuple[str, str]:
    """A part's markers: the default's, or those of a named section (``--section``; a run at
    ``--threads N`` is ``threads-N``), so that a variant (one thread, another schedule) does
    not replace the default figures: both are worth reading side by side."""
    if section is None:
        return (BEGIN, END) if part == 1 else (STUDY_BEGIN, STUDY_END)
    name = "bench-latency" if part == 1 else "bench-latency-study"
    return f"<!-- {name}-{section}:begin -->", f"<!-- {name}-{section}:end -->"


def write_section(doc: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the text between the markers (or append the markers and the section)."""
    _write_section(doc, section, begin, end)


@contextlib.contextmanager
def cache_folder(path: Path | None) -> Iterator[Path]:
    """``path`` (made if missing), or a temporary folder removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", type=int, nargs="+", choices=[1, 2], default=[1, 2])
    ap.add_argument(
        "--quick", action="store_true", help="toy sizes: checks the script, not figures"
    )
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--models", nargs="+", help="part 1: only these of the four networks")
    ap.add_argument("--rounds", type=int, default=3, help="part 1: timing pairs per network")
    ap.add_argument("--round-to", type=int, default=8, help="kept filters, a multiple of this")
    ap.add_argument(
        "--round-to-layers",
        metavar="EXPERIMENT",
        help="part 1: the per-layer multiples of this experiment's method.round_to_layers "
        "(halp_resnet50_imagenet: HALP's channel groups; with --models of its network), "
        "--round-to for the layers it does not name",
    )
    ap.add_argument("--device", default="cpu", help="part 1's device (cpu, cuda)")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch's CPU threads (default: torch's own); on a shared VM one thread keeps a "
        "thin / dense ratio steady where two let it wander with the other vCPU's load",
    )
    ap.add_argument("--cache-dir", type=Path, help="part 1's latency tables (default: temporary)")
    ap.add_argument(
        "--study-dir",
        type=Path,
        default=ROOT / "outputs" / "bench_latency",
        help="part 2's output_root: the sweep, the shared dense models, the report",
    )
    ap.add_argument("--study-target", type=float, default=0.5, help="part 2's latency target")
    ap.add_argument("--seeds", type=int, nargs="+", help="part 2's seeds (default 0 1 2)")
    ap.add_argument(
        "--study-measure",
        nargs="+",
        default=["l1", "l1,normalize=mean", "taylor", "halp"],
        help="part 2: one sweep per filter importance, every arm with it (l1: the weights' "
        "norms; taylor: |sum theta g| of the mean gradient; halp: HALP's group Taylor score "
        "of the BatchNorms, the batches' mean of |sum gamma g_gamma + beta g_beta|), "
        "optionally with method settings for every arm: l1,normalize=mean",
    )
    ap.add_argument(
        "--section",
        help="write the parts between markers of this name (default: the standard ones; "
        "threads-N with --threads N), beside the default figures",
    )
    ap.add_argument(
        "--study-override",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="part 2: more overrides for every job of its sweeps (train.retrain.epochs=6)",
    )
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    ap.add_argument("--no-doc", action="store_true", help="do not edit docs/BENCHMARKS.md")
    ap.add_argument("--out", type=Path, help="also write the Markdown section to this file")
    args = ap.parse_args(argv)
    for t in [*args.targets, args.study_target]:
        if not 0 < t <= 1:
            ap.error(f"a latency target is a fraction of the dense latency in (0, 1], got {t}")
    if args.rounds < 1 or args.round_to < 1:
        ap.error("--rounds and --round-to must be at least 1")
    if args.section is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.section):
        ap.error(f"--section: letters, digits, '.', '_' and '-' only, got {args.section!r}")
    if bad := [o for o in args.study_override if "=" not in o.lstrip("+~")]:
        ap.error(f"--study-override: expected KEY=VALUE, got {', '.join(bad)}")
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    try:
        entries = [study_entry(e) for e in args.study_measure]
    except ValueError as exc:
        ap.error(str(exc))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible")

    started = time.perf_counter()
    failed = False
    command = shlex.join(["python", "scripts/bench_latency.py", *sys.argv[1:]])
    head = device_line(device)
    log(head)
    quick = ["**Quick run (toy sizes): checks the script; these are not figures.**", ""]
    # each part has its own markers in the document, so that running one keeps the other's
    sections: dict[int, list[str]] = {}

    if 1 in args.part:
        cases = QUICK_CASES if args.quick else CPU_CASES
        if device.type == "cuda" and not args.quick:
            cases = CUDA_CASES
        if args.models:
            unknown = set(args.models) - {c.model for c in cases}
            if unknown:
                ap.error(f"--models: {', '.join(sorted(unknown))} not among the four networks")
            cases = tuple(c for c in cases if c.model in args.models)
        layers = experiment_multiples(args.round_to_layers) if args.round_to_layers else None
        rounding = f"kept filters rounded to {args.round_to}"
        if layers:
            rounding = (
                f"kept filters in the per-layer multiples of `experiment={args.round_to_layers}`"
                f" (`method.round_to_layers`), {args.round_to} for the layers it does not name"
            )
        log(f"\n== part 1: latency targets {args.targets}, {len(cases)} networks ==")
        part_started = time.perf_counter()
        noise: list[dict[str, Any]] = []
        with cache_folder(args.cache_dir) as cache:
            rows = run_budgets(
                cases,
                args.targets,
                device,
                cache,
                rounds=args.rounds,
                round_to=args.round_to,
                round_to_layers=layers,
                noise=noise,
            )
        table = budget_table(rows)
        verdict = budget_verdict(rows)
        verdict += "\n\nTiming noise on this machine:\n\n" + noise_lines(noise)
        if same := same_network_lines(rows):
            verdict += "\n" + same
        log(f"\n{table}\n\n{verdict}")
        sections[1] = [
            f"{head}. Command: `{command}`.",
            "",
            *(quick if args.quick else []),
            f"**Latency targets met** ({device.type}; random-init weights, L1 filter scores, "
            f"{rounding}, the first convolution kept; ratios "
            f"thin / dense, each the median of {args.rounds} timing pairs made after the "
            "selection (on the CPU each pair of interleaved passes, as the method measures); "
            "goal: the measured ratio within 5% of the target; "
            "`floors: R`: the table predicts ratio R with every unit at its `min_keep` floor, "
            "above the target, so no selection reaches it and every way chooses the same "
            "network (their measured ratios then differ by timing noise alone); `s`: the "
            "selection's seconds, the first of a network including its latency table):",
            "",
            table,
            "",
            verdict,
            "",
            f"Part 1 took {time.perf_counter() - part_started:.0f} s.",
        ]

    if 2 in args.part:
        study = QUICK_STUDY if args.quick else Study()
        study = replace(study, target=args.study_target)
        if args.seeds:
            study = replace(study, seeds=tuple(args.seeds))
        if args.study_override:
            study = replace(study, extra=(*study.extra, *args.study_override))
        sections[2] = [f"{head}. Command: `{command}`.", "", *(quick if args.quick else [])]
        part_started = time.perf_counter()
        for entry, (measure, settings) in zip(args.study_measure, entries, strict=True):
            log(f"\n== part 2: accuracy at equal latency (target {study.target:g}, {entry}) ==")
            arms = replace(study, method=(*study.method, ("measure", measure), *settings))
            name = sweep_name(measure, settings, args.study_override)
            try:
                table, verdict, commands = run_study(arms, args.study_dir, name)
            except (RuntimeError, OSError) as exc:  # written down, and the exit status says so
                failed = True
                table, verdict, commands = f"part 2 failed: {exc}", "", []
            log(f"\n{table}\n\n{verdict}")
            sections[2] += [
                f"**Accuracy at equal latency, filter importance `{measure}`"
                + "".join(f", `method.{k}={v}`" for k, v in settings)
                + "** (Fashion-MNIST, "
                f"target {study.target:g}, seeds {', '.join(str(s) for s in study.seeds)}; "
                "each seed's dense model trained once and shared by every sweep; "
                "`prune-report`'s table, verbatim; goal: the knapsack at least as accurate). "
                "Commands:",
                "",
                "```",
                *commands,
                "```",
                "",
                table,
                "",
                verdict,
                "",
            ]
        sections[2].append(f"Part 2 took {time.perf_counter() - part_started:.0f} s.")
    doc = None if args.no_doc else args.doc
    section = args.section
    if section is None and args.threads is not None:
        section = f"threads-{args.threads}"  # kept beside the figures at torch's own count
    for part, lines in sections.items():
        publish("\n".join(lines), None, doc, *section_markers(part, section))
    if args.out is not None:
        publish("\n\n".join("\n".join(lines) for lines in sections.values()), args.out, None)
    log(f"bench_latency took {time.perf_counter() - started:.0f} s.")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
