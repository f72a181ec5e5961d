"""The run directory's ground rules, below the run store: where a run may be written, one
writer at a time (an exclusive ``flock`` on ``.lock``), no symbolic link written through, and
the digests that tell a level file as written from a truncated or changed one.

Used by :class:`~prune_cli.store.RunStore`, by the sweep lock (:mod:`prune_cli.sweep`) and by
the shared dense level (:mod:`prune_cli.shared_dense`, whose checks reuse ``verify_files``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prune_cli.errors import UserError
from prune_cli.io import load_json_mapping, open_nofollow, refuse_link

LOCK_NAME = ".lock"


def check_location(root: Path, setting: str = "hydra.run.dir", what: str = "run directory") -> None:
    """Refuse, before anything is written, a run (or sweep) directory that cannot hold a run;
    ``setting`` is the one the message tells the user to change."""
    root = Path(root).absolute()
    for parent in [root, *root.parents]:
        if parent.exists():
            if not parent.is_dir():
                where = "is" if parent == root else f"is under {parent}, which is"
                raise UserError(
                    f"{what} {root} {where} a file, not a directory; choose another {setting}"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                if parent == root and shows_only(root):
                    return  # a completed run on read-only storage is shown, which writes nothing
                raise UserError(
                    f"{what} {root} cannot be written ({parent} is read-only); choose "
                    f"another {setting} or fix its permissions"
                )
            return


def shows_only(root: Path) -> bool:
    """Whether ``root`` holds a completed run (which a plain ``prune-run`` only shows)."""
    try:
        summary = load_json_mapping(Path(root) / "summary.json")
    except UserError:
        return False
    return summary.get("status") == "completed"


def refuse_links(root: Path) -> None:
    """A one-line ``UserError`` naming the first symbolic link inside the run directory: the
    run writes, appends to or deletes its files, and through a link it would do so to another
    file (``.lock -> ~/notes.txt`` was truncated to a pid)."""
    for folder, dirs, files in os.walk(root):  # os.walk does not descend into linked folders
        for name in sorted([*dirs, *files]):
            refuse_link(Path(folder) / name)


@contextlib.contextmanager
def directory_lock(root: Path, what: str = "run") -> Iterator[None]:
    """Hold an exclusive lock on ``root`` for the duration; a second holder gets a UserError."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / (LOCK_NAME if what == "run" else f".{what}.lock")
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise UserError(
                f"another prune-run (pid {holder}) is writing the {what} directory {root}; wait "
                "for it to finish or choose another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def file_digest(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def verify_files(root: Path, files: dict[str, Any], full: bool = True) -> str | None:
    """Why the recorded files of a run are not intact (missing, truncated, changed), or None."""
    for name, recorded in files.items():
        path = Path(root) / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != recorded.get("bytes"):
            return f"{name} is truncated ({size} bytes, {recorded.get('bytes')} written)"
        if full and file_digest(path)["sha256"] != recorded.get("sha256"):
            return f"{name} has changed since the run wrote it"
    return None


class NoFollowFileHandler(logging.FileHandler):
    """``run.log``, appended to without following a link (a planted ``run.log -> ~/.profile``
    would have been appended to on resume)."""

    def _open(self):  # type: ignore[no-untyped-def]  # logging's own signature
        fd = open_nofollow(Path(self.baseFilename), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    def handleError(self, record: logging.LogRecord) -> None:
        """A full disk drops the line (run.log repeats the console) rather than printing a
        traceback per line; the run's next file write reports the full disk in one line."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return
        super().handleError(record)


def pid_alive(pid: int) -> bool:
    """Whether a process of this id exists on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
