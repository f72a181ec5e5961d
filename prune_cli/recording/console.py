"""What a person sees: the config tree at start, progress bars, and the results table."""

from __future__ import annotations

from typing import Any

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
    table = results_table(summary)
    if where is not None:
        table.caption = str(where)
    console.print(table)
    for lv in summary.get("levels", []):
        flag, details = level_flags(lv)
        if details:
            console.print(
                f"level {lv['level']}{f' {flag}' if flag else ''}: " + "; ".join(details),
                soft_wrap=True,
            )


def show_overrides(config_hash: str, overrides: list[str]) -> None:
    """One line at the start of a run: its hash and overrides (the full config: config.yaml)."""
    console.print(f"prune-run {config_hash}: {' '.join(overrides) or '(defaults)'}")


class ProgressBars(Callback):
    """Rich progress for the epochs and batches of one level (hidden when not on a terminal)."""

    step_hooks_on_host = True  # advancing a bar is no device work: a graphed step may precede it

    def __init__(
        self, progress: Progress, level: int, start_epoch: int, num_levels: int | None = None
    ) -> None:
        self.progress = progress
        self.level = level
        self.num_levels = num_levels
        self.start_epoch = start_epoch
        self.epoch_task: Any = None
        self.batch_task: Any = None

    def on_level_start(self, model: nn.Module, steps_per_epoch: int, epochs: int) -> None:
        self.epoch_task = self.progress.add_task(
            f"level {self.level}{'' if self.num_levels is None else f'/{self.num_levels}'} epochs",
            total=epochs,
            completed=self.start_epoch,
        )
        self.batch_task = self.progress.add_task("batches", total=steps_per_epoch)

    def on_step_end(self, step: int, model: nn.Module) -> None:
        self.progress.advance(self.batch_task)

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        self.progress.advance(self.epoch_task)
        self.progress.reset(self.batch_task)


def make_progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not (enabled and console.is_terminal),
    )
