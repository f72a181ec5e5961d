"""Sweeps that fail loudly, through the parallel launcher (joblib), whose jobs run in worker
processes: a failed job makes the sweep exit 1 and is named at its end, and no worker outlives
the sweep's main process (killed with SIGKILL); a re-run resumes the interrupted jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CONSOLE_SCRIPT, run_cli

QUICK = ["model=mlp", "method.levels=1", "progress=false"]


@pytest.mark.slow
def test_a_failed_job_of_a_parallel_sweep_exits_1_and_is_named(tmp_path):
    sweep = tmp_path / "sweep"
    # lr=1e30: the loss becomes NaN in the first epoch, a failure at run time in the worker
    args = ["-m", "hydra/launcher=local", "train.lr=0.1,1e30", "train.epochs=1", *QUICK]
    result = run_cli([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, console_script=True)
    assert result.returncode == 1, result.stderr[-2000:]
    summaries = {p.parent: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    bad = next(d for d, s in summaries.items() if s["status"] == "failed")
    # the end of the sweep names the job by its directory (the worker's own line does not)
    lines = result.stderr.splitlines()
    named = [ln for ln in lines if ln.startswith("prune-run: job") and str(sweep) in ln]
    assert named == [f"prune-run: job 1 failed: {bad}: {summaries[bad]['reason']}"]
    assert "training loss became nan" in named[0]
    assert "prune-run: 1 job(s) of the sweep failed and 0 were interrupted, of 2" in result.stderr


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_no_worker_outlives_a_killed_sweep_and_a_rerun_resumes(tmp_path, sig):
    """SIGKILL: the main process cannot act, the workers' watchdog must end them. SIGTERM (what
    SLURM sends): the main process forwards it, so the sweep exits 128 + 15 like one run."""
    sweep = tmp_path / "sweep"
    # 150 epochs of level 0 where the kill lands at epoch 3: far from either job's end, even
    # with one worker started seconds after the other; level 1's one epoch keeps the re-run short
    args = ["-m", "hydra/launcher=local", "method=magnitude,random", "train.epochs=150", *QUICK]
    args.append("train.retrain.epochs=1")
    args.append(f"hydra.sweep.dir={sweep}")
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    main = subprocess.Popen(
        [*CONSOLE_SCRIPT, *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until both jobs train, each in its worker
            logs = [p.read_text() for p in sweep.glob("*/run.log")]
            if len(logs) == 2 and all(" epoch 3/" in log for log in logs):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the sweep's jobs did not start training")
        processes = _descendants(main.pid)
        assert len(processes) >= 2  # the two workers (and the launcher's resource trackers)
        # only the main process gets the signal, not its process group: forwarding is its job
        os.kill(main.pid, getattr(signal, sig))
        _, err = main.communicate(timeout=60)
        killed = time.monotonic()
        while any(map(_alive, processes)) and time.monotonic() - killed < 30:
            time.sleep(0.2)
        assert not [p for p in processes if _alive(p)], "a process of the sweep outlived it"
    finally:
        for pid in [main.pid, *_descendants(main.pid)]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    stopped = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert [s["status"] for s in stopped] == ["interrupted", "interrupted"]
    if sig == "SIGTERM":
        assert main.returncode == 128 + signal.SIGTERM, err[-2000:]
        assert "Traceback" not in err
        assert "prune-run: 0 job(s) of the sweep failed and 2 were interrupted, of 2" in err
        return  # the re-run after a kill is the SIGKILL case's
    rerun = run_cli(args, cwd=tmp_path, console_script=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stdout.count("resuming ") + rerun.stderr.count("resuming ") == 2
    done = [json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json")]
    assert done == ["completed", "completed"]
