"""prune-run: an experiment runner for deep-network pruning research.

Layers, with dependencies pointing one way only::

    cli -> experiment -> {training, pruning, models, data, reporting} -> foundations

The foundations (``registry``, ``errors``, ``io``, ``paths``, ``metrics``) import nothing else
from the package. Pruning code works on any ``nn.Module`` and never imports a model or a dataset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from prune_cli.api import Evaluation, Run, RunFileError, Runs, load_run, load_runs

#: the Python API (``prune_cli/api.py``), imported on first use: ``import prune_cli`` stays
#: cheap for the command line, which never needs pandas through it
_API = ("load_run", "load_runs", "Run", "Runs", "Evaluation", "RunFileError")
__all__ = ["Evaluation", "Run", "RunFileError", "Runs", "__version__", "load_run", "load_runs"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from prune_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'prune_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names and the lazily imported API's (``dir(prune_cli)``, tab completion):
    a name that ``__getattr__`` serves exists, so it is listed."""
    return sorted({*globals(), *_API})
