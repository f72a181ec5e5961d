"""Automatic dense sharing: one trained dense level 0 for every run that would train the same.

Runs whose level 0 is the same plain dense training (the same model with its settings and
weights, data, training, seed and PQI grid; the method declares with
:meth:`~prune_cli.pruning.method.PruningMethod.shares_dense` that its level 0 is plain) take
their dense level from one shared run directory instead of training it again:
``<output_root>/dense/<dataset>-<model>-s<seed>-<key>/``
(:func:`prune_cli.paths.shared_dense_dir`), ``key`` the config hash of the run's result
settings without ``method``, ``dense_from``, ``analysis`` and ``train.retrain`` (which level 0
does not read). That directory holds an ordinary dense-only run (a level method with no
levels: ``dense_only_config``), trained by the normal loop, so it checkpoints every epoch and a
killed training resumes; each run then reuses it exactly as ``dense_from`` does, and its own
files hold its level-0 rows.

Who trains it is decided by :class:`DenseLock`, a lock file made by exclusive create
(``O_CREAT | O_EXCL``, atomic on NFS too, where ``flock`` is not reliable) that holds the
holder's host and pid and whose modification time a thread refreshes while it trains. A lock is
stale, and is taken over, when its holder is a dead process on this host, or when it has not
changed for ``share_dense_stale_s`` seconds as measured by the waiter's own clock (so the hosts'
clocks need not agree). A run that finds the lock held prints one line and polls until the
shared run is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prune_cli.config import RunConfig
from prune_cli.distributed import World
from prune_cli.errors import UserError
from prune_cli.identity import config_hash, result_settings
from prune_cli.io import load_json_mapping, save_text
from prune_cli.paths import RunPaths, shared_dense_dir, shared_dense_lock, shared_dense_marker
from prune_cli.pruning.method import METHODS
from prune_cli.pruning.methods.magnitude import dense_only_config
from prune_cli.recording.console import console
from prune_cli.rundir import pid_alive, verify_files
from prune_cli.training.config import RetrainConfig

#: seconds between two refreshes of a held lock's modification time
HEARTBEAT_S = 5.0
#: seconds between two looks of a waiting run at the lock and the shared run
POLL_S = 1.0
#: settings of a run that do not enter its dense level 0 (``train.retrain``: levels >= 1 only)
NOT_DENSE = ("method", "dense_from", "analysis")


@dataclass(frozen=True)
class SharedDense:
    """The shared dense level a run reuses: its directory, and the epoch its training
    selected (recorded in the run's level-0 entry as if the run had trained it)."""

    root: Path
    selected_epoch: int | None


# --- the lock -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Holder:
    """Who holds a lock file: its first line, ``<host> <pid>``."""

    host: str
    pid: int

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid())

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """None for what is not a holder line (a lock whose creator died before writing it)."""
        parts = text.strip().split()
        if len(parts) != 2 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]))

    def line(self) -> str:
        return f"{self.host} {self.pid}\n"

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


def stale_reason(
    holder: Holder | None, unchanged_s: float, stale_after_s: float, host: str
) -> str | None:
    """Why a lock is stale, or None while its holder may still be training.

    ``unchanged_s``: how long the lock file has shown the same content and modification time
    to the one looking (its holder's heartbeat refreshes the time every few seconds)."""
    if holder is not None and holder.host == host and not pid_alive(holder.pid):
        return f"its holder {holder} has ended"
    if unchanged_s > stale_after_s:
        return f"no heartbeat for {unchanged_s:.0f} s"
    return None


class DenseLock:
    """The lock file of one shared dense level (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        stale_after_s: float,
        heartbeat_s: float = HEARTBEAT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = shared_dense_lock(directory)
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self.me = Holder.me()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        #: what the lock file last looked like to this process, and since when (its clock)
        self._seen: tuple[Any, ...] | None = None
        self._seen_since = 0.0

    # the holder's side
    def acquire(self) -> bool:
        """Create the lock file if none exists (atomically); whether this process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self.me.line().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="dense-lock", daemon=True)
        self._beat.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if self.holder() != self.me:  # taken over (this process was taken for dead)
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file, if it is still this process's."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self.holder() == self.me:
            self.path.unlink(missing_ok=True)

    # the waiter's side
    def _look(self) -> tuple[Any, ...] | None:
        """The lock file's identity, content and modification time; None if there is none."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size, text)

    def holder(self) -> Holder | None:
        look = self._look()
        return None if look is None else Holder.parse(look[3])

    def stale(self) -> str | None:
        """Why the lock is stale (see :func:`stale_reason`), or None (also when it is gone)."""
        look = self._look()
        if look is None:
            self._seen = None
            return None
        if look != self._seen:
            self._seen, self._seen_since = look, self.clock()
        return self._reason()

    def _reason(self) -> str | None:
        """Why the lock last seen is stale, or None."""
        if self._seen is None:
            return None
        holder, unchanged = Holder.parse(self._seen[3]), self.clock() - self._seen_since
        return stale_reason(holder, unchanged, self.stale_after_s, self.me.host)

    def break_stale(self) -> bool:
        """Remove the lock file last seen by :meth:`stale` if it is stale and still that one;
        whether it was removed. One breaker at a time (its own exclusive-create file), so that
        a waiter never removes a lock that another waiter has just taken over."""
        expected = self._seen
        if self._reason() is None:
            return False
        breaker = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(breaker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            # a breaker is held for a moment only: one older than the stale time was left
            # by a process killed while breaking
            with contextlib.suppress(OSError):
                if time.time() - breaker.stat().st_mtime > self.stale_after_s:
                    breaker.unlink()
            return False
        try:
            if expected is None or self._look() != expected:
                return False
            self.path.unlink(missing_ok=True)
            self._seen = None
            return True
        finally:
            os.close(fd)
            breaker.unlink(missing_ok=True)


# --- the shared dense run -----------------------------------------------------------------------
def dense_key(cfg: RunConfig) -> str:
    """The hash of what determines a run's plain dense level 0 (not its method)."""
    settings = {k: v for k, v in result_settings(cfg).items() if k not in NOT_DENSE}
    settings["train"] = {k: v for k, v in settings["train"].items() if k != "retrain"}
    return config_hash(settings)


def dense_config(cfg: RunConfig) -> RunConfig:
    """The dense-only run that trains ``cfg``'s level 0: the same settings, a method with no
    levels (its level 0 is the plain dense training, like that of every sharing method)."""
    method = dense_only_config()
    return dataclasses.replace(
        cfg,
        method=method,
        # not read by level 0: one dense run serves runs that fine-tune differently
        train=dataclasses.replace(cfg.train, retrain=RetrainConfig()),
        dense_from=None,
        analysis=None,
        logger=None,
        overwrite=False,
        share_dense=False,
    )


def shared_dir(cfg: RunConfig) -> Path:
    return shared_dense_dir(
        Path(cfg.output_root).absolute(),
        cfg.dataset.name,
        cfg.model.name,
        cfg.seed,
        dense_key(cfg),
    )


def shares(cfg: RunConfig, world: World, run_dir: Path) -> bool:
    """Whether this run takes a shared dense level: its method's level 0 is plain, sharing is
    on, the run lies under ``output_root`` (where ``prune-run`` puts its runs and sweeps, and
    where the shared level is kept: a run placed elsewhere by hand, as an API call or a test
    does, writes nothing outside its directory), and nothing asks for another dense level
    (``dense_from``, ``overwrite=true``, which retrains the run itself, or a data-parallel
    world, whose ranks train together)."""
    if not cfg.share_dense or cfg.dense_from or cfg.overwrite or world.size > 1:
        return False
    if not Path(run_dir).resolve().is_relative_to(Path(cfg.output_root).resolve()):
        return False
    return METHODS.get(cfg.method.name)(cfg.method).shares_dense()


def completed(root: Path) -> SharedDense | None:
    """The shared dense level in ``root`` if its run is complete; None otherwise."""
    paths = RunPaths(root)
    if not paths.summary.is_file():
        return None
    try:
        summary = load_json_mapping(paths.summary, "summary")
    except UserError:  # not readable as a summary: not a complete run
        return None
    if summary.get("status") != "completed" or not paths.level_model(0).is_file():
        return None
    problem = verify_files(root, summary.get("files") or {})
    if problem is not None:  # every run sharing it would take the damage
        raise UserError(
            f"the shared dense model in {root} is complete but {problem}; delete that "
            "directory to train it again"
        )
    levels = summary.get("levels") or [{}]
    selected = levels[0].get("selected_epoch") if isinstance(levels[0], dict) else None
    return SharedDense(root, None if selected is None else int(selected))


def mark(root: Path) -> None:
    """Write the marker that tells ``prune-report`` this run is a shared dense level."""
    marker = shared_dense_marker(root)
    if not marker.is_file():
        save_text("a dense level 0 shared by the runs whose dense_shared names it\n", marker)


def say(line: str) -> None:
    """One line, as it is: never wrapped (a sweep's log is searched for it), no markup."""
    console.print(line, soft_wrap=True, markup=False, highlight=False)


def obtain(cfg: RunConfig, world: World, poll_s: float = POLL_S) -> SharedDense:
    """The shared dense level of ``cfg``: found complete, trained here under the lock
    (resumed where a killed holder left it), or waited for while another job trains it."""
    from prune_cli.experiment import Experiment  # the loop trains it (it imports this module)

    root = shared_dir(cfg)
    lock = DenseLock(root, cfg.share_dense_stale_s)
    said = False
    while True:
        done = completed(root)
        if done is not None:
            # level 0 is then done at once: the terminal says where it came from
            say(f"level 0 from the shared dense model in {root}")
            return done
        if lock.acquire():
            try:
                done = completed(root)  # finished between the look and the lock
                if done is None:
                    mark(root)
                    say(f"training the shared dense model in {root}")
                    Experiment(dense_config(cfg), root, world=world).run()
                    done = completed(root)
                    assert done is not None, "a dense run that returns is complete"
                return done
            finally:
                lock.release()
        reason = lock.stale()
        if reason is not None and lock.break_stale():  # else another waiter is breaking it
            say(f"taking over the shared dense model in {root}: {reason}")
            continue
        if not said:
            holder = lock.holder()
            say(
                f"waiting for the dense model of {root.name} being trained by "
                f"{holder if holder is not None else 'another job'}"
            )
            said = True
        time.sleep(poll_s)
