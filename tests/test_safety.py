"""Shared run directories are safe: a crafted run folder runs no code, is never written through
a link, and a batch system's signals end a run as Ctrl-C does (marked interrupted, resumable).

Each case is what someone who can write a run directory (a colleague's share, a downloaded
archive, a scratch disk) can plant in it; each ends in one line on stderr with its exit status,
with nothing created, changed or lost, and no code of theirs run.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_config

from prune_cli.errors import UserError
from prune_cli.experiment import Experiment
from prune_cli.io import append_csv, load_torch, save_json
from prune_cli.paths import RunPaths
from prune_cli.pruning.structured import THIN_FORMAT, THIN_VERSION
from prune_cli.store import directory_lock

QUICK = ["model=mlp", "train.epochs=1", "method.levels=1", "progress=false"]
#: what ``import this`` prints: a stdlib module imported before the refusal would show it
ZEN = "Beautiful is better than ugly"


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``root`` (links included, not followed) and its size and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety") / "run"
    Experiment(run_config(QUICK), root).run()
    return root


def _copy(done_run: Path, where: Path) -> Path:
    run = where / "run"
    shutil.copytree(done_run, run, symlinks=True)
    return run


# --- a run directory names a module to import ---------------------------------------------------
EVIL = """\
from pathlib import Path
Path({marker!r}).write_text("code ran")

def build(spec, **kwargs):
    from prune_cli.models import build_model
    return build_model("mlp", spec)
"""


def _craft(run: Path, target: str, marker: Path) -> None:
    """Name ``target`` as the run's custom model in its level file, its config.yaml and a thin
    model file, and plant the module beside them (and the marker it writes when imported)."""
    paths = RunPaths(run)
    settings = {"name": "custom", "target": target, "args": {}}
    for level in (0, 1):
        state = load_torch(paths.level_model(level))
        state["model_info"] = {**state["model_info"], "name": "custom", "settings": settings}
        state["config"]["model"] = settings
        torch.save(state, paths.level_model(level))
    config = yaml.safe_load(paths.config.read_text())
    config["model"] = settings
    paths.config.write_text(yaml.safe_dump(config))
    thin = {
        "format": THIN_FORMAT,
        "version": THIN_VERSION,
        "input_shape": (1, 8, 8),
        "num_classes": 10,
        "state_dict": {},
        "removed": {},
    }
    torch.save(thin, run / "final_model.pt")
    (run / "evilmod.py").write_text(EVIL.format(marker=str(marker)))


#: how each load path is called from Python code run inside the run directory (cwd)
LOADERS = {
    "prune-export": "from prune_cli.export_cli import main; main(['.', '--format', "
    "'torch_export', '-o', {out!r}{trust}])",
    "load_run(...).model()": "import prune_cli; prune_cli.load_run('.'{trust_kw}).model(1)",
    "thin loader": "from prune_cli.thin import load_thin_model; "
    "load_thin_model('final_model.pt'{trust_kw})",
}
WRAP = """\
import sys
import time
from prune_cli.errors import UserError
try:
    {call}
except UserError as exc:
    print(f"error: {{exc}}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def _load(loader: str, run: Path, out: Path, trust: bool, env: dict | None = None):
    call = LOADERS[loader].format(
        out=str(out),
        trust=", '--trust-code'" if trust else "",
        trust_kw=", trust_code=True" if trust else "",
    )
    # python -c puts the current directory (the run folder) first on sys.path, as a notebook
    # or a `python -m` started there does
    return subprocess.run(
        [sys.executable, "-c", WRAP.format(call=call)],
        cwd=run,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )


@pytest.mark.parametrize("target", ["evilmod:build", "this:nothing"])
@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_crafted_model_target_is_refused_before_any_import(tmp_path, done_run, loader, target):
    run = _copy(done_run, tmp_path)
    marker = tmp_path / "marker"
    _craft(run, target, marker)
    before = snapshot(run)
    result = _load(loader, run, tmp_path / "out.pt2", trust=False)
    assert result.returncode == 2, result.stderr[-2000:]
    line = one_line(result)
    assert f"model.target={target}" in line and "names code to import" in line
    assert "--trust-code" in line and "trust_code=True" in line
    assert not marker.exists() and ZEN not in result.stdout
    assert snapshot(run) == before and not (tmp_path / "out.pt2").exists()


@pytest.mark.parametrize("loader", list(LOADERS))
def test_trusted_code_is_imported_from_installed_paths_never_from_the_run_folder(
    tmp_path, done_run, loader
):
    run = _copy(done_run, tmp_path)
    marker = tmp_path / "marker"
    _craft(run, "evilmod:build", marker)
    before = snapshot(run)
    result = _load(loader, run, tmp_path / "out.pt2", trust=True)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot import evilmod" in one_line(result)
    assert not marker.exists() and snapshot(run) == before
    # the same module on PYTHONPATH, which the user chose, is what --trust-code lets run
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "evilmod.py").write_text((run / "evilmod.py").read_text())
    (run / "evilmod.py").unlink()
    trusted = _load(loader, run, tmp_path / "out.pt2", trust=True, env={"PYTHONPATH": str(lib)})
    assert marker.exists(), trusted.stderr[-2000:]
    if loader != "thin loader":  # the crafted thin file holds no network: refused after import
        assert trusted.returncode == 0, trusted.stderr[-2000:]


# --- links in a run directory are never written through -----------------------------------------
LINKS = {
    # name in the run -> (what the run then is, the command's extra overrides)
    ".lock": "completed",  # a plain prune-run that only shows the run truncated it to a pid
    "run.log": "interrupted",  # appended to on resume
    "metrics.csv": "interrupted",
    "summary.json": "interrupted",
    "levels/level_1/model.pt": "completed",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LINKS))
def test_a_planted_link_is_refused_and_its_target_kept(tmp_path, done_run, name, cli_in_process):
    run = _copy(done_run, tmp_path)
    if LINKS[name] == "interrupted":
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(victim)
    before = snapshot(run)
    result = cli_in_process([*QUICK, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    line = one_line(result)
    assert "symbolic link" in line and name in line
    assert victim.read_text() == "precious\n"
    after = snapshot(run)
    if name != ".lock":  # the lock file is rewritten (the holder's pid) by each run that takes it
        before.pop(".lock"), after.pop(".lock")
    assert after == before


def test_the_writers_refuse_a_link_themselves(tmp_path):
    """Below the directory check: the lock, an append and an atomic write open no link."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / ".lock").symlink_to(victim)
    with pytest.raises(UserError, match=r"\.lock is a symbolic link"), directory_lock(tmp_path):
        pass
    (tmp_path / "rows.csv").symlink_to(victim)
    with pytest.raises(UserError, match=r"rows\.csv is a symbolic link"):
        append_csv([(1, 2)], tmp_path / "rows.csv")
    (tmp_path / "summary.json").symlink_to(victim)
    with pytest.raises(UserError, match=r"summary\.json is a symbolic link"):
        save_json({"status": "x"}, tmp_path / "summary.json")
    assert victim.read_text() == "precious\n"
    assert all((tmp_path / n).is_symlink() for n in (".lock", "rows.csv", "summary.json"))


# --- Hydra's rerun flag unpickles a file ---------------------------------------------------------
class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_experimental_rerun_is_refused(tmp_path, form, cli_in_process):
    marker = tmp_path / "marker"
    pickled = tmp_path / "config.pickle"
    pickled.write_bytes(pickle.dumps(_Planted(marker)))
    flag = ["--experimental-rerun", str(pickled)]
    args = flag if form == "separate" else ["=".join(flag)]
    before = sorted(tmp_path.rglob("*"))
    result = cli_in_process(args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--experimental-rerun" in one_line(result)
    assert not marker.exists() and sorted(tmp_path.rglob("*")) == before


# --- a completed run on read-only storage is shown ----------------------------------------------
def test_a_completed_run_on_read_only_storage_is_shown(tmp_path, done_run, monkeypatch):
    run = _copy(done_run, tmp_path)
    (run / ".lock").unlink()
    before = snapshot(run)
    real_access = os.access
    # the tests run as root, for whom every directory is writable: the store asks os.access
    monkeypatch.setattr(os, "access", lambda p, m: Path(p) != run and real_access(p, m))
    shown = Experiment(run_config(QUICK), run).run()
    assert shown["status"] == "completed"
    assert snapshot(run) == before  # not even a lock file
    with pytest.raises(UserError, match="cannot be written"):
        Experiment(run_config([*QUICK, "overwrite=true"]), run).run()
    assert snapshot(run) == before


# --- SIGTERM and SIGHUP end a run as Ctrl-C does -------------------------------------------------
RESUMED = [
    "model=mlp",
    "train.epochs=3",
    "train.retrain.epochs=2",
    "method.levels=2",
    "method.rewind=1ep",
    "progress=false",
    "seed=3",
]
#: the command, with a signal sent to the process itself in level 1's second epoch (as SLURM
#: sends it: from outside, to a process busy training)
SIGNALLED = """\
import os, signal, sys
from prune_cli.training.loop import Trainer
original, calls = Trainer.train_epoch, []
def train_epoch(self, epoch, generator):
    calls.append(epoch)
    if len(calls) == 5 and os.environ.get("SEND_SIGNAL"):
        os.kill(os.getpid(), getattr(signal, os.environ["SEND_SIGNAL"]))
    return original(self, epoch, generator)
Trainer.train_epoch = train_epoch
from prune_cli.cli import main
sys.argv = ["prune-run", *sys.argv[1:]]
main()
"""


def _signalled(
    args: list[str], cwd: Path, sig: str | None, script: str = SIGNALLED
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    if sig:
        env["SEND_SIGNAL"] = sig
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_signalled_run_is_marked_interrupted_and_resumes_to_the_same_files(
    tmp_path, sig, cli_in_process
):
    run = tmp_path / "signalled"
    args = [*RESUMED, f"hydra.run.dir={run}"]
    killed = _signalled(args, tmp_path, sig)
    assert killed.returncode == 128 + getattr(signal, sig), killed.stderr[-2000:]
    line = one_line(killed)
    assert f"interrupted by {sig}" in line and "resume" in line
    summary = json.loads(RunPaths(run).summary.read_text())
    assert summary["status"] == "interrupted" and sig in summary["reason"]
    assert "level 1" in summary["reason"] and RunPaths(run).checkpoint.exists()
    if sig == "SIGHUP":
        return  # ended as SIGTERM ends it; the resume to the same files is SIGTERM's case
    # the run straight through and the resume: plain commands, in this process
    straight = cli_in_process([*RESUMED, f"hydra.run.dir={tmp_path / 'straight'}"], tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    resumed = cli_in_process(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(RunPaths(run).summary.read_text())["status"] == "completed"
    done, again = RunPaths(tmp_path / "straight"), RunPaths(run)
    for name in ("metrics", "per_class_recall", "pqi", "gini", "sparsity", "recall_distortion"):
        assert getattr(done, name).read_text() == getattr(again, name).read_text(), name
    for level in (0, 1, 2):
        a, b = load_torch(done.level_model(level)), load_torch(again.level_model(level))
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), level


@pytest.mark.slow
def test_a_signalled_sweep_marks_its_job_interrupted(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *RESUMED[:-1], "seed=3,4", f"hydra.sweep.dir={sweep}"]
    killed = _signalled(args, tmp_path, "SIGTERM")
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr[-2000:]
    assert "interrupted by SIGTERM" in killed.stderr and "Traceback" not in killed.stderr
    statuses = [json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json")]
    assert statuses == ["interrupted"]  # the first job; the second never started


#: a Ctrl-C in level 0's first epoch, and a second one while the run records the first (the
#: impatient user's double Ctrl-C), sent by the process to itself where it would land
TWICE = """\
import os, signal, sys
from prune_cli.experiment import Experiment
from prune_cli.training.loop import Trainer
def train_epoch(self, epoch, generator):
    os.kill(os.getpid(), signal.SIGINT)
Trainer.train_epoch = train_epoch
stopped = Experiment._stopped
def _stopped(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return stopped(self, *args, **kwargs)
Experiment._stopped = _stopped
from prune_cli.entry import prune_run
sys.argv = ["prune-run", *sys.argv[1:]]
prune_run()
"""


@pytest.mark.slow
def test_a_second_ctrl_c_while_the_first_is_recorded_still_ends_in_one_line_and_130(tmp_path):
    run = tmp_path / "run"
    result = _signalled([*QUICK, f"hydra.run.dir={run}"], tmp_path, None, script=TWICE)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "interrupted" in one_line(result)
    summary = json.loads(RunPaths(run).summary.read_text())
    assert summary["status"] == "interrupted"  # the second Ctrl-C did not cut the record short


@pytest.mark.parametrize("command", ["prune_run", "prune_report", "prune_export"])
def test_ctrl_c_during_the_start_up_imports_is_one_line_and_130(command, monkeypatch, capsys):
    from prune_cli import entry

    def importing(name):  # the Ctrl-C lands while torch / Hydra / pandas are being imported
        raise KeyboardInterrupt

    monkeypatch.setattr(entry.importlib, "import_module", importing)
    # the guard ignores further signals as the command ends: put this process's handlers back,
    # or every process the later tests start inherits an ignored Ctrl-C and SIGTERM
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.raises(SystemExit) as ended:
            getattr(entry, command)()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert ended.value.code == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "interrupted while starting; nothing was written" in lines[0]


@pytest.mark.slow
def test_the_console_scripts_go_through_the_guard(tmp_path):
    """A real Ctrl-C early in start-up: sent once Python runs the entry point (before that, no
    Python handler exists and the signal kills as it does any process), while it imports torch
    and Hydra; on a machine fast enough to be past the imports, the run starts and is
    interrupted: one line and 130 either way."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    # "ready" is printed inside the guard, just before the command's module is imported
    code = (
        "import importlib, types, prune_cli.entry as entry\n"
        "def imp(name):\n"
        "    print('ready', flush=True)\n"
        "    return importlib.import_module(name)\n"
        "entry.importlib = types.SimpleNamespace(import_module=imp)\n"
        "entry.prune_run()\n"
    )
    started = subprocess.Popen(
        [sys.executable, "-c", code, *QUICK],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert started.stdout.readline().strip() == "ready"
    started.send_signal(signal.SIGINT)
    _, err = started.communicate(timeout=120)
    assert started.returncode == 130, err[-2000:]
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in err
    # the installed commands are these entry points (a plain-text check: tomllib needs 3.11)
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    for name in ("prune_run", "prune_report", "prune_export"):
        assert f'{name.replace("_", "-")} = "prune_cli.entry:{name}"' in pyproject
