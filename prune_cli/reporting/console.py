"""What a person sees: the config tree at start, progress bars, and the results table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from torch import nn

from prune_cli.callbacks import Callback

console = Console(stderr=True)


def results_table(summary: dict[str, Any]) -> Table:
    title = (
        f"{summary.get('method')} / {summary.get('model')} / {summary.get('dataset')} "
        f"seed {summary.get('seed')} - {summary.get('status')}"
    )
    table = Table(title=title)
    for col in ("level", "sparsity", "nonzero", "val acc", "test acc", "pruned acc", "PQI"):
        table.add_column(col, justify="right")

    def pct(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    for lv in summary.get("levels", []):
        pqi = lv.get("pqi")
        table.add_row(
            str(lv["level"]),
            pct(lv["sparsity"]),
            f"{lv['params_nonzero']:,}",
            pct(lv.get("val_accuracy")),
            pct(lv.get("test_accuracy")),
            pct(lv.get("pruned_test_accuracy")),
            "-" if pqi is None else f"{pqi:.4f}",
        )
    return table


def show_results(summary: dict[str, Any], where: Any = None) -> None:
    table = results_table(summary)
    if where is not None:
        table.caption = str(where)
    console.print(table)


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
