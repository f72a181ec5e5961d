"""What produced a run: the versions every ``summary.json`` records under ``versions``.

The store (:meth:`prune_cli.store.RunStore.write_summary`) puts them beside the run's identity
(config hash, model, dataset, method, seed), so that a result can be traced to the code and the
libraries that computed it.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

import prune_cli


@functools.cache
def versions() -> dict[str, str | None]:
    """Versions of prune-run, torch, torch-pruning and Python, and the git commit of the
    checkout (None outside one). Looked up once per process: the summary is rewritten at every
    level, and ``git`` need not run each time."""
    try:
        torch_pruning: str | None = metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        torch_pruning = None
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(prune_cli.__file__).parent,
        )
        commit = done.stdout.strip() if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "prune_run": prune_cli.__version__,
        "torch": torch.__version__,
        "torch_pruning": torch_pruning,
        "python": platform.python_version(),
        "git_commit": commit,
    }
