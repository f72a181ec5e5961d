"""Automatic dense sharing (issue 24): one trained dense level per model, data, training and seed.

End-to-end: a sweep trains its dense level once and ends with the results an unshared sweep
has; two jobs started together train it once (one waits); a dense training killed mid-way is
resumed by the next job. Units: the lock's stale rules, and which methods may share.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_config, prune_context, run_cli, run_config

from prune_cli import shared_dense
from prune_cli.config import group_options
from prune_cli.data import build_dataset
from prune_cli.distributed import World
from prune_cli.experiment import Experiment
from prune_cli.identity import result_settings
from prune_cli.io import load_torch
from prune_cli.models import build_model
from prune_cli.paths import RunPaths, shared_dense_lock, shared_dense_marker
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS
from prune_cli.shared_dense import DenseLock, Holder, stale_reason

TABLES = ("metrics", "per_class_recall", "pqi", "gini", "sparsity", "recall_distortion")
#: summary fields that say when, where and with what a run ran, not what it found
NOT_RESULTS = ("wall_time_s", "versions", "files", "dense_shared")
SWEEP = [
    "-m",
    "method=magnitude,random",
    "method.sparsity=0.5,0.8",
    "seed=0",
    "model=mlp",
    "train.epochs=2",
    "progress=false",
]


def level0_epochs(root: Path) -> int:
    """How many level-0 epochs were trained under ``root`` (one log line each)."""
    return sum(
        line.count("level 0/")
        for log in root.rglob("run.log")
        for line in log.read_text().splitlines()
        if " epoch " in line
    )


def run_dirs(root: Path) -> dict[str, Path]:
    """The run directories under ``root`` but the shared dense ones, by name."""
    return {p.parent.name: p.parent for p in root.rglob("summary.json") if "dense" not in p.parts}


def assert_same_results(a: Path, b: Path) -> None:
    """Every result file of run ``a`` equals that of run ``b``, timing and provenance aside."""
    pa, pb = RunPaths(a), RunPaths(b)
    for table in TABLES:
        assert getattr(pa, table).read_text() == getattr(pb, table).read_text(), table
    sa, sb = (json.loads(p.summary.read_text()) for p in (pa, pb))
    assert sa["status"] == "completed"
    assert results_of(sa) == results_of(sb)
    assert result_settings(_yaml(pa.config)) == result_settings(_yaml(pb.config))
    assert sorted(sa["files"]) == sorted(sb["files"])
    for name in ("init.pt", *sa["files"]):
        x, y = load_torch(a / name), load_torch(b / name)
        if isinstance(x, dict) and "config" in x:  # a level file carries its run's config
            assert result_settings(x.pop("config")) == result_settings(y.pop("config"))
        assert_equal_states(x, y, name)


def results_of(summary: dict) -> dict:
    """A summary without what says when, where and with what it ran (a measured latency)."""
    out = {k: v for k, v in summary.items() if k not in NOT_RESULTS}
    if isinstance(out.get("method_info"), dict):
        out["method_info"] = {k: v for k, v in out["method_info"].items() if "latency" not in k}
    return out


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def assert_equal_states(x: object, y: object, where: str) -> None:
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and torch.equal(x, y), where
    elif isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), where
        for k in x:
            assert_equal_states(x[k], y[k], f"{where}:{k}")
    else:
        assert x == y, where


# --- a sweep: the dense level trained once, the results unchanged ------------------------------
@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """The issue's 2 methods x 2 sparsities x 1 seed sweep, with and without sharing."""
    out = {}
    for share in (True, False):
        root = tmp_path_factory.mktemp(f"share-{share}")
        result = run_cli(
            [
                *SWEEP,
                f"share_dense={str(share).lower()}",
                f"output_root={root}",
                f"hydra.sweep.dir={root / 'sweep'}",
            ],
            cwd=root,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        out[share] = root
    return out


@pytest.mark.slow
def test_a_sweep_trains_its_dense_level_once(sweeps):
    shared, unshared = sweeps[True], sweeps[False]
    assert len(list((shared / "dense").iterdir())) == 1
    assert not (unshared / "dense").exists()
    assert level0_epochs(shared) == 2  # train.epochs=2, once
    assert level0_epochs(unshared) == 4 * 2
    dense = next((shared / "dense").iterdir())
    assert "level 0 done" in (dense / "run.log").read_text()
    for run in run_dirs(shared / "sweep").values():
        summary = json.loads(RunPaths(run).summary.read_text())
        assert summary["dense_shared"] == str(dense)
        assert summary["levels"][0]["selected_epoch"] == 2
        # the level is the dense run's: said once as done (there), here where it came from
        text = (run / "run.log").read_text()
        assert "level 0 done" not in text and f"level 0 from {dense}:" in text


@pytest.mark.slow
def test_shared_and_unshared_sweeps_have_the_same_results(sweeps):
    shared, unshared = run_dirs(sweeps[True] / "sweep"), run_dirs(sweeps[False] / "sweep")
    assert len(shared) == 4 and shared.keys() == unshared.keys()  # the same names: same hashes
    for name in shared:
        assert_same_results(shared[name], unshared[name])


@pytest.mark.slow
def test_a_report_of_the_whole_output_root_leaves_the_shared_dense_run_out(sweeps):
    from prune_cli.reporting.runs import find_runs

    root = sweeps[True]
    dense = next((root / "dense").iterdir())
    assert shared_dense_marker(dense).is_file()
    # the four sweep jobs, not a fifth "dense" run whose level 0 they all already hold
    assert sorted(find_runs([root])) == sorted(run_dirs(root / "sweep").values())
    assert find_runs([dense]) == [dense]  # named by itself, it is a run like any other


# --- several jobs at once ------------------------------------------------------------------------
def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "prune_cli.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_two_jobs_needing_one_dense_model_train_it_once(tmp_path):
    # a dense training long enough (30 epochs) that the job started with it finds it under way
    base = [
        "model=mlp",
        "train.epochs=30",
        "train.retrain.epochs=1",
        "method.levels=1",
        "progress=false",
        f"output_root={tmp_path / 'out'}",
    ]
    jobs = [start([*base, f"method={m}"], tmp_path) for m in ("magnitude", "random")]
    outputs = [job.communicate(timeout=240)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    waited = [o for o in outputs if "waiting for the dense model of" in o]
    trained = [o for o in outputs if "training the shared dense model" in o]
    assert len(waited) == 1 and len(trained) == 1 and waited != trained
    assert f"by {socket.gethostname()}:" in waited[0]
    assert level0_epochs(tmp_path / "out") == 30
    assert len(list((tmp_path / "out" / "dense").iterdir())) == 1


@pytest.mark.slow
def test_a_killed_dense_training_is_resumed_by_the_next_job(tmp_path, cli_in_process):
    # killed after its first of 20 epochs: far from the end, whatever the machine's load
    base = [
        "model=mlp",
        "train.epochs=20",
        "train.retrain.epochs=1",
        "progress=false",
        "method.levels=1",
    ]
    out = tmp_path / "out"
    first = start([*base, f"output_root={out}"], tmp_path)
    try:
        deadline = time.time() + 120
        while not list(out.glob("dense/*/checkpoint.pt")):  # its first epoch is saved
            assert first.poll() is None and time.time() < deadline, "no dense checkpoint"
            time.sleep(0.02)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    dense = next((out / "dense").iterdir())
    assert shared_dense_lock(dense).exists()  # left by the killed job
    assert json.loads(RunPaths(dense).summary.read_text())["status"] == "running"
    # the next job and the run straight through: plain commands, in this process
    second = cli_in_process([*base, "method=random", f"output_root={out}"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    said = second.stdout + second.stderr
    assert "taking over the shared dense model" in said and "has ended" in said
    # the store's line, wrapped to the console's width: compared without white space
    assert re.sub(r"\s", "", f"resuming {dense} at level 0, epoch ") in re.sub(r"\s", "", said)
    assert not shared_dense_lock(dense).exists()
    # the same as the run trained straight, without sharing
    alone = cli_in_process(
        [*base, "method=random", "share_dense=false", f"output_root={tmp_path / 'alone'}"],
        cwd=tmp_path,
    )
    assert alone.returncode == 0, alone.stderr[-2000:]
    (resumed,) = run_dirs(out / "runs").values()
    (straight,) = run_dirs(tmp_path / "alone").values()
    assert_same_results(resumed, straight)


# --- the lock's rules ----------------------------------------------------------------------------
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_rules():
    host = socket.gethostname()
    me = Holder(host, os.getpid())
    assert stale_reason(me, 0.0, 60.0, host) is None  # alive, beating
    assert "has ended" in stale_reason(Holder(host, dead_pid()), 0.0, 60.0, host)
    # another host's pid says nothing here: only its heartbeat does
    assert stale_reason(Holder("elsewhere", dead_pid()), 59.0, 60.0, host) is None
    assert "no heartbeat" in stale_reason(Holder("elsewhere", 1), 61.0, 60.0, host)
    assert "no heartbeat" in stale_reason(me, 61.0, 60.0, host)  # alive but hung
    assert stale_reason(None, 10.0, 60.0, host) is None  # being written: wait for it
    assert Holder.parse("node7 1234\n") == Holder("node7", 1234)
    assert Holder.parse("") is None and Holder.parse("node7 x") is None


def test_the_lock_is_exclusive_and_released(tmp_path):
    a, b = DenseLock(tmp_path, 60.0), DenseLock(tmp_path, 60.0)
    assert a.acquire()
    try:
        assert not b.acquire()
        assert b.holder() == Holder.me()
        assert b.stale() is None and not b.break_stale()  # alive: never broken
    finally:
        a.release()
    assert not shared_dense_lock(tmp_path).exists()
    assert b.acquire()
    b.release()


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    shared_dense_lock(tmp_path).write_text(Holder(socket.gethostname(), dead_pid()).line())
    lock = DenseLock(tmp_path, 60.0)
    assert not lock.acquire()
    assert "has ended" in lock.stale()
    assert lock.break_stale()
    assert lock.acquire()
    lock.release()


def test_a_silent_lock_is_stale_by_the_waiters_clock(tmp_path):
    """A holder on another host is judged by its heartbeat: no change for the stale time."""
    now = [1000.0]
    shared_dense_lock(tmp_path).write_text("node7 42\n")
    lock = DenseLock(tmp_path, 30.0, clock=lambda: now[0])
    assert lock.stale() is None
    now[0] += 29
    assert lock.stale() is None
    os.utime(shared_dense_lock(tmp_path), ns=(1, 1))  # a heartbeat: the wait starts again
    now[0] += 29
    assert lock.stale() is None
    now[0] += 2
    assert lock.stale() is None
    now[0] += 30
    assert "no heartbeat" in lock.stale()
    # another waiter broke it and took it in between: that fresh lock is not broken
    shared_dense_lock(tmp_path).unlink()
    shared_dense_lock(tmp_path).write_text("node8 43\n")
    assert not lock.break_stale()
    assert shared_dense_lock(tmp_path).read_text() == "node8 43\n"


def test_the_heartbeat_refreshes_the_lock(tmp_path):
    lock = DenseLock(tmp_path, 60.0, heartbeat_s=0.05)
    assert lock.acquire()
    try:
        os.utime(shared_dense_lock(tmp_path), ns=(1, 1))
        time.sleep(0.3)
        assert shared_dense_lock(tmp_path).stat().st_mtime_ns > 1
    finally:
        lock.release()


# --- which runs share --------------------------------------------------------------------------
def test_the_opt_out_and_what_keeps_todays_behaviour(tmp_path):
    one, run = World(), tmp_path / "runs" / "r"

    def shares(*overrides: str, world: World = one, where: Path = run) -> bool:
        cfg = run_config([f"output_root={tmp_path}", *overrides])
        return shared_dense.shares(cfg, world, where)

    assert shares("method=magnitude")
    assert not shares("method=magnitude", "share_dense=false")
    assert not shares("method=magnitude", "overwrite=true")
    assert not shares("method=magnitude", f"dense_from={tmp_path / 'other'}")
    assert not shares("method=magnitude", world=World(rank=0, size=2))
    # a run directory outside output_root (placed by hand) keeps to itself
    assert not shares("method=magnitude", where=tmp_path.parent / "elsewhere")
    # a late rewind saves a level-0 epoch of the run's own
    assert not shares("method=lt", "method.rewind=1ep")
    assert not shares("method=dns")


def test_the_dense_key_leaves_the_method_out_and_the_rest_in():
    key = shared_dense.dense_key
    a = run_config(["method=magnitude", "method.sparsity=0.5"])
    assert key(a) == key(run_config(["method=random", "method.sparsity=0.8"]))
    assert key(a) == key(run_config(["method=magnitude", "share_dense=false", "progress=false"]))
    assert key(a) == key(run_config(["method=magnitude", "train.retrain.epochs=1"]))
    for other in ("seed=1", "train.lr=0.01", "model=mlp", "dataset.val_size=0.2"):
        assert key(a) != key(run_config(["method=magnitude", other])), other


#: settings that make each method buildable on the MLP with the defaults otherwise
METHOD_SETTINGS = {"filter": ["method.when=trained"], "crossword": []}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_that_shares_trains_level_0_plainly(name):
    """A method that claims its level 0 is the plain dense training adds no level-0 optimizer
    or callback that changes training, and its ``prepare`` leaves the model as it is."""
    cfg = run_config([f"method={name}", "model=mlp", *METHOD_SETTINGS.get(name, [])])
    method = METHODS.get(name)(cfg.method)
    if not method.shares_dense():
        return
    data = build_dataset(cfg.dataset, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg.model, data.spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = prune_context(list(itertools.islice(data.batches("train", 32), 2)), num_classes=10)
    prepared = method.prepare(model, ctx)
    assert prepared is model and prepared.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in prepared.state_dict().items())
    assert method.optimizer(model, 0.1) is None
    masks = Masks.ones(method.prunable(model))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    for cb in method.callbacks(0, masks, ctx):  # with full masks it changes nothing
        cb.on_level_start(model, 10, 2)
        for step in range(3):
            cb.on_after_backward(step, model)
            cb.on_step_end(step, model)
        cb.on_epoch_end(0, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), name
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters()), name
    assert masks.sparsity() == 0.0


def test_the_methods_that_do_not_share_are_the_ones_whose_level_0_is_not_plain():
    sharing = set()
    for name in group_options("method"):
        cfg = run_config([f"method={name}"])
        if METHODS.get(name)(cfg.method).shares_dense():
            sharing.add(name)
    expected = {"magnitude", "random", "lt", "os", "gradient", "undecayed", "flow", "sap"}
    assert sharing == expected | {"crossword"}  # crossword prunes after training by default
    filter_trained = run_config(["method=filter", "method.when=trained"]).method
    assert METHODS.get("filter")(filter_trained).shares_dense()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["os", "sap", "filter", "flow", "gradient"])
def test_a_sharing_method_has_the_results_it_has_without(tmp_path, name):
    """In one process: the shared dense level trained by the run itself, then reused."""
    extra = {
        "filter": ["method.when=trained", "method.samples=64", "method.latency_repeats=1"],
        "flow": ["method.measure=grasp", "method.samples=64"],
        "gradient": ["method.grad_batches=2"],
    }.get(name, [])
    base = ["model=mlp", "train.epochs=1", "progress=false", f"method={name}", *extra]
    if name in ("os", "sap"):
        base.append("method.levels=2")
    shared = Experiment(run_config([*base, f"output_root={tmp_path}"]), tmp_path / "a").run()
    assert "dense_shared" in shared
    alone = Experiment(run_config([*base, "share_dense=false"]), tmp_path / "b").run()
    assert "dense_shared" not in alone
    assert_same_results(tmp_path / "a", tmp_path / "b")


def test_compose_has_the_setting():
    cfg = compose_config(["share_dense=false", "share_dense_stale_s=10"])
    assert cfg.share_dense is False and cfg.share_dense_stale_s == 10
