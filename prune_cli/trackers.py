"""Experiment trackers: a run's config and its per-epoch and per-level metrics, also sent to
TensorBoard or MLflow (``logger=tensorboard``, ``logger=mlflow``; none by default).

The run directory stays the record (CSV files, ``summary.json``); a tracker is a view for the
tools a lab already uses. Both work offline: TensorBoard writes event files under the run
directory (``tensorboard/``), MLflow a local file store (``<output_root>/mlruns`` unless
``logger.tracking_uri`` names another store or a server). Metrics are logged at step
``1000 * level + epoch`` (epochs of level k at 1000k + 1, ...) and, per level, at step ``level``
under ``level/<name>``. Only rank 0 of a data-parallel run tracks. The packages are optional
(``pip install 'prune-cli[trackers]'``); asking for a tracker whose package is missing is a
one-line error when the config is composed.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prune_cli.errors import ConfigError

#: step of epoch e of level k: levels apart, epochs in order (a level has fewer than 1000)
LEVEL_STRIDE = 1000


class Tracker:
    """Receives a run's config and metrics; the base class ignores them (no tracker)."""

    def start(self, config: Mapping[str, Any], name: str) -> None:
        """Once, when the run (or a resumed session of it) starts."""

    def epoch(self, level: int, epoch: int, values: Mapping[str, float]) -> None:
        """After each training epoch: ``train_loss``, ``val_accuracy``, ``train_lr`` ..."""

    def level(self, level: int, values: Mapping[str, float]) -> None:
        """When a level is finished: its sparsity, accuracies, PQI ..."""

    def finish(self, status: str) -> None:
        """Once, when the session ends: ``completed``, ``failed`` or ``interrupted``."""


def mirror_epochs(tracker: Tracker, rows: list) -> None:
    """Send ``metrics.csv`` rows (level, epoch, split, metric, value) of epochs trained
    elsewhere (``dense_from``, the shared dense level) to ``tracker``, epoch by epoch."""
    epochs: dict[tuple[int, int], dict[str, float]] = {}
    for level, epoch, split, key, value in rows:
        epochs.setdefault((int(level), int(epoch)), {})[f"{split}_{key}"] = float(value)
    for (level, epoch), values in sorted(epochs.items()):
        tracker.epoch(level, epoch, values)


def flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train.lr": "0.05", ...}``: a nested config as dotted keys and text values."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return out


class TensorBoard(Tracker):
    def __init__(self, settings: Mapping[str, Any], run_dir: Path, output_root: Path) -> None:
        del output_root
        self.path = Path(settings.get("dir") or run_dir / "tensorboard")
        self.writer: Any = None

    def start(self, config: Mapping[str, Any], name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported only when chosen

        self.writer = SummaryWriter(log_dir=str(self.path))
        lines = "\n".join(f"    {k}: {v}" for k, v in flat(config).items())
        self.writer.add_text("config", f"run {name}\n\n{lines}")

    def epoch(self, level: int, epoch: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"epoch/{key}", value, LEVEL_STRIDE * level + epoch)

    def level(self, level: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"level/{key}", value, level)
        self.writer.flush()

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.add_text("status", status)
            self.writer.close()


#: MLflow's run status for each of prune-run's
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


class MLflow(Tracker):
    def __init__(self, settings: Mapping[str, Any], run_dir: Path, output_root: Path) -> None:
        del run_dir
        uri = settings.get("tracking_uri") or (output_root / "mlruns").resolve().as_uri()
        self.uri = str(uri)
        self.experiment = str(settings.get("experiment") or "prune-run")
        self.client: Any = None
        self.run_id = ""

    def start(self, config: Mapping[str, Any], name: str) -> None:
        if self.uri.startswith("file:"):
            # MLflow 3 keeps its file store for existing users only unless told otherwise; a
            # local store with no server or database is what this tracker is for
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient  # imported only when chosen

        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(self.experiment)
        experiment = (
            found.experiment_id if found else self.client.create_experiment(self.experiment)
        )
        self.run_id = self.client.create_run(experiment, run_name=name).info.run_id
        for key, value in flat(config).items():
            self.client.log_param(self.run_id, key, value[:500])  # MLflow's length limit

    def epoch(self, level: int, epoch: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key, value, step=LEVEL_STRIDE * level + epoch)

    def level(self, level: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, f"level/{key}", value, step=level)

    def finish(self, status: str) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))


#: name -> (its class, the package it needs)
TRACKERS: dict[str, tuple[Callable[..., Tracker], str]] = {
    "tensorboard": (TensorBoard, "tensorboard"),
    "mlflow": (MLflow, "mlflow"),
}


def check(settings: Mapping[str, Any] | None) -> None:
    """Refuse an unknown tracker, or one whose package is not installed, at composition."""
    if not settings:
        return
    name = settings.get("name")
    if name not in TRACKERS:
        raise ConfigError(f"unknown logger {name!r}; choose from {', '.join(TRACKERS)}")
    package = TRACKERS[name][1]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"logger={name} needs the {package} package: pip install 'prune-cli[trackers]'"
        )


def build(settings: Mapping[str, Any] | None, run_dir: Path, output_root: Path) -> Tracker:
    """The tracker the config asks for (``Tracker()``, which ignores everything, when none)."""
    if not settings:
        return Tracker()
    return TRACKERS[settings["name"]][0](settings, run_dir, output_root)
