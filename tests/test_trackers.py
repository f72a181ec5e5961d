"""Experiment trackers (logger=tensorboard, logger=mlflow), read back with the libraries' own
readers (TensorBoard's EventAccumulator, MlflowClient): offline, the same points as the run's
metrics.csv on one running epoch count, hparams and artifacts when the run completes, one tracker
run across a resume, a finished run sent from its files; not part of the config hash, and a clear
error for an unknown or uninstalled one."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_config

from prune_cli.config import config_hash
from prune_cli.errors import ConfigError
from prune_cli.experiment import Experiment
from prune_cli.paths import RunPaths
from prune_cli.trackers import check, running_step
from prune_cli.training.loop import Trainer

#: level 0 trains 3 epochs, level 1 retrains 2: the running count is 1, 2, 3 then 4, 5
QUICK = [
    "model=mlp",
    "dataset.limit_train=256",
    "train.epochs=3",
    "train.retrain.epochs=2",
    "method.levels=1",
    "progress=false",
]
STEPS = [1, 2, 3, 4, 5]
LEVEL_OF_STEP = [0, 0, 0, 1, 1]
#: the part of QUICK's config that the running count depends on
TRAIN = {"train": {"epochs": 3, "retrain": {"epochs": 2}}}


def val_accuracy(run: RunPaths) -> dict[tuple[int, int], float]:
    """(level, epoch) -> validation accuracy, from the run's own metrics.csv."""
    with open(run.metrics) as fh:
        return {
            (int(r["level"]), int(r["epoch"])): float(r["value"])
            for r in csv.DictReader(fh)
            if r["split"] == "val" and r["metric"] == "accuracy"
        }


def on_running_steps(run: RunPaths) -> dict[int, float]:
    """The run's validation accuracies keyed by the step a tracker should log them at."""
    return {
        running_step(TRAIN, level, epoch): value
        for (level, epoch), value in val_accuracy(run).items()
    }


def crash_then_resume(monkeypatch, overrides: list[str], run_dir: Path) -> dict:
    """Interrupt the run in level 1's second epoch, after its first was logged but not
    checkpointed (``checkpoint_every=2``: the resume trains it again), then resume it."""
    original, calls = Trainer.train_epoch, {"n": 0}

    def crash_in_level_1(self, epoch, generator):
        calls["n"] += 1
        if calls["n"] == 5:  # level 0 trains 3 epochs: this is level 1's second
            raise KeyboardInterrupt
        return original(self, epoch, generator)

    overrides = [*overrides, "checkpoint_every=2"]
    monkeypatch.setattr(Trainer, "train_epoch", crash_in_level_1)
    with pytest.raises(KeyboardInterrupt):
        Experiment(run_config(overrides), run_dir).run()
    assert json.loads(RunPaths(run_dir).summary.read_text())["status"] == "interrupted"
    monkeypatch.setattr(Trainer, "train_epoch", original)
    return Experiment(run_config(overrides), run_dir).run()


def tensorboard_events(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(path), size_guidance={"scalars": 0}).Reload()


def session_hparams(events) -> dict:
    """The hparams of the session start the HParams dashboard reads, as Python values."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = HParamsPluginData.FromString(content).session_start_info
    return {
        k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
        for k, v in start.hparams.items()
    }


def experiment_metrics(events) -> set[str]:
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = events.PluginTagToContent("hparams")["_hparams_/experiment"]
    return {m.name.tag for m in HParamsPluginData.FromString(content).experiment.metric_infos}


def mlflow_runs(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(root / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("prune-run")
    return client, client.search_runs([experiment.experiment_id]) if experiment else []


def printed(capsys) -> str:
    """What the run printed, its lines joined again where the console wrapped them."""
    return " ".join(capsys.readouterr().err.split())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A completed 2-level run made without any tracker (the finished-run cases copy it)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    Experiment(run_config(QUICK), run_dir).run()
    return run_dir


def test_a_tracker_is_not_part_of_the_result_and_is_checked_when_composed(monkeypatch):
    assert config_hash(run_config(["logger=tensorboard"])) == config_hash(run_config([]))
    assert run_config([]).logger is None
    with pytest.raises(ConfigError, match="unknown logger 'wandb'"):
        check({"name": "wandb"})
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'prune-cli\[trackers\]'"):
        check({"name": "mlflow"})


def test_the_running_epoch_count_has_no_gaps():
    config = {"train": {"epochs": 3, "retrain": {"epochs": 2}}}
    steps = [
        running_step(config, lv, ep) for lv, n in [(0, 3), (1, 2), (2, 2)] for ep in range(1, n + 1)
    ]
    assert steps == list(range(1, 8))
    unset = {"train": {"epochs": 4, "retrain": {"epochs": None}}}  # retrain as level 0
    assert [running_step(unset, 2, 1), running_step(unset, 1, 4)] == [9, 8]


def test_tensorboard_resumed_run_has_every_epoch_once_on_one_axis_and_hparams(
    tmp_path, monkeypatch
):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    summary = crash_then_resume(monkeypatch, [*QUICK, "logger=tensorboard"], run_dir)
    events = tensorboard_events(run_dir / "tensorboard")
    accuracy = events.Scalars("epoch/val_accuracy")
    # every epoch once (the one trained again after the resume is not logged twice), no gaps
    assert [e.step for e in accuracy] == STEPS
    assert {e.step: e.value for e in accuracy} == pytest.approx(
        on_running_steps(RunPaths(run_dir))
    )  # float32 in the event file
    assert [e.value for e in events.Scalars("epoch/level")] == LEVEL_OF_STEP
    levels = {e.step: e.value for e in events.Scalars("level/test_accuracy")}
    assert levels == pytest.approx({k["level"]: k["test_accuracy"] for k in summary["levels"]})
    hparams = session_hparams(events)
    assert hparams["model.name"] == "mlp" and hparams["train.epochs"] == 3
    assert hparams["train.retrain.epochs"] == 2 and hparams["progress"] == "false"
    assert {"level/test_accuracy", "level/sparsity"} <= experiment_metrics(events)


def test_mlflow_resumed_run_is_one_run_with_every_point_and_its_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    run_dir = tmp_path / "run"
    overrides = [*QUICK, "logger=mlflow", f"output_root={tmp_path}"]
    crash_then_resume(monkeypatch, overrides, run_dir)
    client, runs = mlflow_runs(tmp_path)
    (run,) = runs  # the resume continued the interrupted session's run
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert json.loads(RunPaths(run_dir).mlflow_run.read_text())["run_id"] == run.info.run_id
    assert run.data.tags["prune_run.run_dir"] == str(run_dir.resolve())
    assert run.data.params["model.name"] == "mlp" and run.data.params["train.epochs"] == "3"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == STEPS  # each once
    assert {m.step: m.value for m in history} == pytest.approx(on_running_steps(RunPaths(run_dir)))
    level = sorted(client.get_metric_history(run.info.run_id, "epoch_level"), key=lambda m: m.step)
    assert [m.value for m in level] == LEVEL_OF_STEP
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.yaml", "metrics.csv", "sparsity.csv", "run.log"} <= artifacts
    assert "levels" not in artifacts  # models only with logger.log_models=true
    sent = Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path)))
    assert json.loads(sent.read_text())["status"] == "completed"  # the final summary


def test_a_finished_run_is_sent_to_a_tracker_from_its_files(finished, tmp_path, capsys):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    paths = RunPaths(run_dir)
    mlflow = [*QUICK, "logger=mlflow", f"output_root={tmp_path}", "logger.log_models=true"]
    Experiment(run_config(mlflow), run_dir).run()
    assert "from its files" in printed(capsys)
    client, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert {m.step: m.value for m in history} == pytest.approx(on_running_steps(paths))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.yaml", "metrics.csv", "levels"} <= artifacts
    models = {a.path for a in client.list_artifacts(run.info.run_id, "levels/level_1")}
    assert "levels/level_1/model.pt" in models

    # asked again: nothing is sent twice, and the run says where it already is
    Experiment(run_config(mlflow), run_dir).run()
    assert f"is already in MLflow run {run.info.run_id}" in printed(capsys)
    _, (again,) = mlflow_runs(tmp_path)
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == len(STEPS)
    assert len(client.list_artifacts(again.info.run_id)) == len(artifacts)

    Experiment(run_config([*QUICK, "logger=tensorboard"]), run_dir).run()
    events = tensorboard_events(run_dir / "tensorboard")
    assert [e.step for e in events.Scalars("epoch/val_accuracy")] == STEPS
    assert session_hparams(events)["model.name"] == "mlp"
    files = sorted((run_dir / "tensorboard").iterdir())
    Experiment(run_config([*QUICK, "logger=tensorboard"]), run_dir).run()
    assert "is already in TensorBoard" in printed(capsys)
    assert sorted((run_dir / "tensorboard").iterdir()) == files  # no new event file
