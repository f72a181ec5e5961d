"""End to end: the ``prune-run`` command, its output files, bad input, resuming, overwriting."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from conftest import FAST, run_cli, run_config

from prune_cli.config import group_options
from prune_cli.experiment import Experiment
from prune_cli.paths import RunPaths
from prune_cli.training.loop import Trainer

pytestmark = pytest.mark.slow


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_a_run_writes_every_result_file(tmp_path, cli_in_process):
    run = tmp_path / "run"
    result = run_cli(
        [*FAST, "method.levels=2", "method.sparsity=0.75", f"hydra.run.dir={run}"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    paths = RunPaths(run)
    summary = json.loads(paths.summary.read_text())
    assert summary["status"] == "completed"
    for key in (
        "config_hash",
        "model",
        "dataset",
        "method",
        "seed",
        "params_total",
        "params_prunable",
        "wall_time_s",
        "versions",
        "device",
        "threads",
    ):
        assert key in summary
    assert summary["versions"]["torch"] == torch.__version__
    assert [lv["level"] for lv in summary["levels"]] == [0, 1, 2]
    for lv in summary["levels"]:
        for key in ("sparsity", "params_nonzero", "val_accuracy", "test_accuracy", "test_loss"):
            assert lv[key] is not None
    # exact sparsity: the geometric schedule reaches 75% of the prunable weights at level 2
    prunable = summary["params_prunable"]
    assert summary["levels"][2]["sparsity"] == pytest.approx(round(0.75 * prunable) / prunable)
    assert summary["levels"][1]["sparsity"] == pytest.approx(
        round(0.5 * prunable) / prunable, abs=1 / prunable
    )

    metrics = read_csv(paths.metrics)
    assert list(metrics[0]) == ["level", "epoch", "split", "metric", "value"]
    assert {(r["split"], r["metric"]) for r in metrics} >= {
        ("train", "loss"),
        ("train", "accuracy"),
        ("val", "loss"),
        ("val", "accuracy"),
    }
    recall = read_csv(paths.per_class_recall)
    assert list(recall[0]) == ["level", "stage", "class", "class_name", "support", "recall"]
    stages = {(r["level"], r["stage"]) for r in recall}
    assert stages == {
        ("0", "trained"),
        ("1", "pruned"),
        ("1", "trained"),
        ("2", "pruned"),
        ("2", "trained"),
    }
    pqi = read_csv(paths.pqi)
    assert list(pqi[0]) == ["level", "stage", "scope", "name", "p", "q", "pqi"]
    assert {(r["p"], r["q"]) for r in pqi} == {("0.5", "1.0"), ("1.0", "2.0")}
    assert {r["scope"] for r in pqi} == {"global", "layer"}
    for lv in summary["levels"]:  # the summary's PQI is the trained model's global (0.5, 1)
        (row,) = [
            r
            for r in pqi
            if (r["level"], r["stage"], r["scope"], r["p"])
            == (str(lv["level"]), "trained", "global", "0.5")
        ]
        assert lv["pqi"] == pytest.approx(float(row["pqi"]))
    sparsity = read_csv(paths.sparsity)
    assert list(sparsity[0]) == ["level", "name", "numel", "nonzero", "sparsity"]
    level2 = [r for r in sparsity if r["level"] == "2"]
    assert sum(int(r["numel"]) - int(r["nonzero"]) for r in level2) == round(0.75 * prunable)
    distortion = read_csv(paths.recall_distortion)
    assert list(distortion[0]) == [
        "level",
        "class",
        "recall_dense",
        "recall",
        "balance_dense",
        "balance",
        "intensification",
    ]
    assert {r["level"] for r in distortion} == {"1", "2"} and len(distortion) == 20
    assert summary["levels"][0]["alpha"] is None
    assert all(isinstance(lv["alpha"], float) for lv in summary["levels"][1:])
    for k in range(3):
        state = torch.load(paths.level_model(k), weights_only=False)
        assert state["config"]["method"]["name"] == "magnitude"
        mask = torch.load(paths.level_mask(k))
        assert set(mask) == {r["name"] for r in level2}
    assert (run / ".hydra" / "config.yaml").exists() and paths.config.exists()
    assert not paths.checkpoint.exists()
    assert "level" in result.stderr and "test acc" in result.stderr  # the results table

    # a completed run is shown, not retrained (the same command again, in this process)
    before = paths.summary.stat().st_mtime_ns
    again = cli_in_process(
        [*FAST, "method.levels=2", "method.sparsity=0.75", f"hydra.run.dir={run}"], cwd=tmp_path
    )
    assert again.returncode == 0 and "is complete" in again.stderr
    assert paths.summary.stat().st_mtime_ns == before

    # another config in the same directory is refused; overwrite=true replaces it
    other = cli_in_process([*FAST, "method.levels=1", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert other.returncode == 2 and "overwrite=true" in other.stderr
    assert paths.summary.stat().st_mtime_ns == before
    replaced = cli_in_process(
        [*FAST, "method.levels=1", "overwrite=true", f"hydra.run.dir={run}"], cwd=tmp_path
    )
    assert replaced.returncode == 0, replaced.stderr
    assert len(json.loads(paths.summary.read_text())["levels"]) == 2
    assert not paths.level_dir(2).exists()


def test_bare_prune_run_is_the_demonstration(tmp_path):
    """README's first command: dense training, at least two pruning levels, fine-tuning."""
    run = tmp_path / "demo"
    result = run_cli([f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(RunPaths(run).summary.read_text())
    assert (summary["dataset"], summary["status"]) == ("digits", "completed")
    levels = summary["levels"]
    assert len(levels) >= 3 and levels[-1]["sparsity"] > levels[1]["sparsity"] > 0
    assert levels[0]["test_accuracy"] > 0.9 and levels[-1]["test_accuracy"] > 0.9


def test_the_demonstration_does_not_import_libraries_it_does_not_use(tmp_path):
    """Start-up (issue 14): each of these costs 0.3-2 s of a 15 s demo before its first step,
    and the demo on the bundled digits uses none of them."""
    code = (
        "import sys; from prune_cli import cli; sys.argv = ['prune-run', *sys.argv[1:]]; "
        "cli.main(); print('MODULES', *sorted({m.split('.')[0] for m in sys.modules}))"
    )
    args = ["train.epochs=1", "progress=false", f"hydra.run.dir={tmp_path / 'r'}"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("MODULES "))
    loaded = set(line.split()[1:])
    assert "torch" in loaded and "hydra" in loaded  # the check sees what was imported
    assert not {"sklearn", "scipy", "torchvision", "pandas", "matplotlib"} & loaded


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=resnet57"], "valid models:"),
        (["dataset=imagenette"], "valid datasets:"),
        (["method=nosuch"], "valid methods:"),
        (["method.sparsity=1.5"], "method.sparsity must be in [0, 1)"),
        (["train.epochs=-1"], "train.epochs must be >= 0"),
        (["pqi_grid=[[2.0,1.0]]"], "0 < p < q"),
        (["method.sparsty=0.5"], "sparsty"),
        (["dataset=mnist", "dataset.root=/nonexistent"], "idx files not found"),
        (["dataset.val_size=0"], "train.select=val_accuracy needs a validation split"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message, cli_in_process):
    result = cli_in_process(
        [*args, "progress=false", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path
    )
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_nan_loss_marks_the_run_failed(tmp_path):
    """In a real process: a run that fails ends with exit 1 once its files are written."""
    run = tmp_path / "run"
    result = run_cli([*FAST, "train.lr=1e30", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 1
    summary = json.loads(RunPaths(run).summary.read_text())
    assert summary["status"] == "failed" and "loss became" in summary["reason"]
    assert summary["reason"].startswith("level 0:") and "epoch 1" in summary["reason"]


RESUME_CASES = {
    # level 0 has 3 epochs: the 5th epoch is level 1's second; the 4th is its first, right
    # after pruning (DNS keeps its dense weights in the method's state)
    "magnitude": (["method.levels=2", "method.rewind=1ep"], 5),
    # checkpoints every 2 epochs: the crash in level 1's second epoch resumes from the end of
    # level 0 (the level end always checkpoints) and repeats level 1's first epoch
    "every-2-epochs": (["method.levels=2", "method.rewind=1ep", "checkpoint_every=2"], 5),
    "dns": (["method=dns", "method.c_rate=0.5"], 4),
    # SequentialAttention++ on 3 epochs: phases at 30-70% of the steps, so the crash in the
    # second epoch lands in the middle of the sparsify/sparse cycles (optimizer resets included)
    "sapp": (["method=sapp", "method.min_blocks=1", "method.sparsity=0.5"], 2),
    # filter pruning rounds after epochs 1 and 2; the crash comes in epoch 3, after a resume the
    # pruned channels' biases must stay at zero
    "filter": (
        [
            "method=filter",
            "method.rounds=2",
            "method.samples=64",
            "method.latency_repeats=1",
            "method.latency_batch=4",
        ],
        3,
    ),
    # the methods that prune while training: the crash lands in the middle of their schedule
    # (ACDC between a sparse and a dense phase, GMP between two prunes, gRDA with its
    # accumulated gradients and step count, the limit run in its L1-regularised training)
    "acdc": (["method=acdc", "method.phases=[0.5,1,1.5,2,2.5]"], 2),
    "gmp": (["method=gmp", "method.start_epoch=0", "method.end_epoch=3", "method.frequency=2"], 2),
    "grda": (["method=grda"], 2),
    "limit": (
        [
            "method=limit",
            "method.grid=20",
            "method.hessian_samples=32",
            "method.lanczos_iter=8",
            "method.probes=1",
        ],
        2,
    ),
    # iterative methods: the crash in level 1's second epoch (SAP's next rate depends on the
    # PQ index of the weights it rewound from; LT and OS rewind to the initialisation)
    "sap": (["method=sap", "method.levels=2"], 5),
    "lt": (["method=lt", "method.levels=2"], 5),
    "os": (["method=os", "method.levels=2"], 5),
    "random": (["method=random", "method.levels=2"], 5),
    "flow": (
        ["method=flow", "method.measure=grasp", "method.samples=64", "method.levels=2"],
        5,
    ),
    # one level after dense training: the crash in the first epoch after pruning (the scores
    # came from gradients, the search from a metric search, neither run again on resume)
    "undecayed": (["method=undecayed", "method.grad_batches=2"], 4),
    "gradient": (["method=gradient", "method.grad_batches=2"], 4),
    "block_magnitude": (["method=block_magnitude", "method.min_blocks=1"], 4),
    "crossword": (["method=crossword", "method.budget=20", "method.accuracy_sample=4"], 4),
}


def test_every_method_has_a_resume_case():
    methods = {run_config(extra).method.name for extra, _ in RESUME_CASES.values()}
    assert methods == set(group_options("method"))


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch, case):
    extra, crash_at = RESUME_CASES[case]
    overrides = [
        "model=mlp",
        "train.epochs=3",
        "train.retrain.epochs=2",
        "progress=false",
        "seed=3",
        *extra,
    ]
    cfg = run_config(overrides)
    reference = Experiment(cfg, tmp_path / "straight").run()

    original = Trainer.train_epoch
    calls = {"n": 0}

    def crash_in_level_1(self, epoch, generator):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt
        return original(self, epoch, generator)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_level_1)
    with pytest.raises(KeyboardInterrupt):
        Experiment(run_config(overrides), tmp_path / "crashed").run()
    crashed = RunPaths(tmp_path / "crashed")
    assert json.loads(crashed.summary.read_text())["status"] == "interrupted"
    assert crashed.checkpoint.exists()
    checkpoint = torch.load(crashed.checkpoint, weights_only=False)
    assert checkpoint["config"]["method"]["name"] == cfg.method.name  # checkpoints carry config
    # only the level in progress travels in the checkpoint: earlier levels' rows are in the files
    level, records = checkpoint["cursor"]["level"], checkpoint["records"]
    assert all(r[0] == level for rows in records["tail"].values() for r in rows)
    if level > 0:
        assert records["offset"]["metrics"] > 0 and records["offset"]["recall"] > 0
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = Experiment(run_config(overrides), tmp_path / "crashed").run()

    assert resumed["status"] == "completed"
    keys = (
        "sparsity",
        "params_nonzero",
        "val_accuracy",
        "test_accuracy",
        "test_loss",
        "pruned_test_accuracy",
        "pqi",
    )
    for a, b in zip(reference["levels"], resumed["levels"], strict=True):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    straight = RunPaths(tmp_path / "straight")
    for name in ("metrics", "per_class_recall", "pqi", "gini", "sparsity", "recall_distortion"):
        assert getattr(straight, name).read_text() == getattr(crashed, name).read_text()


def test_a_failed_job_does_not_stop_a_sweep(tmp_path, cli_in_process):
    sweep = tmp_path / "sweep"
    result = cli_in_process(
        [
            "-m",
            "model=mlp",
            "train.epochs=1",
            "method.levels=1",
            "train.lr=1e30,0.05",
            "progress=false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "1 job(s) of the sweep failed" in result.stderr
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json"))
    assert statuses == ["completed", "failed"]


def test_a_wheel_install_carries_the_configs_and_runs(tmp_path):
    """`pip install .` (not editable) must work: the wheel ships prune_cli/conf."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("setuptools")
    root = Path(__file__).resolve().parents[1]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), root],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("prune_cli-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k != "PRUNE_RUN_CONF"}
    env["PYTHONPATH"] = str(site)
    where = subprocess.run(
        [sys.executable, "-c", "import prune_cli, prune_cli.config as c; print(c.CONF_DIR)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(site)), where.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "prune_cli.cli",
            *FAST,
            "method.levels=1",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
