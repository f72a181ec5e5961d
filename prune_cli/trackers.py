"""Experiment trackers: a run's config and its per-epoch and per-level metrics, also sent to
TensorBoard or MLflow (``logger=tensorboard``, ``logger=mlflow``; none by default).

The run directory stays the record (CSV files, ``summary.json``); a tracker is a view of it for
the tools a lab already uses, and it never holds a point twice or misses one:

- Epochs are counted through the run (:func:`running_step`): level 0's epochs are steps 1..E,
  level 1's the next ones, with no gap, and each epoch also logs its level (``epoch/level``;
  MLflow ``epoch_level``). Level results are logged at step ``level`` under ``level/<name>``.
- A resumed run continues the same tracker run: TensorBoard appends to the run's event files,
  MLflow continues the run whose id the run directory keeps (``RunPaths.mlflow_run``). What the
  tracker already holds is read back first, and only what it lacks is sent: epochs that the
  resume trains again are not logged twice, and the points of sessions without the tracker (or
  that a crash kept from the disk) are sent from the run's files.
- A completed run asked for again with a tracker is sent to it from its files
  (:func:`log_completed`), or said to be there already.
- When the run completes, TensorBoard gets the config's scalar values and the final level's
  results as hparams (its HParams dashboard), MLflow the run's summary, config, log, tables
  and figures as artifacts (the level models too with ``logger.log_models=true``), and a tag
  ``prune_run.run_dir`` naming the run directory.

Both work offline: TensorBoard writes event files under the run directory (``tensorboard/``,
or ``logger.dir``, which must be this run's own), MLflow a local file store
(``<output_root>/mlruns`` unless ``logger.tracking_uri`` names another store or a server). Only
rank 0 of a data-parallel run tracks. The packages are optional (``pip install
'prune-cli[trackers]'``); asking for a tracker whose package is missing is a one-line error when
the config is composed.
"""

from __future__ import annotations

import abc
import csv
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from prune_cli.errors import ConfigError
from prune_cli.io import load_json_mapping, save_json
from prune_cli.paths import RunPaths

#: (tag, value, step): one point of a tracker's scalar series
Point = tuple[str, float, int]

#: the files of a run sent to MLflow as artifacts, besides summary.json, config.yaml, run.log
ARTIFACT_SUFFIXES = (".csv", ".png", ".pdf", ".svg")


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


def mirror_epochs(tracker: Tracker, rows: Iterable[tuple]) -> None:
    """Send ``metrics.csv`` rows (level, epoch, split, metric, value) of epochs trained
    elsewhere (``dense_from``, the shared dense level) to ``tracker``, epoch by epoch."""
    epochs: dict[tuple[int, int], dict[str, float]] = {}
    for level, epoch, split, key, value in rows:
        if value is None:  # an empty cell: nothing was measured
            continue
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


def hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, float | str]:
    """The config's scalar values under dotted keys, as the HParams dashboard takes them:
    numbers as numbers, text and booleans as text; lists and unset (null) values left out."""
    out: dict[str, float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(hparams(value, f"{name}."))
        elif isinstance(value, bool):  # before int: a bool is an int to Python
            out[name] = str(value).lower()
        elif isinstance(value, int | float | str):
            out[name] = value
    return out


def running_step(config: Mapping[str, Any], level: int, epoch: int) -> int:
    """Epoch ``epoch`` (from 1) of ``level`` counted through the run: level 0 trains
    ``train.epochs`` epochs, each later level ``train.retrain.epochs`` (``train.epochs`` when
    unset), so every epoch has its own step and the x-axis has no gaps."""
    train = config["train"]
    dense = int(train["epochs"])
    retrain = (train.get("retrain") or {}).get("epochs")
    later = dense if retrain is None else int(retrain)
    return epoch if level == 0 else dense + (level - 1) * later + epoch


def level_values(entry: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a summary's level entry that a tracker logs (not the level itself)."""
    return {
        k: float(v)
        for k, v in entry.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "level"
    }


class Mirror(Tracker, abc.ABC):
    """What both trackers share: the running epoch count, and sending each point once.

    ``held`` is the highest step the tracker holds of each tag; a point at or below it is not
    sent again. A subclass opens its store (:meth:`open`, which reads ``held`` back), writes
    points (:meth:`write`) and closes it (:meth:`close`).
    """

    #: the prefix of per-epoch tags
    epoch_prefix = ""
    #: the per-epoch tag that says which level the epoch belongs to
    level_tag = "epoch_level"
    #: what the tracker is, for the line a completed run prints
    kind = ""

    def __init__(self, run_dir: Path) -> None:
        self.paths = RunPaths(run_dir)
        self.config: Mapping[str, Any] = {}
        self.held: dict[str, int] = {}
        #: whether the tracker already held the completed run (its hparams, its FINISHED run)
        self.complete = False
        #: points sent in this session
        self.sent = 0
        self.opened = False

    # --- what a tracker implements ----------------------------------------------------------
    @abc.abstractmethod
    def open(self, config: Mapping[str, Any], name: str, fresh: bool) -> dict[str, int]:
        """Open the tracker's run (a new one when ``fresh``); the highest step of each tag
        it already holds."""

    @abc.abstractmethod
    def write(self, points: list[Point]) -> None:
        """Send ``points`` (each a tag, a step and a value) to the tracker."""

    @abc.abstractmethod
    def close(self, status: str, completing: bool) -> None:
        """End the session; ``completing``: the run has just completed (hparams, artifacts)."""

    @abc.abstractmethod
    def where(self) -> str:
        """Where the tracker keeps the run, for the line a completed run prints."""

    # --- the hooks ------------------------------------------------------------------------------
    def start(self, config: Mapping[str, Any], name: str) -> None:
        self.config = config
        # a run directory with neither a checkpoint nor metrics is a run starting anew
        # (overwrite=true included): whatever the tracker holds there is of an earlier run
        fresh = not (self.paths.checkpoint.exists() or self.paths.metrics.exists())
        self.held = dict(self.open(config, name, fresh))
        self.opened = True
        if not fresh:
            self.catch_up()

    def catch_up(self) -> None:
        """Send what the run's files hold and the tracker lacks: a resume whose earlier
        sessions ran without this tracker, or whose last points a crash kept from the disk."""
        if self.paths.metrics.exists():
            with open(self.paths.metrics, newline="") as fh:
                rows = [
                    (r["level"], r["epoch"], r["split"], r["metric"], r["value"] or None)
                    for r in csv.DictReader(fh)
                ]
            mirror_epochs(self, rows)
        summary = load_json_mapping(self.paths.summary, "run summary")
        for entry in summary.get("levels", []):
            self.level(int(entry["level"]), level_values(entry))

    def epoch(self, level: int, epoch: int, values: Mapping[str, float]) -> None:
        step = running_step(self.config, level, epoch)
        points = [(f"{self.epoch_prefix}{k}", float(v), step) for k, v in values.items()]
        # which level the epoch belongs to, on the same axis
        self._send([*points, (self.level_tag, float(level), step)])

    def level(self, level: int, values: Mapping[str, float]) -> None:
        self._send([(f"level/{k}", float(v), level) for k, v in values.items()])

    def finish(self, status: str) -> None:
        if self.opened:
            self.close(status, completing=status == "completed" and not self.complete)

    def _send(self, points: list[Point]) -> None:
        new = [p for p in points if p[2] > self.held.get(p[0], -1) and math.isfinite(p[1])]
        if not new:
            return
        self.write(new)
        self.sent += len(new)
        for tag, _, step in new:
            self.held[tag] = step

    def final_values(self) -> dict[str, float]:
        """The last level's results, read from the summary (what hparams report)."""
        summary = load_json_mapping(self.paths.summary, "run summary")
        levels = summary.get("levels") or [{}]
        return level_values(levels[-1])


class TensorBoard(Mirror):
    epoch_prefix = "epoch/"
    level_tag = "epoch/level"
    kind = "TensorBoard"

    def __init__(self, settings: Mapping[str, Any], run_dir: Path, output_root: Path) -> None:
        super().__init__(run_dir)
        del output_root
        self.path = Path(settings.get("dir") or run_dir / "tensorboard")
        self.writer: Any = None

    def where(self) -> str:
        return f"TensorBoard ({self.path})"

    def open(self, config: Mapping[str, Any], name: str, fresh: bool) -> dict[str, int]:
        held = {} if fresh else self._read_back()
        if fresh:
            # starting anew, a session start at step 0 hides every event an earlier run of
            # this directory left (TensorBoard's own purge); a resume keeps them
            self._open_writer(purge_step=0)
            lines = "\n".join(f"    {k}: {v}" for k, v in flat(config).items())
            self.writer.add_text("config", f"run {name}\n\n{lines}", 0)
        return held

    def _open_writer(self, purge_step: int | None = None) -> Any:
        """The event file writer, opened when first needed: a completed run that is only
        checked gets no new (empty) event file."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported only when chosen

            self.writer = SummaryWriter(log_dir=str(self.path), purge_step=purge_step)
        return self.writer

    def _read_back(self) -> dict[str, int]:
        """The highest step of each scalar tag in the event files, read as TensorBoard does."""
        if not self.path.is_dir():
            return {}
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(self.path), size_guidance={"scalars": 0}).Reload()
        try:
            self.complete = "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
        except KeyError:  # no hparams yet: the run has not completed with this tracker
            self.complete = False
        return {tag: max(e.step for e in events.Scalars(tag)) for tag in events.Tags()["scalars"]}

    def write(self, points: list[Point]) -> None:
        writer = self._open_writer()
        for tag, value, step in points:
            writer.add_scalar(tag, value, step)
        # on the disk at once: a crash must not lose what the next session will not send again
        writer.flush()

    def close(self, status: str, completing: bool) -> None:
        if self.writer is None and not completing:
            return  # nothing was written in this session (a completed run, checked)
        writer = self._open_writer()
        last = max(self.held.values(), default=0)
        if completing:
            from torch.utils.tensorboard.summary import hparams as hparams_summaries

            # the metrics are the level tags already logged: the dashboard shows their last
            # value, the final level's, so no copy of them is written
            final = {f"level/{k}": v for k, v in self.final_values().items()}
            for summary in hparams_summaries(hparams(self.config), final):
                writer.file_writer.add_summary(summary, last)
        writer.add_text("status", status, last)
        writer.close()


#: MLflow's run status for each of prune-run's
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
#: the most metrics and params MLflow takes in one batch
MLFLOW_BATCH = {"metrics": 1000, "params": 100}


class MLflow(Mirror):
    # not "level": MLflow's file store keeps ``level/<name>`` in a folder of that name
    level_tag = "epoch_level"
    kind = "MLflow"

    def __init__(self, settings: Mapping[str, Any], run_dir: Path, output_root: Path) -> None:
        super().__init__(run_dir)
        uri = settings.get("tracking_uri") or (output_root / "mlruns").resolve().as_uri()
        self.uri = str(uri)
        self.experiment = str(settings.get("experiment") or "prune-run")
        self.log_models = bool(settings.get("log_models", False))
        self.client: Any = None
        self.run_id = ""

    def where(self) -> str:
        return f"MLflow run {self.run_id} ({self.uri})"

    def open(self, config: Mapping[str, Any], name: str, fresh: bool) -> dict[str, int]:
        if self.uri.startswith("file:"):
            # MLflow 3 keeps its file store for existing users only unless told otherwise; a
            # local store with no server or database is what this tracker is for
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient  # imported only when chosen

        self.client = MlflowClient(tracking_uri=self.uri)
        run = None if fresh else self._known_run()
        if run is None:
            found = self.client.get_experiment_by_name(self.experiment)
            experiment = (
                found.experiment_id if found else self.client.create_experiment(self.experiment)
            )
            self.run_id = self.client.create_run(experiment, run_name=name).info.run_id
            params = [Param(k, v[:500]) for k, v in flat(config).items()]  # MLflow's limit
            for i in range(0, len(params), MLFLOW_BATCH["params"]):
                self.client.log_batch(self.run_id, params=params[i : i + MLFLOW_BATCH["params"]])
            save_json({"run_id": self.run_id, "tracking_uri": self.uri}, self.paths.mlflow_run)
            held: dict[str, int] = {}
        else:
            self.run_id = run.info.run_id
            self.complete = run.info.status == "FINISHED"
            if not self.complete:
                self.client.update_run(self.run_id, status="RUNNING")
            held = {
                key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
                for key in run.data.metrics
            }
        # where the run's files are (set again on resume: the directory may have moved)
        self.client.set_tag(self.run_id, "prune_run.run_dir", str(self.paths.root.resolve()))
        return held

    def _known_run(self) -> Any:
        """The MLflow run that earlier sessions of this run logged to, if it is in this
        tracking store and not deleted; None otherwise (a new run is started)."""
        from mlflow.exceptions import MlflowException

        if not self.paths.mlflow_run.exists():
            return None
        record = load_json_mapping(self.paths.mlflow_run, "MLflow run record")
        if record.get("tracking_uri") != self.uri:
            return None
        try:
            run = self.client.get_run(str(record.get("run_id")))
        except MlflowException:
            return None
        return None if run.info.lifecycle_stage == "deleted" else run

    def write(self, points: list[Point]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for tag, value, step in points]
        for i in range(0, len(metrics), MLFLOW_BATCH["metrics"]):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + MLFLOW_BATCH["metrics"]])

    def artifacts(self) -> list[Path]:
        """The run's summary, config, log, tables and figures (and level models when asked);
        links are not followed, and the TensorBoard event files are not sent."""
        root = self.paths.root
        found = [self.paths.summary, self.paths.config, self.paths.log]
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_symlink() or not path.is_file() or rel.parts[0] in ("tensorboard", ".hydra"):
                continue
            if rel.parts[0] == "levels":
                if self.log_models:
                    found.append(path)
            elif path.suffix in ARTIFACT_SUFFIXES:
                found.append(path)
        return [p for p in dict.fromkeys(found) if p.is_file() and not p.is_symlink()]

    def close(self, status: str, completing: bool) -> None:
        if self.client is None or not self.run_id:
            return
        if completing:
            root = self.paths.root
            for path in self.artifacts():
                parent = path.parent.relative_to(root).as_posix()
                self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)
        if not self.complete:  # a FINISHED run that was only checked stays as it was
            self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))


#: name -> (its class, the package it needs)
TRACKERS: dict[str, tuple[Callable[..., Mirror], str]] = {
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


def log_completed(
    settings: Mapping[str, Any] | None,
    run_dir: Path,
    output_root: Path,
    config: Mapping[str, Any],
) -> str | None:
    """A completed run started again with a tracker: send the tracker what it lacks of the
    run, from the run's files, and say so in one line (returned, for the caller to print);
    None when no tracker is asked for."""
    if not settings:
        return None
    tracker = TRACKERS[settings["name"]][0](settings, run_dir, output_root)
    try:
        tracker.start(config, Path(run_dir).name)
        already = tracker.complete and tracker.sent == 0
        tracker.finish("completed")
    except OSError as exc:  # a run shown from a directory this user cannot write
        return f"{run_dir} was not sent to {tracker.kind}: {exc}"
    if already:
        return f"{run_dir} is already in {tracker.where()}"
    return f"sent {run_dir} to {tracker.where()} from its files"
