"""A sweep's jobs, seen from the sweep's main process, whatever launcher runs them.

A launcher may run the jobs in other processes (joblib's workers, SLURM tasks), where nothing
the job does reaches the main process's memory. So each job writes a small record of its own
into the sweep directory (``.prune-sweep/<job>.json``: its directory and pid when it starts,
its outcome when it ends), and at the end of the sweep the main process reads the records and
the jobs' ``summary.json``: one line per job that failed or was interrupted, the count, and a
non-zero exit status (:func:`finish`).

No process of the sweep outlives its main process:

- SIGTERM or SIGHUP to the main process is passed on to the workers running a job (which mark
  their runs interrupted, ``io.SignalInterrupt``) before the main process ends as it would;
- a worker watches the main process (its pid is in ``PRUNE_RUN_SWEEP_OWNER``) and, when it is
  gone (killed with SIGKILL, say), interrupts its job the same way and exits: the runs they
  leave resume when the sweep runs again, as after any interrupt.

:class:`SweepWatch` is the Hydra callback that does all this; ``cli.main`` adds it to every
sweep (``hydra.callbacks.prune_run_sweep``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from prune_cli.errors import UserError
from prune_cli.rundir import pid_alive

#: set by ``cli.main`` to its pid, inherited by the launcher's worker processes
OWNER_ENV = "PRUNE_RUN_SWEEP_OWNER"
#: the folder of job records inside the sweep directory
RECORDS = ".prune-sweep"
#: the override that adds the callback to a sweep
CALLBACK_OVERRIDE = "+hydra.callbacks.prune_run_sweep._target_=prune_cli.sweep.SweepWatch"
#: how long a stopping job may take to write its interrupted state before its process goes
GRACE_S = 20.0
#: how often a worker looks for its owner
POLL_S = 0.5

#: the sweep directory's lock, held by the sweep's main process for the whole sweep (here, not
#: in ``cli``: that module may run as ``__main__`` and be imported a second time)
_LOCK = contextlib.ExitStack()
_locked = False
#: the sweep directory, once this (main) process has started the sweep
_sweep_dir: Path | None = None
#: the job this (worker) process runs now: its run directory, or None between jobs
_current_job: Path | None = None
_watchdog: threading.Thread | None = None


@dataclass(frozen=True)
class Outcome:
    """One job of a sweep as it ended: ``status`` completed, failed or interrupted."""

    num: int
    run_dir: str
    status: str
    reason: str


def lock(sweep_dir: Path) -> None:
    """Hold the sweep directory's lock until :func:`release` (once per process); a second
    sweep into the directory gets a UserError."""
    from prune_cli.rundir import check_location, directory_lock

    global _locked
    if _locked:
        return
    check_location(sweep_dir, "hydra.sweep.dir", "sweep directory")
    _LOCK.enter_context(directory_lock(sweep_dir, "sweep"))
    _locked = True


def release() -> None:
    global _locked
    _LOCK.close()
    _locked = False


def _owner() -> int | None:
    value = os.environ.get(OWNER_ENV, "")
    return int(value) if value.isdigit() else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all: a record read while it is written must not be half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _record_path(sweep_dir: Path, num: int) -> Path:
    return sweep_dir / RECORDS / f"{num}.json"


def _summary_status(run_dir: Path) -> tuple[str | None, str | None]:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(summary, dict):
        return None, None
    return summary.get("status"), summary.get("reason")


class SweepWatch(Callback):
    """Hydra's hooks around a sweep (main process) and around each job (its own process)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep_dir
        _sweep_dir = Path(str(config.hydra.sweep.dir))
        # one session at a time (whatever process runs the jobs), and before the records go
        try:
            lock(_sweep_dir)
        except UserError as exc:
            print(f"prune-run: error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        # the records of an earlier session of this sweep are not this one's jobs
        records = _sweep_dir / RECORDS
        if records.is_dir():
            for old in records.glob("*.json"):
                old.unlink(missing_ok=True)
        _forward_termination()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _current_job
        run_dir = Path(str(config.hydra.runtime.output_dir))
        _current_job = run_dir
        record = {"num": int(config.hydra.job.num), "dir": str(run_dir), "pid": os.getpid()}
        _write_json(_record_path(Path(str(config.hydra.sweep.dir)), record["num"]), record)
        owner = _owner()
        if owner is not None and owner != os.getpid():
            _watch_owner(owner)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        global _current_job
        _current_job = None
        num = int(config.hydra.job.num)
        record = {"num": num, "dir": str(config.hydra.runtime.output_dir), "pid": os.getpid()}
        value = job_return._return_value  # the value or the exception, without raising it
        if isinstance(value, BaseException):
            record["failed"] = f"{type(value).__name__}: {value}".splitlines()[0]
        elif isinstance(value, dict) and "failed" in value:
            record["failed"] = str(value["failed"])
        record["ended"] = True
        _write_json(_record_path(Path(str(config.hydra.sweep.dir)), num), record)


def _records(sweep_dir: Path) -> list[dict[str, Any]]:
    """The job records of the sweep, by file name; a record being written or torn is skipped
    (its job is still running or was killed while it wrote)."""
    records = []
    for path in sorted((sweep_dir / RECORDS).glob("*.json"), key=lambda p: p.name):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def outcomes(sweep_dir: Path) -> list[Outcome]:
    """This session's jobs of the sweep, by job number, from their records and summaries."""
    found = []
    for record in _records(sweep_dir):
        try:
            num, run_dir = int(record["num"]), Path(record["dir"])
        except (ValueError, KeyError, TypeError):
            continue
        status, reason = _summary_status(run_dir)
        if record.get("failed"):
            # refused or stopped before it could record itself (another writer, a bad value)
            found.append(Outcome(num, str(run_dir), "failed", str(record["failed"])))
        elif status == "completed":
            found.append(Outcome(num, str(run_dir), "completed", ""))
        elif status in ("failed", "interrupted"):
            found.append(Outcome(num, str(run_dir), status, str(reason or status)))
        elif record.get("ended"):
            found.append(Outcome(num, str(run_dir), "failed", f"ended with status {status}"))
        else:
            found.append(
                Outcome(
                    num,
                    str(run_dir),
                    "interrupted",
                    "stopped before it could record an end (killed?)",
                )
            )
    return sorted(found, key=lambda o: o.num)


def finish(interrupted: bool = False) -> int:
    """At the end of a sweep (main process): one line per job that failed or was interrupted,
    and the count, on stderr; returns that count (0 outside a sweep)."""
    if _sweep_dir is None:
        return 0
    jobs = outcomes(_sweep_dir)
    bad = [o for o in jobs if o.status != "completed"]
    for o in bad:
        print(f"prune-run: job {o.num} {o.status}: {o.run_dir}: {o.reason}", file=sys.stderr)
    if bad:
        failed = sum(o.status == "failed" for o in bad)
        print(
            f"prune-run: {failed} job(s) of the sweep failed and {len(bad) - failed} were "
            f"interrupted, of {len(jobs)}; re-run the same command to resume the interrupted "
            "ones and retry the failed ones (finished jobs are skipped)",
            file=sys.stderr,
        )
    elif interrupted:
        print("prune-run: the sweep was interrupted between jobs", file=sys.stderr)
    return len(bad)


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs...), read from /proc: nothing to install."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            for child in children:
                if child not in found:
                    found.append(child)
                    todo.append(child)
    return found


def _running_workers() -> list[int]:
    """The pids of other processes that run a job of this sweep now."""
    if _sweep_dir is None:
        return []
    children = set(_descendants(os.getpid()))
    pids = []
    for record in _records(_sweep_dir):
        pid = record.get("pid")
        if not record.get("ended") and isinstance(pid, int) and pid in children:
            pids.append(pid)
    return pids


def _forward_termination() -> None:
    """In the main process: SIGTERM / SIGHUP first stop the workers' jobs (each marks its run
    interrupted), then end this process as the handler that was there would (the launcher then
    ends its workers: none outlives the sweep)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN:
            continue  # nohup: the user asked the sweep to live on

        def forward(num: int, frame: Any, previous: Any = previous) -> None:
            workers = _running_workers()
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            _wait_settled(workers, GRACE_S)
            if callable(previous):
                previous(num, frame)
            else:
                signal.signal(num, signal.SIG_DFL)
                os.kill(os.getpid(), num)

        signal.signal(signum, forward)


def _wait_settled(workers: list[int], timeout: float) -> None:
    """Until every job those workers ran has written its end (or the time is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _sweep_dir is not None:
        busy = []
        for record in _records(_sweep_dir):
            if record.get("pid") in workers and not record.get("ended"):
                status, _ = _summary_status(Path(record["dir"]))
                if status in (None, "running") and pid_alive(record["pid"]):
                    busy.append(record["pid"])
        if not busy:
            return
        time.sleep(0.2)


def _watch_owner(owner: int) -> None:
    """In a worker: a daemon thread that stops the job and the process once the sweep's main
    process is gone (a worker of a killed sweep would go on training and hold its run's lock,
    so that a re-run of the sweep was refused)."""
    global _watchdog
    if _watchdog is not None and _watchdog.is_alive():
        return
    parent = os.getppid()

    def watch() -> None:
        while pid_alive(owner) and os.getppid() == parent:
            time.sleep(POLL_S)
        job = _current_job
        if job is not None:
            # the job's own SIGTERM handling marks the run interrupted (io.SignalInterrupt)
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + GRACE_S
            while time.monotonic() < deadline and _current_job is job:
                status, _ = _summary_status(job)
                if status not in (None, "running"):
                    break
                time.sleep(0.2)
        os._exit(1)

    _watchdog = threading.Thread(target=watch, name="prune-run-sweep-owner", daemon=True)
    _watchdog.start()
