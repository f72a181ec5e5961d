"""Atomic writes and safe reads of everything a run stores.

Every file is written to a temporary sibling and moved into place with ``os.replace``, which is
atomic on POSIX file systems, so a crash never leaves a half-written checkpoint, CSV or JSON.
Files get the permissions the user's umask gives (``mkstemp`` alone would make them 0600).
Ctrl-C during a write takes effect once the file is in place (``interrupts_deferred``).

Every torch file is read with ``weights_only=True``: tensors, containers and plain values only,
so a crafted pickle given as a checkpoint or a ``dense_from`` model cannot run code.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prune_cli.errors import UserError

if TYPE_CHECKING:
    import torch


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: permissions of the files a run writes: what ``open()`` would give under the user's umask
FILE_MODE = 0o666 & ~_current_umask()
TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back until the block has run, then deliver it.

    Why: a KeyboardInterrupt raised inside ``torch.save``'s zip writer leaves the writer in a
    state where closing it raises a RuntimeError ("unexpected pos"), which hides the interrupt:
    the run ended with a traceback and exit status 1 instead of being marked interrupted. Signal
    handlers exist only in the main thread; elsewhere, or when SIGINT's handler was not set from
    Python, the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:  # to the handler that was there: KeyboardInterrupt, by default
            signal.raise_signal(signal.SIGINT)


def _atomic(path: Path, write: Any, mode: str = "w", durable: bool = True) -> None:
    with interrupts_deferred():
        _write_and_replace(path, write, mode, durable)


def _write_and_replace(path: Path, write: Any, mode: str, durable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
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


def remove_stale_temporaries(directory: Path) -> None:
    """Delete the ``.*.tmp`` files that a killed writer left anywhere under ``directory``."""
    for tmp in Path(directory).rglob(f".*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def load_torch(
    path: Path, map_location: str | torch.device = "cpu", what: str = "file", mmap: bool = False
) -> Any:
    """Load a torch file safely; a missing, corrupt or unsafe file is a one-line ``UserError``.

    ``mmap=True`` maps the tensors' storage instead of reading it: for a look at a file's small
    entries (a checkpoint's config hash) without reading its weights."""
    import torch

    path = Path(path)
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
    with interrupts_deferred(), open(path, "a", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())


def save_text(text: str, path: Path) -> None:
    _atomic(Path(path), lambda fh: fh.write(text))
