"""Atomic writes and safe reads of everything a run stores.

Every file is written to a temporary sibling and moved into place with ``os.replace``, which is
atomic on POSIX file systems, so a crash never leaves a half-written checkpoint, CSV or JSON.
Files get the permissions the user's umask gives (``mkstemp`` alone would make them 0600).
Ctrl-C (and SIGTERM / SIGHUP, the signals of a batch system's preemption) during a write takes
effect once the file is in place (``interrupts_deferred``).

No write follows a symbolic link: a link planted in a run directory (``run.log -> ~/.bashrc``)
would make the run write into the file it points at. Appends and locks open with
``O_NOFOLLOW``; an atomic write refuses to replace a link (``os.replace`` would swap the link
itself, silently moving the run's file out of the place its link claimed). Each refusal is a
one-line ``UserError`` naming the link.

Every torch file is read with ``weights_only=True``: tensors, containers and plain values only,
so a crafted pickle given as a checkpoint or a ``dense_from`` model cannot run code.

While a run trains, its files go through a :class:`BackgroundWriter`: the main thread turns each
into bytes (a snapshot: training goes on changing the tensors), and one thread writes them in
the order they were handed over, each atomically and ``fsync``'d before it replaces the file
before it, so that the disk's wait overlaps the next epoch's training instead of adding to it.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import errno
import io
import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prune_cli.errors import UserError

if TYPE_CHECKING:
    import torch


#: the signals held back during a write: Ctrl-C, and the batch system's preemption / hang-up
DEFERRED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class SignalInterrupt(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a batch system's preemption, time-out or hang-up), raised where Ctrl-C
    would be, so that the run ends the same way: marked interrupted, resumable."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise SignalInterrupt(signum)


def interrupt_on_termination() -> None:
    """Make SIGTERM and SIGHUP raise :class:`SignalInterrupt` in this (main) thread; a signal
    the user chose to ignore (``nohup``) stays ignored. Elsewhere than in the main thread Python
    cannot set handlers, and the signals keep their effect."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in DEFERRED_SIGNALS:
        if signum != signal.SIGINT and signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _raise_interrupt)


def interrupt_reason(exc: BaseException) -> str:
    """How the summary's reason names an interrupt: ``interrupted`` or ``interrupted by
    SIGTERM``."""
    return f"interrupted by {exc.name}" if isinstance(exc, SignalInterrupt) else "interrupted"


def interrupt_exit_status(exc: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process ended by it (Ctrl-C: 130)."""
    return 128 + (exc.signum if isinstance(exc, SignalInterrupt) else signal.SIGINT)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: permissions of the files a run writes: what ``open()`` would give under the user's umask
FILE_MODE = 0o666 & ~_current_umask()
TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT), SIGTERM and SIGHUP back until the block has run, then deliver them.

    Why: a KeyboardInterrupt raised inside ``torch.save``'s zip writer leaves the writer in a
    state where closing it raises a RuntimeError ("unexpected pos"), which hides the interrupt:
    the run ended with a traceback and exit status 1 instead of being marked interrupted. The
    run's SIGTERM / SIGHUP handlers raise the same interrupt, so they wait too. Signal handlers
    exist only in the main thread; elsewhere the block runs as it is, and a signal whose handler
    was not set from Python (or is the default action, which kills without a word) is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {}
    for signum in DEFERRED_SIGNALS:
        previous = signal.getsignal(signum)
        # SIGINT's default is Python's KeyboardInterrupt handler; SIG_DFL / SIG_IGN / None are
        # not Python's to defer (a SIGTERM without the run's handler kills as it always did)
        if callable(previous):
            held[signum] = previous
    caught: list[int] = []
    for signum in held:
        signal.signal(signum, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for signum, previous in held.items():
            signal.signal(signum, previous)
        for signum in dict.fromkeys(caught):  # to the handlers that were there, first come first
            signal.raise_signal(signum)


class DiskFull(UserError):
    """A run file could not be written because the disk (or the user's quota) is full."""


def _full_disk(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a full disk or quota: torch.save's zip writer turns
    the ENOSPC of its file into ``RuntimeError: [enforce fail at inline_container.cc] ...``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """A full disk while writing ``path`` becomes one line naming the file (a ``DiskFull``
    ``UserError``), instead of a chained traceback through torch's zip writer."""
    try:
        yield
    except UserError:
        raise
    except (OSError, RuntimeError) as exc:
        marked = isinstance(exc, RuntimeError) and (
            "unexpected pos" in str(exc) or "inline_container" in str(exc)
        )
        if not (_full_disk(exc) or marked):
            raise
        raise DiskFull(
            f"no space left on device while writing {path}; free some space and re-run the "
            "same command to resume"
        ) from None


def _atomic(path: Path, write: Any, mode: str = "w", durable: bool = True) -> None:
    with interrupts_deferred(), writing(path):
        _write_and_replace(path, write, mode, durable)


def refuse_link(path: Path) -> None:
    """A one-line ``UserError`` if ``path`` is a symbolic link (a run never writes through one)."""
    if os.path.islink(path):
        raise UserError(
            f"{path} is a symbolic link; prune-run does not write through links (it would "
            "change the file it points at): remove the link and re-run"
        )


def open_nofollow(path: Path, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` with a one-line ``UserError``."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            refuse_link(path)
        raise


def _write_and_replace(path: Path, write: Any, mode: str, durable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_link(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path) -> None:
    import torch  # here, not at the top: the report side writes text files without torch

    _atomic(Path(path), lambda fh: torch.save(obj, fh), mode="wb")


def torch_bytes(obj: Any, path: Path) -> bytes:
    """What :func:`save_torch` would write to ``path``, as bytes (the same bytes: ``torch.save``
    writes a file object and a buffer alike). Ctrl-C waits, and a full disk's error names
    ``path``, as when the file is written (see :func:`interrupts_deferred`)."""
    import torch

    buffer = io.BytesIO()
    with interrupts_deferred(), writing(Path(path)):
        torch.save(obj, buffer)
    return buffer.getvalue()


def remove_stale_temporaries(directory: Path) -> None:
    """Delete the ``.*.tmp`` files that a killed writer left anywhere under ``directory``."""
    for tmp in Path(directory).rglob(f".*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def load_torch(
    path: Path,
    map_location: str | torch.device = "cpu",
    what: str = "file",
    mmap: bool = False,
    data: bytes | None = None,
) -> Any:
    """Load a torch file safely; a missing, corrupt or unsafe file is a one-line ``UserError``.

    ``mmap=True`` maps the tensors' storage instead of reading it: for a look at a file's small
    entries (a checkpoint's config hash) without reading its weights. ``data``: the bytes of a
    write of ``path`` not yet done (:meth:`BackgroundWriter.pending`), read instead of the
    file."""
    import torch

    path = Path(path)
    if data is not None:  # a file still being written in the background: its bytes
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    if not path.is_file():
        raise UserError(
            f"{what} {path} is missing; re-run the run that made it, or overwrite=true to start "
            "afresh"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        # weights_only refuses any pickle that would import or call code: treat it as corrupt
        raise UserError(
            f"{what} {path} is corrupt, truncated or not a prune-run file "
            f"({type(exc).__name__}); delete it or re-run with overwrite=true"
        ) from None


def json_text(obj: Any) -> str:
    """The text :func:`save_json` writes (``json.dump`` writes the pieces this joins)."""
    return json.dumps(obj, indent=2, sort_keys=False, default=str)


def save_json(obj: Any, path: Path) -> None:
    _atomic(Path(path), lambda fh: json.dump(obj, fh, indent=2, sort_keys=False, default=str))


def load_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def load_json_mapping(path: Path, what: str = "file") -> dict[str, Any]:
    """A JSON file that must hold a mapping; anything else is a one-line ``UserError``."""
    try:
        value = load_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{what} {path} is unreadable or truncated ({type(exc).__name__}); delete it or "
            "re-run with overwrite=true"
        ) from None
    if not isinstance(value, dict):
        raise UserError(
            f"{what} {path} does not hold a mapping; delete it or re-run with overwrite=true"
        )
    return value


def save_csv(
    rows: Iterable[Sequence[Any]], header: Sequence[str], path: Path, durable: bool = True
) -> None:
    def write(fh: Any) -> None:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)

    _atomic(Path(path), write, durable=durable)


def append_csv(rows: Iterable[Sequence[Any]], path: Path, durable: bool = False) -> None:
    """Append rows to an existing CSV file (not atomic: a crash can leave a partial last line,
    which the run store's rewrite at the start of the next session replaces; Ctrl-C waits for
    the rows). ``durable``: flushed to the disk before returning."""
    with writing(Path(path)):
        fd = open_nofollow(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with writing(Path(path)), interrupts_deferred(), os.fdopen(fd, "a", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())


def save_bytes(data: bytes, path: Path) -> None:
    _atomic(Path(path), lambda fh: fh.write(data), mode="wb")


def save_text(text: str, path: Path) -> None:
    _atomic(Path(path), lambda fh: fh.write(text))


# --- writing in the background ------------------------------------------------------------------
#: bytes of unwritten files the main thread may hand over before it waits for the writer: a
#: few checkpoints of a small network; a large one waits for the one before it
PENDING_BYTES = 64 << 20


@dataclass(frozen=True)
class _Job:
    """One write: the files it changes, how (a call that does it in full), and for a file
    written whole, its bytes (what a read of that file meanwhile gets)."""

    paths: tuple[Path, ...]
    write: Callable[[], None]
    data: bytes | None
    size: int


class BackgroundWriter:
    """Writes a run's files on one thread, in the order they were submitted.

    Why: every epoch ends in a checkpoint, atomic and ``fsync``'d, and the main thread waited
    5-10 ms for each ``fsync`` of a loaded disk (132 in a bare run). Here the main thread hands
    over what is to be written (bytes already: a snapshot of tensors that training goes on
    changing) and trains on; the thread writes each file as :func:`save_bytes` and the other
    writers of this module do, one at a time, so every file is on the disk before the next one
    is begun and a checkpoint is durable before its successor replaces it. A kill loses the
    writes not yet done, as it would if it had come before they were submitted; the next run
    resumes from what the disk holds.

    An error of a write (a full disk: the one-line :class:`DiskFull`) is raised in the main
    thread at its next :meth:`submit` or :meth:`drain`, and the writes submitted after the one
    that failed are dropped (a later file must never stand on the disk without an earlier one).
    """

    def __init__(self, pending_bytes: int = PENDING_BYTES) -> None:
        self.pending_bytes = pending_bytes
        self._cond = threading.Condition()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._current: _Job | None = None  # the job being written
        self._queued_bytes = 0
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop = False

    def submit(
        self,
        paths: Sequence[Path],
        write: Callable[[], None],
        data: bytes | None = None,
    ) -> None:
        """Queue ``write`` (which changes ``paths``); first raise an earlier write's error, and
        wait while more than ``pending_bytes`` wait to be written."""
        size = len(data) if data is not None else 0
        with self._cond:
            while True:
                self._raise_error()
                # backpressure: never more than the limit held in memory (one job always fits)
                if not (self._busy() and self._queued_bytes + size > self.pending_bytes):
                    break
                self._cond.wait()
            if self._thread is None:  # started at the first write: a run may write nothing
                # before the job is queued: a job never waits for a thread that did not start
                thread = threading.Thread(target=self._work, name="run-writer", daemon=True)
                thread.start()
                self._thread = thread
            self._jobs.append(_Job(tuple(Path(p) for p in paths), write, data, size))
            self._queued_bytes += size
            self._cond.notify_all()

    def submit_bytes(self, data: bytes, path: Path) -> None:
        """Queue :func:`save_bytes` of ``data`` to ``path``."""
        self.submit((path,), lambda: save_bytes(data, path), data)

    def pending(self, path: Path) -> bytes | None:
        """The bytes of the last write of ``path`` not yet done, if it writes the file whole;
        None when the file on the disk is the latest (or the write is not of bytes)."""
        path = Path(path)
        with self._cond:
            self._raise_error()  # a failed write's file is not on the disk: say why, not "missing"
            jobs = [*([self._current] if self._current else []), *self._jobs]
        for job in reversed(jobs):
            if path in job.paths:
                return job.data
        return None

    def touches(self, path: Path) -> bool:
        """Whether a write of ``path`` is still to be done."""
        path = Path(path)
        with self._cond:
            self._raise_error()
            jobs = [*([self._current] if self._current else []), *self._jobs]
        return any(path in job.paths for job in jobs)

    def drain(self) -> None:
        """Wait until every write submitted is done; raise the error of one that failed."""
        with self._cond:
            while self._busy():
                self._cond.wait()
            self._raise_error()

    def close(self) -> None:
        """:meth:`drain`, then end the thread (the error, if any, is raised after)."""
        try:
            self.drain()
        finally:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join()
                self._thread = None

    def _busy(self) -> bool:
        return bool(self._jobs) or self._current is not None

    def _raise_error(self) -> None:
        """Raise the error of a failed write once (called with the condition held)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stop:
                    self._cond.wait()
                if not self._jobs:  # stopped, and nothing left
                    return
                job = self._current = self._jobs.popleft()
            try:
                job.write()
            except BaseException as exc:  # handed to the main thread, which reports it
                with self._cond:
                    self._error = exc
                    # written after a file that failed, they would break the order
                    self._jobs.clear()
                    self._queued_bytes = 0
                    self._current = None
                    self._cond.notify_all()
                continue
            with self._cond:
                self._current = None
                self._queued_bytes -= job.size
                self._cond.notify_all()
