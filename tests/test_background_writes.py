"""The run's files written behind the training (``io.BackgroundWriter``, issue 26).

While the levels train, checkpoints, level files, results and summaries go to the disk on one
background thread. What must still hold: the files are written in the order they were handed
over, a failed write (a full disk) is the same one-line error, everything is on the disk before
the run records how it ended and releases its lock, and a kill with writes still pending
resumes to the same files as a run that was never stopped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import run_config

from prune_cli import io, store
from prune_cli.experiment import Experiment
from prune_cli.io import BackgroundWriter, DiskFull
from prune_cli.paths import RunPaths
from prune_cli.training.loop import Trainer

#: two levels of one epoch: a level's end and a pruning within seconds
QUICK = ["model=mlp", "train.epochs=1", "method.levels=1", "progress=false"]
#: every file a run leaves whose bytes must not depend on how often it was stopped
RESULTS = ("metrics", "per_class_recall", "pqi", "gini", "sparsity", "recall_distortion")
WRITER_THREAD = "run-writer"


def _result_bytes(root: Path) -> dict[str, bytes]:
    paths = RunPaths(root)
    out = {name: getattr(paths, name).read_bytes() for name in RESULTS}
    for level in (0, 1):
        out[f"level {level} model"] = paths.level_model(level).read_bytes()
        out[f"level {level} mask"] = paths.level_mask(level).read_bytes()
    return out


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """A run never stopped, to compare the stopped and resumed ones with."""
    root = tmp_path_factory.mktemp("straight") / "run"
    Experiment(run_config(QUICK), root).run()
    return root


# --- the writer on its own ------------------------------------------------------------------------
def test_writes_land_in_the_order_given_and_reads_meanwhile_get_the_latest(tmp_path):
    writer = BackgroundWriter()
    gate, done = threading.Event(), []
    target = tmp_path / "checkpoint.pt"
    writer.submit((tmp_path / "first",), lambda: (gate.wait(10), done.append("first")))
    for i in range(5):
        writer.submit_bytes(f"version {i}".encode(), target)
        writer.submit((), lambda i=i: done.append(i))
    # nothing written yet (the first write is held): a read gets the last bytes handed over
    assert writer.pending(target) == b"version 4" and not target.exists()
    assert writer.touches(target) and not writer.touches(tmp_path / "other")
    gate.set()
    writer.close()
    assert done == ["first", 0, 1, 2, 3, 4]
    assert target.read_bytes() == b"version 4" and writer.pending(target) is None
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_write_is_raised_once_and_drops_the_writes_after_it(tmp_path):
    writer = BackgroundWriter()
    gate = threading.Event()

    def full() -> None:
        gate.wait(10)
        raise DiskFull("no space left on device while writing x; free some space")

    writer.submit((tmp_path / "x",), full)
    writer.submit_bytes(b"later", tmp_path / "later")  # queued behind the failure
    gate.set()
    with pytest.raises(DiskFull, match=r"^no space left"):
        writer.drain()
    assert not (tmp_path / "later").exists()  # never on the disk without the file before it
    writer.submit_bytes(b"after", tmp_path / "after")  # the error was reported: writes go on
    writer.close()
    assert (tmp_path / "after").read_bytes() == b"after"


def test_a_read_after_a_failed_write_raises_its_error_not_a_missing_file(tmp_path):
    """A file whose write failed is not on the disk: looking it up says why (the full disk),
    where a read from the disk would say "missing" or read an older file."""
    writer = BackgroundWriter()
    gate = threading.Event()

    def full() -> None:
        gate.wait(10)
        raise DiskFull("no space left on device while writing m; free some space")

    (tmp_path / "m").write_bytes(b"older")
    writer.submit((tmp_path / "m",), full)
    gate.set()
    with writer._cond:  # the failure recorded
        while writer._busy():
            writer._cond.wait()
    with pytest.raises(DiskFull, match=r"^no space left"):
        writer.pending(tmp_path / "m")
    writer.close()


def test_the_writer_holds_back_the_submitter_past_its_byte_limit(tmp_path):
    writer = BackgroundWriter(pending_bytes=10)
    gate, returned = threading.Event(), threading.Event()
    writer.submit((), lambda: gate.wait(10))
    writer.submit_bytes(b"x" * 8, tmp_path / "a")

    def third() -> None:
        writer.submit_bytes(b"y" * 8, tmp_path / "b")  # 16 bytes would wait: it must wait
        returned.set()

    submitter = threading.Thread(target=third)
    submitter.start()
    assert not returned.wait(0.3)
    gate.set()
    assert returned.wait(10)
    submitter.join()
    writer.close()
    assert (tmp_path / "b").read_bytes() == b"y" * 8


# --- in a run -------------------------------------------------------------------------------------
def _record_writes(monkeypatch: pytest.MonkeyPatch, delay_s: float) -> list[tuple[str, str]]:
    """Log every atomic write (file name, thread) and every lock release; background writes
    are slowed by ``delay_s``, so that a run reaches its end with writes still pending."""
    events: list[tuple[str, str]] = []
    real_write = io._write_and_replace

    def write(path, *args, **kwargs):
        thread = threading.current_thread().name
        if thread == WRITER_THREAD:
            time.sleep(delay_s)
        real_write(path, *args, **kwargs)
        name = Path(path).name
        if name == "summary.json":
            name += ":" + json.loads(Path(path).read_text())["status"]
        events.append((name, thread))

    real_lock = store.directory_lock

    @contextlib.contextmanager
    def lock(root):
        with real_lock(root):
            try:
                yield
            finally:  # the last thing the run does in its directory, however it ends
                events.append(("released", threading.current_thread().name))

    monkeypatch.setattr(io, "_write_and_replace", write)
    monkeypatch.setattr(store, "directory_lock", lock)
    return events


def test_every_file_is_written_before_an_interrupt_is_recorded_and_the_lock_released(
    tmp_path, monkeypatch
):
    events = _record_writes(monkeypatch, delay_s=0.05)
    original, calls = Trainer.train_epoch, []

    def interrupted(self, epoch, generator):  # Ctrl-C in level 1's first epoch
        calls.append(epoch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, epoch, generator)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    root = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Experiment(run_config(QUICK), root).run()
    background = [i for i, (_, thread) in enumerate(events) if thread == WRITER_THREAD]
    names = [name for name, _ in events]
    assert [names[i] for i in background].count("checkpoint.pt") >= 2  # behind the training
    recorded = names.index("summary.json:interrupted")
    assert max(background) < recorded < names.index("released") == len(names) - 1
    # the checkpoint on the disk is the last one the run made: level 1 pruned, not trained
    monkeypatch.undo()
    ck = torch.load(RunPaths(root).checkpoint, weights_only=True)
    assert ck["cursor"]["level"] == 1 and ck["cursor"]["pruned"] and ck["cursor"]["epoch"] == 0


def test_a_completed_run_is_recorded_and_unlocked_after_its_last_background_write(
    tmp_path, monkeypatch
):
    events = _record_writes(monkeypatch, delay_s=0.02)
    assert Experiment(run_config(QUICK), tmp_path / "run").run()["status"] == "completed"
    names = [name for name, _ in events]
    background = [i for i, (_, thread) in enumerate(events) if thread == WRITER_THREAD]
    assert {names[i] for i in background} >= {"checkpoint.pt", "model.pt", "mask.pt"}
    completed = names.index("summary.json:completed")
    assert max(background) < completed < names.index("released") == len(names) - 1
    assert not RunPaths(tmp_path / "run").checkpoint.exists()  # not written back after removal


def test_a_full_disk_in_the_background_is_one_line_exit_2_and_resumes(
    tmp_path, monkeypatch, straight, cli_in_process
):
    real_fsync, synced = os.fsync, []

    def full_in_the_writer(fd):
        if threading.current_thread().name == WRITER_THREAD:
            synced.append(fd)
            if len(synced) == 4:  # pqi.csv, rewritten after the first epoch's checkpoint
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(io.os, "fsync", full_in_the_writer)
    root = tmp_path / "run"
    failed = cli_in_process([*QUICK, f"hydra.run.dir={root}"], tmp_path)
    lines = [ln for ln in failed.stderr.strip().splitlines() if ln.strip()]
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in failed.stderr
    assert lines[0].startswith("prune-run: error: no space left on device while writing ")
    assert lines[0].split("; ")[0].endswith("pqi.csv")
    summary = json.loads(RunPaths(root).summary.read_text())
    assert summary["status"] == "failed" and summary["reason"] in lines[0]
    monkeypatch.setattr(io.os, "fsync", real_fsync)  # space freed: the same command resumes
    resumed = cli_in_process([*QUICK, f"hydra.run.dir={root}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _result_bytes(root) == _result_bytes(straight)


KILLED_RUN = """
import os, sys, threading, time
sys.path.insert(0, {tests!r})
from conftest import run_config
from prune_cli import io
from prune_cli.experiment import Experiment
from prune_cli.paths import RunPaths
from prune_cli.training.loop import Trainer

real_write, calls, writers = io._write_and_replace, [], []
real_init = io.BackgroundWriter.__init__

def kept(self, *args, **kwargs):  # the run's writer, for a look at what it has left to write
    real_init(self, *args, **kwargs)
    writers.append(self)

def slow(*args, **kwargs):  # a slow disk: the kill finds writes still pending
    if threading.current_thread().name == "run-writer":
        time.sleep(0.05)
    return real_write(*args, **kwargs)

def killed(self, epoch, generator):  # kill -9 at the start of level 1's training
    calls.append(epoch)
    if len(calls) == 2:
        checkpoint = RunPaths({root!r}).checkpoint
        print("checkpoint pending:", writers[-1].touches(checkpoint), flush=True)
        os._exit(9)
    return original(self, epoch, generator)

io._write_and_replace = slow
io.BackgroundWriter.__init__ = kept
original, Trainer.train_epoch = Trainer.train_epoch, killed
Experiment(run_config({overrides!r}), {root!r}).run()
"""


def test_a_kill_with_writes_pending_resumes_to_the_same_files(tmp_path, straight):
    root = tmp_path / "run"
    code = KILLED_RUN.format(tests=str(Path(__file__).parent), overrides=QUICK, root=str(root))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert child.returncode == 9, child.stderr[-3000:]
    # killed with the last checkpoints still to be written: the disk holds an older state
    assert "checkpoint pending: True" in child.stdout, child.stdout
    resumed = Experiment(run_config(QUICK), root).run()
    assert resumed["status"] == "completed"
    assert _result_bytes(root) == _result_bytes(straight)
