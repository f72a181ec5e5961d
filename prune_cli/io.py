"""Atomic writes: a crash never leaves a half-written checkpoint, CSV or JSON behind.

Every file is written to a temporary sibling and moved into place with ``os.replace``, which is
atomic on POSIX file systems.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from prune_cli.errors import UserError


def _atomic(path: Path, write: Any, mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path) -> None:
    _atomic(Path(path), lambda fh: torch.save(obj, fh), mode="wb")


def load_torch(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint; a corrupt or truncated file is a one-line ``UserError``."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise UserError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}); delete it or "
            "re-run with overwrite=true"
        ) from exc


def save_json(obj: Any, path: Path) -> None:
    _atomic(Path(path), lambda fh: json.dump(obj, fh, indent=2, sort_keys=False, default=str))


def load_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def save_csv(rows: Iterable[Sequence[Any]], header: Sequence[str], path: Path) -> None:
    def write(fh: Any) -> None:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)

    _atomic(Path(path), write)


def save_text(text: str, path: Path) -> None:
    _atomic(Path(path), lambda fh: fh.write(text))
