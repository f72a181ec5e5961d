"""Time prune-run's training epoch against plain PyTorch loops, in one process.

Everything trains the same model, from the same initial weights, on the same data (synthetic
uint8 images of the dataset's size, so that no download is needed), with the same augmentation
(CIFAR-size: 4-pixel padded crop and flip; MNIST-size: none) and the same SGD optimizer.

- reference: a torchvision ``Dataset`` of uint8 images with ``transforms`` (RandomCrop,
  RandomHorizontalFlip, ToTensor, Normalize), a ``DataLoader`` with ``--workers`` workers (one
  row per count), eager fp32: the usual way to write it;
- plain: a bare loop (forward, loss, backward, step) over the same batches prune-run makes,
  computed beforehand and held as tensors on the device, with the same precision and layout as
  the prune-run variant it is compared with: what prune-run costs over no framework at all;
- prune-run: ``Trainer.train_epoch`` over ``InMemoryData`` (augmentation in batches on the
  device), masks enforced after every step, LR scheduler; one row per variant: eager or
  compiled (``--compile-modes``), bf16 or fp32 (CUDA), masks at 0% (nothing to multiply) or
  90% (``--sparsities``), and 90% without enforcement, to show what the masks cost.

Each row reports images/s and seconds per epoch (median over ``--epochs`` timed epochs after
``--warmup`` epochs; a compiled variant's first warm-up epoch, which compiles, is reported as
its compile time). Then the ratios: prune-run / best reference, prune-run / plain (framework
overhead) and the cost of enforcing the masks, also timed directly per call.
Run: ``python scripts/bench_train.py --model resnet20 --size 32`` (see docs/BENCHMARKS.md);
``scripts/gpu_check.py`` runs it with the GPU settings.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from prune_cli.data.base import InMemoryData
from prune_cli.models import build_model
from prune_cli.pruning.mask import Masks, prunable_parameters
from prune_cli.pruning.scope import fraction_of_total, select
from prune_cli.spec import DataSpec
from prune_cli.training.config import TrainConfig
from prune_cli.training.loop import Trainer, as_input, memory_format
from prune_cli.training.optim import build_optimizer, build_scheduler


class UInt8Images(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, transform) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = self.x[i]
        img = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
        return self.transform(img), int(self.y[i])


@dataclass
class Row:
    name: str
    images_per_s: float
    s_per_epoch: float
    compile_s: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Setup:
    """The shared pieces: data as arrays and as prune-run data, the model and its init."""

    args: argparse.Namespace
    device: torch.device
    spec: DataSpec
    x: np.ndarray
    y: np.ndarray
    data: InMemoryData
    model: nn.Module
    init: dict

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset(self, fmt: torch.memory_format) -> nn.Module:
        """The model at its initial weights, in layout ``fmt`` (the same object every time, so
        that compiled code is reused across variants)."""
        self.model.load_state_dict(self.init)
        return self.model.to(memory_format=fmt)


def make_setup(args: argparse.Namespace) -> Setup:
    device = torch.device(args.device)
    channels = 3 if args.size == 32 else 1
    spec = DataSpec(channels, 10, args.size)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.n, channels, args.size, args.size), dtype=np.uint8)
    y = rng.integers(0, 10, args.n)
    augment = args.size == 32
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    data = InMemoryData(
        {s: (xt, yt) for s in ("train", "val", "test")},
        spec,
        [str(i) for i in range(10)],
        (0.5,) * channels,
        (0.25,) * channels,
        device,
        crop_padding=4 if augment else 0,
        flip=augment,
    )
    torch.manual_seed(0)
    model = build_model(args.model, spec).to(device)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    return Setup(args, device, spec, x, y, data, model, init)


def timed(setup: Setup, run_epoch: Callable[[int], int], warmup: int, epochs: int) -> Row:
    """Median images/s over ``epochs`` epochs after ``warmup``; the first warm-up epoch's
    extra time over the median epoch is reported as compile time."""
    first = None
    for e in range(warmup):
        setup.sync()
        start = time.perf_counter()
        run_epoch(e)
        setup.sync()
        first = first if first is not None else time.perf_counter() - start
    seconds, seen = [], 0
    for e in range(warmup, warmup + epochs):
        setup.sync()
        start = time.perf_counter()
        seen = run_epoch(e)
        setup.sync()
        seconds.append(time.perf_counter() - start)
    s = statistics.median(seconds)
    compile_s = None if first is None else max(0.0, first - s)
    return Row("", seen / s, s, compile_s)


def reference_row(setup: Setup, workers: int, warmup_batches: int, epochs: int) -> Row:
    """torchvision Dataset + transforms + DataLoader, eager fp32."""
    from torchvision import transforms

    args, device = setup.args, setup.device
    channels = setup.spec.channels
    mean, std = (0.5,) * channels, (0.25,) * channels
    tf = [transforms.RandomCrop(args.size, padding=4), transforms.RandomHorizontalFlip()]
    tf = (tf if args.size == 32 else []) + [transforms.ToTensor(), transforms.Normalize(mean, std)]
    loader = DataLoader(
        UInt8Images(setup.x, setup.y, transforms.Compose(tf)),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
    )
    model = setup.reset(torch.contiguous_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def epoch(limit: int | None = None) -> int:
        model.train()
        seen = 0
        for i, (x, y) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += y.numel()
        return seen

    epoch(warmup_batches)  # workers start, kernels are chosen, caches fill
    row = timed(setup, lambda e: epoch(), 0, epochs)
    row.name = f"reference, DataLoader {workers} workers, fp32 eager"
    return row


def train_config(
    setup: Setup, bf16: bool, compile_mode: str | None, graphs: bool = False
) -> TrainConfig:
    return TrainConfig(
        batch_size=setup.args.batch_size,
        lr=0.01,
        nesterov=False,
        bf16=bf16,
        compile=compile_mode is not None,
        compile_mode=compile_mode,
        cuda_graphs=graphs,
    )


def sparse_masks(params: dict[str, torch.Tensor], sparsity: float) -> Masks:
    masks = Masks.ones(params)
    if sparsity > 0:
        gen = torch.Generator().manual_seed(0)
        scores = {k: torch.rand(p.shape, generator=gen).to(p.device) for k, p in params.items()}
        masks.update(select(params, scores, masks, "global", fraction_of_total(sparsity)))
    return masks


def trainer_row(
    setup: Setup,
    bf16: bool,
    compile_mode: str | None,
    sparsity: float,
    enforce: bool = True,
    warmup: int = 1,
    epochs: int = 2,
    graphs: bool = False,
) -> tuple[Row, Masks, dict]:
    cfg = train_config(setup, bf16, compile_mode, graphs)
    model = setup.reset(memory_format(setup.device, cfg))
    params = prunable_parameters(model)
    masks = sparse_masks(params, sparsity)
    masks.apply_(params)
    opt = build_optimizer(model.parameters(), cfg, cfg.lr)
    sched = build_scheduler(opt, cfg, setup.data.num_batches("train", cfg.batch_size), 10**6)
    enforce_fn = (lambda: masks.apply_(params)) if enforce else None
    trainer = Trainer(model, setup.data, cfg, opt, sched, enforce_fn)

    def run(e: int) -> int:
        trainer.train_epoch(e, torch.Generator().manual_seed(e))
        n = setup.data.size("train")
        return n - (1 if n % cfg.batch_size == 1 else 0)  # a last batch of one is dropped

    row = timed(setup, run, warmup, epochs)
    precision = "bf16" if bf16 and setup.device.type == "cuda" else "fp32"
    mode = "eager" if compile_mode is None else f"compiled ({compile_mode})"
    if graphs:
        mode += " kernels, whole step as a CUDA graph"
    enforced = "" if enforce else ", not enforced"
    row.name = f"prune-run, {mode}, {precision}, masks {sparsity:.0%}{enforced}"
    if compile_mode is None:
        row.compile_s = None
    return row, masks, params


def plain_row(setup: Setup, bf16: bool, warmup: int, epochs: int) -> Row:
    """A bare loop over prune-run's own batches, precomputed as device tensors, timed in
    alternation with prune-run's eager epoch (masks 0%, same precision and layout), so that
    other load on a shared machine hits both alike; ``extra["overhead"]`` is the median per-round
    time ratio prune-run / plain."""
    cfg = train_config(setup, bf16, None)
    fmt = memory_format(setup.device, cfg)
    model = copy.deepcopy(setup.reset(fmt))
    gen = torch.Generator().manual_seed(0)
    batches = [
        (as_input(x, fmt), y)
        for x, y in setup.data.batches(
            "train", cfg.batch_size, shuffle=True, augment=True, generator=gen
        )
    ]
    opt = build_optimizer(model.parameters(), cfg, cfg.lr)
    use_bf16 = bf16 and setup.device.type == "cuda"

    def plain(e: int) -> int:
        model.train()
        for x, y in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext():
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return sum(len(y) for _, y in batches)

    ours_model = setup.reset(fmt)
    params = prunable_parameters(ours_model)
    masks = Masks.ones(params)
    ours_opt = build_optimizer(ours_model.parameters(), cfg, cfg.lr)
    sched = build_scheduler(ours_opt, cfg, setup.data.num_batches("train", cfg.batch_size), 10**6)
    trainer = Trainer(ours_model, setup.data, cfg, ours_opt, sched, lambda: masks.apply_(params))

    def ours(e: int) -> int:
        trainer.train_epoch(e, torch.Generator().manual_seed(e))
        return 0

    for e in range(warmup):
        plain(e)
        ours(e)
    plain_s, ours_s = [], []
    seen = 0
    for e in range(warmup, warmup + epochs):
        for run, out in ((ours, ours_s), (plain, plain_s)):
            setup.sync()
            start = time.perf_counter()
            seen = run(e) or seen
            setup.sync()
            out.append(time.perf_counter() - start)
    s = statistics.median(plain_s)
    ratio = statistics.median(o / p for o, p in zip(ours_s, plain_s, strict=True))
    name = f"plain loop, batches as tensors, {'bf16' if use_bf16 else 'fp32'} eager"
    return Row(name, seen / s, s, None, {"overhead": ratio})


def mask_call_ms(setup: Setup, masks: Masks, params: dict, calls: int = 200) -> float:
    """Time of one ``masks.apply_`` (the fused multiply), averaged over ``calls`` calls."""
    masks.apply_(params)
    setup.sync()
    start = time.perf_counter()
    for _ in range(calls):
        masks.apply_(params)
    setup.sync()
    return 1000 * (time.perf_counter() - start) / calls


def format_table(rows: list[Row], best_reference: float | None) -> str:
    lines = [
        "| variant | images/s | s/epoch | x best reference | compile s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "-" if not best_reference else f"{r.images_per_s / best_reference:.2f}"
        comp = "-" if r.compile_s is None else f"{r.compile_s:.0f}"
        lines.append(
            f"| {r.name} | {r.images_per_s:,.0f} | {r.s_per_epoch:.2f} | {ratio} | {comp} |"
        )
    return "\n".join(lines)


def run_all(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Every measurement the arguments ask for; returns the rows and the derived ratios."""
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = make_setup(args)
    cuda = setup.device.type == "cuda"
    log(
        f"device={setup.device} model={args.model} size={args.size} n={args.n} "
        f"batch={args.batch_size} threads={torch.get_num_threads()}"
    )
    rows: list[Row] = []
    refs: list[Row] = []
    for w in args.workers:
        refs.append(reference_row(setup, w, args.ref_warmup_batches, args.ref_epochs))
        log(f"  {refs[-1].name}: {refs[-1].images_per_s:,.0f} images/s")
    rows += refs
    precisions = [True, False] if cuda and args.fp32 else [True]
    modes: list[str | None] = [None, *args.compile_modes]
    results: dict[str, Row] = {}
    mask_ms = None
    for mode in modes:
        for bf16 in precisions:
            for sparsity in args.sparsities:
                row, masks, params = trainer_row(
                    setup, bf16, mode, sparsity, warmup=args.warmup, epochs=args.epochs
                )
                rows.append(row)
                results[row.name] = row
                log(f"  {row.name}: {row.images_per_s:,.0f} images/s, {row.s_per_epoch:.2f} s")
                if mode is None and bf16 and sparsity == max(args.sparsities) and sparsity > 0:
                    mask_ms = mask_call_ms(setup, masks, params)
    eager_name, unenforced = None, None
    sparse = max(args.sparsities)
    if sparse > 0:
        row, _, _ = trainer_row(
            setup, True, None, sparse, enforce=False, warmup=args.warmup, epochs=args.epochs
        )
        rows.append(row)
        log(f"  {row.name}: {row.images_per_s:,.0f} images/s, {row.s_per_epoch:.2f} s")
        eager_name = row.name.replace(", not enforced", "")
        unenforced = row
    if cuda and args.graphs:  # the whole step as one CUDA graph, eager kernels
        graphed: dict[tuple[bool, float, bool], Row] = {}
        variants = [(True, 0.0, True), (True, sparse, True), (True, sparse, False)]
        if args.fp32:
            variants.append((False, sparse, True))
        for bf16, sparsity, enforce in variants:
            try:
                row, _, _ = trainer_row(
                    setup, bf16, None, sparsity, enforce, args.warmup, args.epochs, graphs=True
                )
            except Exception as exc:  # report it, keep the other figures
                traceback.print_exc()
                log(f"  whole-step CUDA graph failed: {type(exc).__name__}: {exc}")
                break
            rows.append(row)
            graphed[(bf16, sparsity, enforce)] = row
            log(f"  {row.name}: {row.images_per_s:,.0f} images/s, {row.s_per_epoch:.2f} s")
        if sparse > 0 and (True, sparse, False) in graphed:
            on, off = graphed[(True, sparse, True)], graphed[(True, sparse, False)]
            summary_graph = {"graph_mask_epoch_cost": on.s_per_epoch / off.s_per_epoch - 1}
            if mask_ms is not None:
                steps = setup.data.num_batches("train", args.batch_size)
                step_ms = 1000 * on.s_per_epoch / steps
                summary_graph["graph_mask_call_share"] = mask_ms / step_ms
    plain = plain_row(setup, True, args.warmup, args.epochs)
    rows.append(plain)
    log(f"  {plain.name}: {plain.images_per_s:,.0f} images/s, {plain.s_per_epoch:.2f} s")

    summary: dict = {"rows": rows, "refs": refs, "plain": plain}
    if cuda and args.graphs and sparse > 0 and (True, sparse, False) in graphed:
        summary.update(summary_graph)
    if unenforced is not None and eager_name in results:
        enforced = results[eager_name]
        summary["mask_epoch_cost"] = enforced.s_per_epoch / unenforced.s_per_epoch - 1
        steps = setup.data.num_batches("train", args.batch_size)
        summary["mask_call_ms"] = mask_ms
        summary["mask_call_share"] = (
            None if mask_ms is None else mask_ms / (1000 * enforced.s_per_epoch / steps)
        )
    summary["setup"] = setup
    return derive(summary)


def derive(summary: dict) -> dict:
    """The ratios from the rows (again after rows were added)."""
    rows = summary["rows"]
    best_ref = max((r.images_per_s for r in summary["refs"]), default=None)
    summary["best_reference"] = best_ref
    summary["overhead_vs_plain"] = summary["plain"].extra["overhead"]
    ours = [r for r in rows if r.name.startswith("prune-run") and "not enforced" not in r.name]
    summary["fastest"] = max(ours, key=lambda r: r.images_per_s)
    if best_ref:
        summary["speedup_vs_reference"] = summary["fastest"].images_per_s / best_ref
    return summary


def report(summary: dict) -> str:
    lines = [format_table(summary["rows"], summary["best_reference"]), ""]
    fastest = summary["fastest"]
    lines.append(
        f"- fastest prune-run variant: {fastest.name}, {fastest.s_per_epoch:.2f} s/epoch"
        + (
            f", **{summary['speedup_vs_reference']:.2f}x** the best reference"
            if "speedup_vs_reference" in summary
            else ""
        )
    )
    lines.append(
        f"- framework overhead, epoch time of prune-run eager (masks 0%) / plain loop, same "
        f"precision, alternating epochs, median ratio: **{summary['overhead_vs_plain']:.3f}** "
        "(1.05 = 5% slower)"
    )
    if "graph_mask_epoch_cost" in summary:
        lines.append(
            f"- masks at 90%, whole step as a CUDA graph: epoch time enforced / not enforced - 1 "
            f"= **{summary['graph_mask_epoch_cost']:+.1%}**"
            + (
                f"; one fused mask multiply = {summary['graph_mask_call_share']:.1%} of a graphed "
                "step"
                if "graph_mask_call_share" in summary
                else ""
            )
        )
    if "mask_epoch_cost" in summary:
        lines.append(
            f"- masks at 90%: epoch time enforced / not enforced - 1 = "
            f"**{summary['mask_epoch_cost']:+.1%}**"
        )
        if summary.get("mask_call_ms") is not None:
            lines.append(
                f"- one fused mask multiply: {summary['mask_call_ms']:.3f} ms = "
                f"**{summary['mask_call_share']:.1%}** of a step"
            )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--size", type=int, default=32, help="image size (32: CIFAR, 28: MNIST)")
    ap.add_argument("--n", type=int, default=4096, help="training images per epoch")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs per variant")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per variant")
    ap.add_argument(
        "--workers", type=int, nargs="*", default=[2], help="reference DataLoader workers"
    )
    ap.add_argument("--ref-epochs", type=int, default=1, help="timed reference epochs")
    ap.add_argument("--ref-warmup-batches", type=int, default=20)
    ap.add_argument(
        "--compile-modes",
        nargs="*",
        default=[],
        help="torch.compile modes to time besides eager (default, reduce-overhead, ...)",
    )
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.9])
    ap.add_argument(
        "--no-graphs",
        dest="graphs",
        action="store_false",
        help="CUDA: no rows with the whole step as a CUDA graph (train.cuda_graphs)",
    )
    ap.add_argument("--no-fp32", dest="fp32", action="store_false", help="CUDA: bf16 rows only")
    ap.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap


def main() -> None:
    summary = run_all(parser().parse_args())
    print()
    print(report(summary))


if __name__ == "__main__":
    main()
