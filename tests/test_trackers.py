"""Experiment trackers (logger=tensorboard, logger=mlflow): offline, the same metrics as the run's
files, not part of the config hash, and a clear error for an unknown or uninstalled one."""

from __future__ import annotations

import csv
import importlib.util

import pytest
from conftest import run_config

from prune_cli.config import config_hash
from prune_cli.errors import ConfigError
from prune_cli.experiment import Experiment
from prune_cli.paths import RunPaths
from prune_cli.trackers import LEVEL_STRIDE, check

QUICK = [
    "model=mlp",
    "dataset.limit_train=256",
    "train.epochs=2",
    "method.levels=1",
    "progress=false",
]


def val_accuracy(run: RunPaths) -> dict[int, float]:
    """``1000 * level + epoch`` -> validation accuracy, from the run's own metrics.csv."""
    with open(run.metrics) as fh:
        return {
            LEVEL_STRIDE * int(r["level"]) + int(r["epoch"]): float(r["value"])
            for r in csv.DictReader(fh)
            if r["split"] == "val" and r["metric"] == "accuracy"
        }


def test_a_tracker_is_not_part_of_the_result_and_is_checked_when_composed(monkeypatch):
    assert config_hash(run_config(["logger=tensorboard"])) == config_hash(run_config([]))
    assert run_config([]).logger is None
    with pytest.raises(ConfigError, match="unknown logger 'wandb'"):
        check({"name": "wandb"})
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'prune-cli\[trackers\]'"):
        check({"name": "mlflow"})


def test_tensorboard_holds_the_runs_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = Experiment(run_config([*QUICK, "logger=tensorboard"]), tmp_path).run()
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    logged = {e.step: e.value for e in events.Scalars("epoch/val_accuracy")}
    expected = val_accuracy(RunPaths(tmp_path))
    assert sorted(logged) == [1, 2, 1001, 1002] == sorted(expected)
    assert logged == pytest.approx(expected)  # float32 in the event file
    levels = {e.step: e.value for e in events.Scalars("level/test_accuracy")}
    assert levels == pytest.approx({k["level"]: k["test_accuracy"] for k in summary["levels"]})


def test_mlflow_holds_the_runs_metrics_config_and_status(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    overrides = [*QUICK, "logger=mlflow", f"output_root={tmp_path}"]
    Experiment(run_config(overrides), tmp_path / "run").run()
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("prune-run").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["model.name"] == "mlp" and run.data.params["train.epochs"] == "2"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert {m.step: m.value for m in history} == pytest.approx(
        val_accuracy(RunPaths(tmp_path / "run"))
    )
