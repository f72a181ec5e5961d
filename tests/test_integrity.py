"""Run integrity: one writer per directory, one config per directory, safe loading, nothing lost.

Each case is what a user (or an attacker) can do to a run directory; each must end in a one-line
error with exit status 2 (or a clean resume), never in mixed or lost results.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, run_cli, run_config

from prune_cli.cli import threads_per_job
from prune_cli.config import config_hash, differing_keys
from prune_cli.errors import UserError
from prune_cli.experiment import Experiment
from prune_cli.io import FILE_MODE, load_torch
from prune_cli.paths import RunPaths
from prune_cli.pruning.mask import Masks
from prune_cli.reporting.collect import collect
from prune_cli.seeds import derive_seed
from prune_cli.store import RunStore, check_location, directory_lock
from prune_cli.training.loop import Trainer

QUICK = ["model=mlp", "train.epochs=1", "method.levels=1", "progress=false"]


class _Planted:
    """A pickle that, when unpickled with full pickle, writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def plant(path: Path, marker: Path, wrap: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": _Planted(marker), "mask": {}} if wrap else _Planted(marker)
    with open(path, "wb") as fh:
        pickle.dump(payload, fh)
    torch.save(payload, path)  # a torch zip file whose data.pkl carries the payload


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def snapshot(root: Path) -> dict[str, int]:
    """Every file and its modification time (the lock file, rewritten by each holder, aside)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.lstat().st_mtime_ns
        for p in root.rglob("*")
        if p.name != ".lock"
    }


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    """A completed quick run (shared by the cases that must leave it untouched)."""
    root = tmp_path_factory.mktemp("done") / "run"
    Experiment(run_config(QUICK), root).run()
    return root


# --- the seed function, the hash ---------------------------------------------------------------
def test_derive_seed_separates_streams_and_repeats():
    seeds = {
        derive_seed(0, "epoch", 0, 1),
        derive_seed(0, "epoch", 1, 0),
        derive_seed(1, "epoch", 0, 0),
        derive_seed(0, "random-score", 1),
        derive_seed(0, "score-batches", 1),
        derive_seed(0, "dns-surgery", 1),
    }
    assert len(seeds) == 6
    assert derive_seed(3, "epoch", 2, 5) == derive_seed(3, "epoch", 2, 5)
    assert all(0 <= s < 2**63 for s in seeds)


def test_hash_ignores_speed_and_display_settings_and_names_what_differs():
    base = run_config(QUICK)
    same = run_config([*QUICK, "checkpoint_every=3", "train.eval_batch_size=17", "progress=true"])
    assert config_hash(base) == config_hash(same)
    other = run_config([*QUICK, "method.sparsity=0.5", "train.lr=0.01"])
    assert config_hash(other) != config_hash(base)
    assert differing_keys(base, other) == ["method.sparsity", "train.lr"]


def interrupt_at_epoch(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Ctrl-C at the start of the run's ``n``-th trained epoch (counted over all levels)."""
    original, calls = Trainer.train_epoch, []

    def interrupted(self, epoch, generator):
        calls.append(epoch)
        if len(calls) == n:
            raise KeyboardInterrupt
        return original(self, epoch, generator)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)


# --- bad input: one line, exit 2, nothing created ----------------------------------------------
def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    a_file = tmp / "a_file"
    a_file.write_text("x")
    plain = tmp / "plain"
    (plain / "levels" / "level_0").mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, plain / "levels" / "level_0" / "model.pt")
    torch.save({"w": torch.zeros(2)}, plain / "init.pt")
    misfit = tmp / "misfit.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, misfit)
    images = tmp / "images"
    for cls in ("a", "b"):
        (images / cls).mkdir(parents=True)
        for i in range(3):
            (images / cls / f"{i}.png").write_bytes(b"")
    (images / "a" / "gone.png").symlink_to(tmp / "nowhere.png")
    return {
        "unknown model": (["model=resnet57"], "valid models:"),
        "unknown method": (["method=nosuch"], "valid methods:"),
        "sparsity 1.5": (["method.sparsity=1.5"], "method.sparsity must be in [0, 1)"),
        "lr nan": (["train.lr=nan"], "train.lr"),
        "lr inf": (["train.lr=inf"], "train.lr"),
        "misspelt key": (["method.sparsty=0.5"], "sparsty"),
        "added unknown key": (["+method.sparsty=0.5"], "unknown key method.sparsty"),
        "added model key": (["+model.foo=1"], "unknown key model.foo"),
        "two targets": (["method.sparsity=0.5", "method.ratio=4"], "give only one"),
        "sweep without -m": (["sweep=sap_cifar10"], "add -m"),
        "run dir is a file": ([f"hydra.run.dir={a_file}"], "is a file"),
        "run dir under a file": ([f"hydra.run.dir={a_file}/run"], "is under"),
        "sweep dir under a file": (
            ["-m", "method=magnitude,random", f"hydra.sweep.dir={a_file}/sweep"],
            "choose another hydra.sweep.dir",
        ),
        "dense_from missing": ([f"dense_from={tmp / 'nowhere'}"], "no finished dense level"),
        "dense_from plain state dict": ([f"dense_from={plain}"], "plain state dict"),
        "filters it cannot group": (
            ["model=resnet20", "method=filter", "method.prune_first=true", "method.rounds=1"],
            "set method.prune_first=false",
        ),
        "rewind after the epochs": (["method=lt", "method.rewind=5ep"], "later than train.epochs"),
        "val_size too large": (["dataset.val_size=100000"], "leaving none to train on"),
        "selection without val": (
            ["dataset.val_size=0", "train.select=val_accuracy"],
            "needs a validation split",
        ),
        "weights that do not fit": ([f"model.weights={misfit}"], "does not fit model mlp"),
        "cuda without a GPU": (["device=cuda"], "no CUDA GPU is visible"),
        "empty output_root": (["output_root="], "output_root is empty"),
        "seed overflows": (["seed=100000000000000000000000"], "seed must be in [0, 2**63)"),
        "dangling link in a folder": (
            ["dataset=folder", f"dataset.root={images}", "dataset.num_workers=0"],
            "gone.png cannot be read",
        ),
    }


def _case_names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return list(_bad_inputs(Path(tmp)))


@pytest.mark.slow
@pytest.mark.parametrize("case", _case_names())
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, case, cli_in_process):
    args, message = _bad_inputs(tmp_path)[case]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args = [*args, f"hydra.run.dir={tmp_path / 'run'}"]
    keys = {a.split("=", 1)[0] for a in args}
    quick = [a for a in QUICK[:2] if a.split("=", 1)[0] not in keys]  # the case's model wins
    before = snapshot(tmp_path)
    result = cli_in_process([*args, *quick, "progress=false"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in one_line(result)
    # set-up failures found only when the run is built included: no run directory, no .lock
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "run").exists() and not Path("/runs").exists()


def test_location_checks_read_only_directories(tmp_path, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: Path(p) != tmp_path and real_access(p, m))
    with pytest.raises(UserError, match="read-only"):
        check_location(tmp_path / "run")


# --- one writer, one config ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_writer_is_refused(tmp_path, cli_in_process):
    run = tmp_path / "run"
    with directory_lock(run):  # exclusive within one process too
        result = cli_in_process([*QUICK, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 2
    assert "another prune-run" in one_line(result)
    assert not RunPaths(run).summary.exists() and not (run / ".hydra").exists()


@pytest.mark.slow
def test_a_second_sweep_into_one_sweep_directory_is_refused(tmp_path, cli_in_process):
    sweep = tmp_path / "sweep"
    with directory_lock(sweep, "sweep"):
        result = cli_in_process(
            ["-m", *QUICK, "seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path
        )
    assert result.returncode == 2
    assert "another prune-run" in one_line(result) and "sweep directory" in result.stderr
    assert not list(sweep.glob("*/summary.json"))


@pytest.mark.slow
def test_a_parallel_launchers_workers_run_inside_the_owners_sweep_lock(tmp_path):
    # joblib's loky workers import the CLI afresh: each must know it is a worker of the sweep
    # that holds the lock, not a second sweep (from the console script every job was refused)
    sweep = tmp_path / "sweep"
    result = run_cli(
        ["-m", *QUICK, "seed=0,1", "hydra/launcher=local", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        console_script=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 2
    assert {json.loads(p.read_text())["status"] for p in summaries} == {"completed"}
    # each of the launcher's two jobs ran on its share of the cores, not on all of them
    share = threads_per_job(len(os.sched_getaffinity(0)), 2)
    assert {json.loads(p.read_text())["threads"] for p in summaries} == {share}
    with directory_lock(sweep, "sweep"):  # released when the sweep ended
        pass


def test_the_lock_is_exclusive_within_and_across_processes(tmp_path):
    with (
        directory_lock(tmp_path),
        pytest.raises(UserError, match="another prune-run"),
        directory_lock(tmp_path),
    ):
        pass
    with directory_lock(tmp_path):  # released: can be taken again
        code = (
            "import sys; from prune_cli.store import directory_lock\n"
            "try:\n with directory_lock(sys.argv[1]): pass\n"
            "except Exception as e: print(e); sys.exit(3)\n"
        )
        other = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True
        )
    assert other.returncode == 3 and "another prune-run" in other.stdout


@pytest.mark.slow
def test_a_refused_run_leaves_the_owner_untouched(tmp_path, done_run, cli_in_process):
    before = snapshot(done_run)
    result = cli_in_process(
        [*QUICK, "method.sparsity=0.5", f"hydra.run.dir={done_run}"], cwd=tmp_path
    )
    assert result.returncode == 2
    line = one_line(result)
    assert "method.sparsity" in line and "overwrite=true" in line
    assert snapshot(done_run) == before  # .hydra/ and config.yaml included


def test_a_checkpoint_of_another_config_is_refused(tmp_path, monkeypatch):
    run = tmp_path / "run"
    interrupt_at_epoch(monkeypatch, 2)  # level 1's first epoch
    with pytest.raises(KeyboardInterrupt):
        Experiment(run_config([*QUICK, "method.sparsity=0.9"]), run).run()
    paths = RunPaths(run)
    assert json.loads(paths.summary.read_text())["status"] == "interrupted"
    assert paths.checkpoint.exists()
    paths.summary.unlink()  # only the checkpoint tells whose run this is now
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"method\.sparsity"):
        Experiment(run_config([*QUICK, "method.sparsity=0.5"]), run).run()
    (run / "config.yaml").unlink()
    with pytest.raises(UserError, match=r"another config \(method\.sparsity differ"):
        Experiment(run_config([*QUICK, "method.sparsity=0.5"]), run).run()
    store = RunStore(run, _container(run_config([*QUICK, "method.sparsity=0.5"])))
    with pytest.raises(UserError, match=r"checkpoint .* another config \(method\.sparsity"):
        store.load_checkpoint(torch.device("cpu"))
    done = Experiment(run_config([*QUICK, "method.sparsity=0.9"]), run).run()
    assert done["status"] == "completed" and done["levels"][1]["sparsity"] == pytest.approx(
        0.9, abs=1e-4
    )


#: the keys of a checkpoint file as prune-run has always written it (the store adds the last two)
CHECKPOINT_KEYS = [
    "cursor",
    "model",
    "masks",
    "optimizer",
    "scheduler",
    "callbacks",
    "best_state",
    "records",
    "method",
    "wall_time_s",
    "config_hash",
    "config",
]


def test_a_checkpoint_in_the_old_format_resumes_to_the_same_results(tmp_path, monkeypatch):
    """A checkpoint is a plain dict with fixed keys; one built by hand in that format (as the
    code before the typed checkpoint wrote it, saved with torch.save) resumes in the middle of a
    level's training and ends where an uninterrupted run ends."""
    overrides = [*QUICK, "train.epochs=2", "train.retrain.epochs=2"]
    straight = Experiment(run_config(overrides), tmp_path / "straight").run()
    # level 1's second epoch: its first is checkpointed with the optimizer
    interrupt_at_epoch(monkeypatch, 4)
    run = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        Experiment(run_config(overrides), run).run()
    monkeypatch.undo()
    path = RunPaths(run).checkpoint
    written = torch.load(path, weights_only=True)
    assert list(written) == CHECKPOINT_KEYS
    cursor = written["cursor"]
    assert cursor == {"level": 1, "epoch": 1, "pruned": True, "best": cursor["best"]}
    assert set(cursor["best"]) == {"score", "epoch"} and cursor["best"]["epoch"] == 1
    assert written["optimizer"] is not None and written["best_state"] is not None
    # the same run as plain values under the literal keys, without the store's help
    old = {
        "cursor": {
            "level": 1,
            "epoch": 1,
            "pruned": True,
            "best": {"score": float(cursor["best"]["score"]), "epoch": 1},
        },
        "model": dict(written["model"]),
        "masks": dict(written["masks"]),
        "optimizer": written["optimizer"],
        "scheduler": dict(written["scheduler"]),
        "callbacks": list(written["callbacks"]),
        "best_state": dict(written["best_state"]),
        "records": dict(written["records"]),
        "method": {},
        "wall_time_s": 12.5,
        "config_hash": config_hash(run_config(overrides)),
        "config": _container(run_config(overrides)),
    }
    path.unlink()
    torch.save(old, path)
    resumed = Experiment(run_config(overrides), run).run()
    assert resumed["status"] == "completed" and resumed["wall_time_s"] >= 12.5
    keys = ("sparsity", "params_nonzero", "selected_epoch", "val_accuracy", "test_accuracy")
    for a, b in zip(straight["levels"], resumed["levels"], strict=True):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert list(resumed) == list(straight)  # the summary keeps its keys, in their order
    for name in ("metrics", "per_class_recall", "pqi", "sparsity"):
        assert (
            getattr(RunPaths(run), name).read_text()
            == getattr(RunPaths(tmp_path / "straight"), name).read_text()
        )


@pytest.mark.parametrize("missing", ["model", "records"])
def test_a_checkpoint_without_its_weights_or_records_is_one_line(tmp_path, missing):
    """The right config hash, but a part of the checkpoint missing: refused by name."""
    cfg = run_config(QUICK)
    store = RunStore(tmp_path / "run", _container(cfg))
    store.paths.checkpoint.parent.mkdir(parents=True)
    cursor = {"level": 0, "epoch": 1, "pruned": False, "best": {}}
    whole = {"cursor": cursor, "config_hash": store.hash, "model": {}, "masks": {}}
    whole |= {"optimizer": {}, "scheduler": None, "callbacks": [], "best_state": None}
    whole |= {"records": {}, "method": {}, "wall_time_s": 0.0}
    whole.pop(missing)
    torch.save(whole, store.paths.checkpoint)
    with pytest.raises(UserError, match=rf"not a prune-run checkpoint \(KeyError: '{missing}'\)"):
        store.load_checkpoint(torch.device("cpu"))


@pytest.mark.slow
def test_overwrite_with_bad_data_keeps_the_old_run(tmp_path, done_run, cli_in_process):
    before = snapshot(done_run)
    result = cli_in_process(
        [
            *QUICK,
            "overwrite=true",
            "dataset=mnist",
            f"dataset.root={tmp_path / 'none'}",
            f"hydra.run.dir={done_run}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "not found" in one_line(result)
    assert snapshot(done_run) == before


def test_a_kill_after_completion_leaves_nothing_stale(tmp_path, done_run):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(done_run, run)
    paths = RunPaths(run)
    torch.save({"cursor": {}}, paths.checkpoint)  # killed before the checkpoint was removed
    (run / ".summary.json.abc.tmp").write_text("{")  # and in the middle of a write
    (run / "levels" / "level_1" / ".model.pt.x.tmp").write_bytes(b"")
    summary = Experiment(run_config(QUICK), run).run()
    assert summary["status"] == "completed"
    assert not paths.checkpoint.exists()
    assert not list(run.rglob("*.tmp"))


def test_results_get_the_users_umask(done_run):
    for path in (RunPaths(done_run).summary, RunPaths(done_run).level_model(1)):
        assert path.stat().st_mode & 0o777 == FILE_MODE


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_level_model_is_detected_when_shown(tmp_path, done_run, damage):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(done_run, run)
    model = RunPaths(run).level_model(1)
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[:100])
    else:
        model.unlink()
    with pytest.raises(UserError, match=r"level_1/model\.pt is (truncated|missing)"):
        Experiment(run_config(QUICK), run).run()
    (listed,) = collect([run]).runs.to_dict("records")
    assert listed["status"] == "damaged" and "level_1/model.pt" in listed["reason"]


@pytest.mark.parametrize("content", ["{", "[1, 2]"])
def test_a_broken_summary_is_one_line(tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(content)
    with pytest.raises(UserError, match=r"summary .*(truncated|mapping)"):
        Experiment(run_config(QUICK), run).run()
    assert (run / "summary.json").read_text() == content


def test_level_models_carry_what_rebuilds_them(done_run):
    state = load_torch(RunPaths(done_run).level_model(1))
    assert state["model_info"] == {
        "name": "mlp",
        "settings": {"name": "mlp", "weights": None, "weights_id": None, "hidden": None},
        "channels": 1,
        "num_classes": 10,
        "image_size": 8,
    }


# --- safe loading -------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["checkpoint", "init", "level", "mask", "dense_from"])
def test_a_crafted_pickle_runs_no_code(tmp_path, target):
    marker = tmp_path / "marker"
    cfg = run_config(QUICK)
    store = RunStore(tmp_path / "run", json.loads(json.dumps(_container(cfg))))
    cpu = torch.device("cpu")
    paths = store.paths
    if target == "checkpoint":
        plant(paths.checkpoint, marker)
        call = lambda: store.load_checkpoint(cpu)  # noqa: E731
    elif target == "init":
        plant(paths.init_state, marker, wrap=False)
        call = lambda: store.load_init(cpu)  # noqa: E731
    elif target == "level":
        plant(paths.level_model(0), marker)
        call = lambda: store.load_level(0, cpu)  # noqa: E731
    elif target == "mask":
        plant(paths.level_mask(0), marker, wrap=False)
        call = lambda: Masks.load(paths.level_mask(0))  # noqa: E731
    else:
        source = RunPaths(tmp_path / "source")
        plant(source.level_model(0), marker)
        torch.save({}, source.init_state)
        call = lambda: store.dense_source(source.root, cpu)  # noqa: E731
    with pytest.raises(UserError, match="corrupt, truncated or not a prune-run file"):
        call()
    assert not marker.exists()


def _container(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg))


# --- same command, same run ---------------------------------------------------------------------
@pytest.mark.slow
def test_the_same_command_finds_its_run_and_a_sweep_its_jobs(tmp_path, cli_in_process):
    first = run_cli(QUICK, cwd=tmp_path)  # a real process; the commands after it run in this one
    assert first.returncode == 0, first.stderr[-2000:]
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 1
    assert runs[0].name.startswith("digits-mlp-magnitude-s0-")
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert runs[0].name.endswith(summary["config_hash"])
    again = cli_in_process([*QUICK, "train.eval_batch_size=17"], cwd=tmp_path)
    assert again.returncode == 0 and "is complete" in again.stderr
    assert len(list((tmp_path / "outputs" / "runs").iterdir())) == 1

    sweep = ["-m", *QUICK, "seed=0,1"]
    assert cli_in_process(sweep, cwd=tmp_path).returncode == 0
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").iterdir()
    # the sweep's own records are hidden (``.prune-sweep``); the jobs are the other folders
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name[0] != ".")
    assert len(jobs) == 2 and all(j.startswith("digits-mlp-magnitude-s") for j in jobs)
    rerun = cli_in_process(sweep, cwd=tmp_path)
    assert rerun.returncode == 0 and rerun.stderr.count("is complete") == 2
    assert len(list((tmp_path / "outputs" / "multirun").iterdir())) == 1


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_marks_the_run_interrupted(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prune_cli.cli",
            *FAST,
            "train.epochs=200",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
        # a shell that runs the tests in the background ignores SIGINT, and children inherit
        # that: restore the default so that Python installs its KeyboardInterrupt handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not RunPaths(run).checkpoint.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in err
    summary = json.loads(RunPaths(run).summary.read_text())
    assert summary["status"] == "interrupted" and "level 0" in summary["reason"]


def test_ctrl_c_inside_torch_save_lands_after_the_file_is_written(tmp_path, monkeypatch):
    """Ctrl-C while a checkpoint's zip is being written: torch.save's writer, interrupted,
    raised "unexpected pos" on closing and hid the interrupt (exit 1 and a traceback). The
    signal now lands once the file is in place, as a KeyboardInterrupt."""
    from prune_cli import io

    real_save = torch.save

    def save_with_ctrl_c(obj, fh):  # the signal arrives while the storages are being written
        real_save(obj, _InterruptOnWrite(fh))

    monkeypatch.setattr(torch, "save", save_with_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        state = {"w": torch.arange(100_000, dtype=torch.float32)}
        with pytest.raises(KeyboardInterrupt):
            io.save_torch(state, tmp_path / "checkpoint.pt")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)
    assert torch.equal(load_torch(tmp_path / "checkpoint.pt")["w"], state["w"])
    assert not list(tmp_path.glob(".*.tmp"))


class _InterruptOnWrite:
    """A file that raises SIGINT in the process at its second write (inside torch.save)."""

    def __init__(self, fh) -> None:
        self._fh, self._writes = fh, 0

    def write(self, data) -> int:
        self._writes += 1
        if self._writes == 2:
            signal.raise_signal(signal.SIGINT)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)


def test_records_come_back_from_the_files_and_the_checkpoint_tail(tmp_path):
    """The checkpoint carries the rows past the finished levels; the rest is read back from the
    files with their types, and a file shorter than the checkpoint says is a one-line error."""
    from prune_cli.errors import UserError
    from prune_cli.recording.records import RunRecords

    paths = RunPaths(tmp_path)
    records = RunRecords(
        metrics=[(0, 1, "val", "accuracy", 0.5), (1, 1, "val", "accuracy", 0.25)],
        recall=[(0, "final", 0, "zero", 3, 1.0), (1, "final", 0, "zero", 3, 0.0)],
        pqi=[(0, "final", "model", "all", 0.5, 1.0, 0.125)],
        sparsity=[(0, "fc.weight", 10, 10, 0.0), (1, "fc.weight", 10, 5, 0.5)],
        distortion=[(1, 0, 1.0, 0.0, 0.2, -1.0, 0.5)],
        levels=[{"level": 0}, {"level": 1}],
    )
    records.write(paths)
    offset = {"metrics": 1, "recall": 1, "pqi": 1, "gini": 0, "sparsity": 1, "distortion": 0}
    state = records.checkpoint_state(offset)
    assert state["tail"]["metrics"] == [(1, 1, "val", "accuracy", 0.25)]
    back = RunRecords.from_checkpoint(state, paths)
    assert back == records  # same values, same types
    paths.metrics.write_text("level,epoch,split,metric,value\n")  # the finished rows are gone
    with pytest.raises(UserError, match="overwrite=true"):
        RunRecords.from_checkpoint(state, paths)


# --- overwrite=true keeps the old run until the new one has its level 0 -------------------------
def _files(root: Path) -> dict[str, bytes]:
    """Every file's bytes (the lock aside), to tell a run put back from a changed one."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


@pytest.mark.slow
def test_an_overwrite_that_fails_with_a_nan_loss_keeps_the_old_run(
    tmp_path, done_run, cli_in_process
):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(done_run, run)
    before = _files(run)
    result = cli_in_process(
        [*QUICK, "overwrite=true", "train.lr=1e30", f"hydra.run.dir={run}"], cwd=tmp_path
    )
    assert result.returncode == 1 and "loss became" in result.stderr
    assert _files(run) == before  # byte for byte, and nothing of the failed run left over


@pytest.mark.parametrize("stop", ["Ctrl-C", "SIGTERM"])
def test_an_overwrite_interrupted_in_level_0_keeps_the_old_run(
    tmp_path, done_run, monkeypatch, stop
):
    import shutil

    from prune_cli.io import SignalInterrupt

    run = tmp_path / "copy"
    shutil.copytree(done_run, run)
    before = _files(run)
    raised = KeyboardInterrupt() if stop == "Ctrl-C" else SignalInterrupt(signal.SIGTERM)
    monkeypatch.setattr(Trainer, "train_epoch", lambda *a: (_ for _ in ()).throw(raised))
    with pytest.raises(KeyboardInterrupt):
        Experiment(run_config([*QUICK, "overwrite=true", "method.sparsity=0.5"]), run).run()
    assert _files(run) == before  # the old run back, byte for byte, the new one's files gone


def test_an_overwrite_killed_in_level_0_is_undone_at_the_next_start(
    tmp_path, done_run, monkeypatch
):
    import shutil

    from prune_cli.store import ASIDE

    run = tmp_path / "copy"
    shutil.copytree(done_run, run)
    before = _files(run)
    # a kill -9 in level 0 runs no clean-up: the old run stays aside, the new run's files beside
    monkeypatch.setattr(Experiment, "_put_back", lambda self: None)
    monkeypatch.setattr(Trainer, "train_epoch", lambda *a: (_ for _ in ()).throw(SystemExit(9)))
    with pytest.raises(SystemExit):
        Experiment(run_config([*QUICK, "overwrite=true", "method.sparsity=0.5"]), run).run()
    assert (run / ASIDE).is_dir() and RunPaths(run).config.read_bytes() != before["config.yaml"]
    from prune_cli.reporting.runs import find_runs

    # a report of the folder meanwhile sees the run once, not also the old one set aside
    assert [p for p in find_runs([tmp_path]) if p.is_relative_to(run)] == [run]
    monkeypatch.undo()
    shown = Experiment(run_config(QUICK), run).run()  # the next plain prune-run
    assert shown["status"] == "completed"
    assert _files(run) == before and not (run / ASIDE).exists()


def test_an_overwrite_drops_the_old_run_once_level_0_is_written(tmp_path, done_run, monkeypatch):
    import shutil

    from prune_cli.store import ASIDE

    run = tmp_path / "copy"
    shutil.copytree(done_run, run)
    interrupt_at_epoch(monkeypatch, 2)  # level 1's first epoch
    with pytest.raises(KeyboardInterrupt):
        Experiment(run_config([*QUICK, "overwrite=true", "method.sparsity=0.5"]), run).run()
    assert not (run / ASIDE).exists()  # past level 0: the new run stands, resumable
    summary = json.loads(RunPaths(run).summary.read_text())
    assert summary["status"] == "interrupted"
    assert summary["config_hash"] == config_hash(run_config([*QUICK, "method.sparsity=0.5"]))


# --- a full disk --------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_recorded_and_resumes(tmp_path, done_run, monkeypatch):
    import errno

    from prune_cli.io import DiskFull

    run = tmp_path / "run"
    real_save, saves = torch.save, []

    def save_on_a_full_disk(obj, fh):
        saves.append(fh)
        if len(saves) == 5:  # level 1's files: torch's writer wraps the ENOSPC of its file
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904  (as torch raises it: chained implicitly)
        return real_save(obj, fh)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    with pytest.raises(DiskFull, match=r"^no space left on device while writing \S+\.pt; ") as exc:
        Experiment(run_config(QUICK), run).run()
    assert len(str(exc.value).splitlines()) == 1
    summary = json.loads(RunPaths(run).summary.read_text())
    assert summary["status"] == "failed" and summary["reason"] == str(exc.value)
    monkeypatch.undo()  # space freed: the same command resumes to the uninterrupted results
    assert Experiment(run_config(QUICK), run).run()["status"] == "completed"
    for name in ("metrics", "sparsity", "pqi"):
        assert (
            getattr(RunPaths(run), name).read_text()
            == getattr(RunPaths(done_run), name).read_text()
        )


def test_enospc_from_any_writer_names_the_file(tmp_path, monkeypatch):
    import errno

    from prune_cli import io

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(io.DiskFull, match=r"while writing .*summary\.json"):
        io.save_json({"a": 1}, tmp_path / "summary.json")
    assert not list(tmp_path.iterdir())  # no temporary left behind
    with pytest.raises(io.DiskFull, match=r"while writing .*metrics\.csv"):
        io.append_csv([[1, 2]], tmp_path / "metrics.csv", durable=True)
    monkeypatch.setattr(io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "io")))
    with pytest.raises(OSError, match="io"):  # another OSError is not called a full disk
        io.save_json({"a": 1}, tmp_path / "other.json")
