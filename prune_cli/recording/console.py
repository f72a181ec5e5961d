"""What a person sees: the config tree at start, progress bars, and the results table.

On a terminal the bars and every logged line share one rich console: while the bars are live,
the logging handlers that write to a terminal (Hydra's ``stdout`` job logging) print through
that console, which puts each line above the bars, so no line is overwritten by a redraw and a
line longer than the terminal is wrapped by the terminal, not cut. Off a terminal there are no
bars; a heartbeat line every ``heartbeat_s`` seconds says how far the epoch has come instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from torch import nn

from prune_cli.callbacks import Callback
from prune_cli.recording.measure import THIN_LAYER

console = Console(stderr=True)


def _count(value: Any) -> str:
    """A MAC count as people read it: 1.23M, 45.6K."""
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return str(value)


def level_flags(level: dict[str, Any]) -> tuple[str, list[str]]:
    """What pruning disconnected at a level: a one-word flag for the results table (COLLAPSE,
    thin, cut, or "") and the details in words (both empty for runs written before these
    were recorded)."""
    details = []
    classes = level.get("zero_recall_classes") or []
    if classes:
        details.append(f"test recall 0 for class {', '.join(map(str, classes))}")
    thin = level.get("thin_layers") or {}
    if thin:
        layers = ", ".join(f"{k} ({100 * v:.2f}%)" for k, v in thin.items())
        details.append(f"layers below {THIN_LAYER:.0%} of their weights: {layers}")
    no_in, no_out = level.get("units_no_incoming") or 0, level.get("units_no_outgoing") or 0
    if no_in or no_out:
        details.append(f"units cut off: {no_in} with no incoming, {no_out} with no outgoing weight")
    if level.get("collapsed"):
        flag = "COLLAPSE"
    elif thin:
        flag = "thin"
    elif no_in or no_out:
        flag = "cut"
    else:
        flag = ""
    return flag, details


def results_table(summary: dict[str, Any]) -> Table:
    title = (
        f"{summary.get('method')} / {summary.get('model')} / {summary.get('dataset')} "
        f"seed {summary.get('seed')} - {summary.get('status')}"
    )
    # no vertical rules and one space between columns: nine columns fit an 80-column log
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    columns = ("level", "sparsity", "nonzero", "MACs", "val acc", "test acc", "pruned acc", "PQI")
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("flags", justify="left", no_wrap=True)

    def pct(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    for lv in summary.get("levels", []):
        pqi = lv.get("pqi")
        table.add_row(
            str(lv["level"]),
            pct(lv["sparsity"]),
            f"{lv['params_nonzero']:,}",
            _count(lv.get("macs_sparse")),
            pct(lv.get("val_accuracy")),
            pct(lv.get("test_accuracy")),
            pct(lv.get("pruned_test_accuracy")),
            "-" if pqi is None else f"{pqi:.4f}",
            level_flags(lv)[0],
            style="bold red" if lv.get("collapsed") else None,
        )
    return table


def show_results(summary: dict[str, Any], where: Any = None) -> None:
    console.print(results_table(summary))
    if where is not None:
        # on a line of its own, never wrapped: a path split at the table's width cannot be
        # copied (soft wrap leaves the wrapping to the terminal, and none to a log file)
        console.print(str(where), soft_wrap=True, markup=False, highlight=False)
    for lv in summary.get("levels", []):
        flag, details = level_flags(lv)
        if details:
            console.print(
                f"level {lv['level']}{f' {flag}' if flag else ''}: " + "; ".join(details),
                soft_wrap=True,
            )


def show_overrides(config_hash: str, overrides: list[str]) -> None:
    """One line at the start of a run: its hash and overrides (the full config: config.yaml)."""
    console.print(
        f"prune-run {config_hash}: {' '.join(overrides) or '(defaults)'}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )


class Heartbeat:
    """One short line every ``interval_s`` seconds of an epoch, for a log file, where no bar
    shows: the level, the epoch, the steps done of the epoch's, images per second and the time
    the epoch has left at that rate."""

    def __init__(
        self,
        interval_s: float,
        label: str,
        steps_per_epoch: int,
        epochs: int,
        batch_size: int,
        out: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.label = label  # "level 1/3"
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.batch_size = batch_size  # the global batch: images per optimizer step
        self.out = out
        self.clock = clock
        self.epoch = 0  # 0-based
        self.done = 0  # steps done in this epoch
        self._first: float | None = None  # when the epoch's first step ended
        self._last = 0.0  # when the last line was written

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.done, self._first = epoch, 0, None

    def step(self) -> None:
        self.done += 1
        now = self.clock()
        if self._first is None:
            # timed from the end of the first step: the epoch's set-up (the data's random
            # numbers, a compilation) is not a rate the rest of the epoch keeps
            self._first = self._last = now
            return
        if now - self._last < self.interval_s:
            return
        self._last = now
        # on CUDA the host runs ahead of the device by the queued kernels only, so the host's
        # rate over many steps is the device's
        rate = (self.done - 1) / max(now - self._first, 1e-9)  # steps per second
        left = (self.steps_per_epoch - self.done) / rate
        out = self.out or sys.stdout  # looked up now: the stream of the moment (pytest's, say)
        print(
            f"{self.label} epoch {self.epoch + 1}/{self.epochs}: step {self.done}/"
            f"{self.steps_per_epoch}, {rate * self.batch_size:,.0f} img/s, "
            f"{_duration(left)} left in the epoch",
            file=out,
            flush=True,
        )


def _duration(seconds: float) -> str:
    """H:MM:SS, as rich's time-remaining column shows it."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class RunProgress(Progress):
    """The run's bars, on a terminal, with the logged lines printed above them while they are
    live; off a terminal, the interval of the heartbeat lines (None: no heartbeat)."""

    def __init__(self, *columns: Any, heartbeat_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.heartbeat_s = heartbeat_s
        self._routed: list[tuple[logging.StreamHandler, IO[str]]] = []

    def start(self) -> None:
        super().start()
        if not self.disable:
            self._routed = _route_terminal_handlers(self.console)

    def stop(self) -> None:
        for handler, stream in self._routed:
            handler.setStream(stream)
        self._routed = []
        super().stop()


class _ConsoleLines:
    """A stream for a logging handler: whole lines, printed through a rich console (above its
    live bars), unwrapped by rich and with no markup read into them."""

    def __init__(self, target: Console, file: IO[str]) -> None:
        self.target = target
        self.file = file  # the handler's own stream, given back when the bars stop
        self._buffer = ""

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self.target.print(line, soft_wrap=True, markup=False, highlight=False, emoji=False)
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            self.write("\n")

    def isatty(self) -> bool:
        return True


def _loggers() -> Iterator[logging.Logger]:
    yield logging.getLogger()
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            yield logger


def _route_terminal_handlers(target: Console) -> list[tuple[logging.StreamHandler, IO[str]]]:
    """Point every logging handler that writes to a terminal at ``target``; returns the
    handlers and their streams, to give back. A handler that writes to a file or a pipe is left
    alone: its lines go where they went (``prune-run > log`` keeps the epoch lines in ``log``)."""
    routed = []
    for logger in _loggers():
        for handler in logger.handlers:
            # exactly a StreamHandler: a FileHandler (run.log) is a subclass and stays a file
            if type(handler) is not logging.StreamHandler:
                continue
            stream = handler.stream
            try:
                terminal = bool(stream.isatty())
            except (AttributeError, ValueError):  # no isatty, or a closed stream
                terminal = False
            if terminal and not isinstance(stream, _ConsoleLines):
                handler.setStream(_ConsoleLines(target, stream))
                routed.append((handler, stream))
    return routed


class ProgressBars(Callback):
    """Rich progress for the epochs and batches of one level (hidden when not on a terminal),
    or heartbeat lines where the run's progress has set an interval for them. A level's bars
    go away when its last epoch ends: one set of bars is on the screen at a time."""

    step_hooks_on_host = True  # advancing a bar is no device work: a graphed step may precede it

    def __init__(
        self,
        progress: Progress,
        level: int,
        start_epoch: int,
        num_levels: int | None = None,
        batch_size: int = 0,
    ) -> None:
        self.progress = progress
        self.level = level
        self.num_levels = num_levels
        self.start_epoch = start_epoch
        self.batch_size = batch_size
        self.epoch_task: Any = None
        self.batch_task: Any = None
        self.heartbeat: Heartbeat | None = None
        self.epochs = self.epochs_done = 0

    def on_level_start(self, model: nn.Module, steps_per_epoch: int, epochs: int) -> None:
        for task in list(self.progress.task_ids):  # an earlier level's, if it left any
            self.progress.remove_task(task)
        self.epochs, self.epochs_done = epochs, self.start_epoch
        if self.start_epoch >= epochs:  # resumed after its last epoch: nothing to show
            return
        label = f"level {self.level}{'' if self.num_levels is None else f'/{self.num_levels}'}"
        self.epoch_task = self.progress.add_task(
            f"{label} epochs", total=epochs, completed=self.start_epoch
        )
        self.batch_task = self.progress.add_task("batches", total=steps_per_epoch)
        interval = getattr(self.progress, "heartbeat_s", None)
        if interval is not None:
            self.heartbeat = Heartbeat(interval, label, steps_per_epoch, epochs, self.batch_size)
            self.heartbeat.start_epoch(self.start_epoch)

    def on_step_end(self, step: int, model: nn.Module) -> None:
        self.progress.advance(self.batch_task)
        if self.heartbeat is not None:
            self.heartbeat.step()

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        self.epochs_done += 1
        if self.epochs_done >= self.epochs:  # the level's last epoch: its bars go away
            self.progress.remove_task(self.batch_task)
            self.progress.remove_task(self.epoch_task)
            return
        self.progress.advance(self.epoch_task)
        self.progress.reset(self.batch_task)
        if self.heartbeat is not None:
            self.heartbeat.start_epoch(epoch + 1)


def make_progress(enabled: bool, heartbeat_s: float = 0.0) -> RunProgress:
    """The run's progress: bars when ``enabled`` and the console is a terminal; heartbeat lines
    every ``heartbeat_s`` seconds (0: none) when ``enabled`` and stdout is not a terminal."""
    return RunProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not (enabled and console.is_terminal),
        heartbeat_s=heartbeat_s if enabled and heartbeat_s > 0 and not _stdout_terminal() else None,
    )


def _stdout_terminal() -> bool:
    """Whether stdout is a terminal (a worker process may have none at all)."""
    try:
        return bool(sys.stdout.isatty())
    except (AttributeError, ValueError):
        return False
