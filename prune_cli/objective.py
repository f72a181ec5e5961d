"""The number a hyperparameter search optimises, read from a finished run's ``summary.json``.

Hydra's sweepers (the Optuna sweeper of ``hparams_search=NAME``, ``prune_cli/conf/hparams_search/``)
read the task function's return value. With ``objective`` set, ``prune-run`` returns one float:

- ``last_val_accuracy``: the last level's validation accuracy (a fraction in [0, 1]);
- ``max_sparsity_within``: the highest sparsity (a fraction) among the levels whose validation
  accuracy is no more than ``objective_tolerance`` accuracy points below the dense level 0's.

Both read the validation split only: the test split is for reporting, and a search that chose
by it would report a test accuracy it had been fitted to. A run with no validation split
(``dataset.val_size=0``) is refused when its config is composed. The value is computed from
the stored ``summary.json`` after the run returns, so a search that meets a finished run (the
same config hash: the objective settings are not in it, ``identity.NON_RESULT_KEYS``) reuses it.

This module imports neither torch nor Hydra's sweeper: the entry point imports it on every run.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from prune_cli.errors import ConfigError, RunFailed, UserError

#: the objectives a run can return, by name (``objective=NAME``)
OBJECTIVES = ("last_val_accuracy", "max_sparsity_within")
#: what the optional extra installs, and the plugin module Hydra finds it by
SEARCH_INSTALL = "pip install 'prune-cli[search]'"
_SWEEPER_MODULE = "hydra_plugins.hydra_optuna_sweeper"
#: slack on the tolerance bound: an accuracy of exactly dense - tolerance counts as within
_SLACK = 1e-12


def check(objective: str | None, tolerance: float, val_size: float) -> None:
    """Refuse an objective a run cannot measure (``RunConfig.__post_init__`` calls this)."""
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ConfigError(
            f"objective_tolerance is in accuracy points and must be >= 0, got {tolerance}"
        )
    if objective is None:
        return
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"unknown objective {objective!r}; valid objectives: null, {', '.join(OBJECTIVES)}"
        )
    if not val_size > 0:
        raise ConfigError(
            f"objective={objective} is measured on the validation split and this run has none "
            "(dataset.val_size=0); set dataset.val_size > 0 (the test split never feeds a search)"
        )


def _val_accuracy(level: dict[str, Any]) -> float:
    value = level.get("val_accuracy")
    return float(value) if isinstance(value, int | float) else math.nan


def value(objective: str, tolerance: float, levels: list[dict[str, Any]]) -> float:
    """The objective of a run's level records (``summary.json``'s ``levels``): validation
    accuracy and sparsity only, never a test metric."""
    if not levels:
        raise RunFailed(f"objective={objective}: the run recorded no level")
    levels = sorted(levels, key=lambda lv: int(lv["level"]))
    if objective == "last_val_accuracy":
        result = _val_accuracy(levels[-1])
    elif objective == "max_sparsity_within":
        dense = levels[0]
        if int(dense["level"]) != 0 or float(dense.get("sparsity") or 0.0) > 0:
            # a method that sparsifies while it trains has no dense level to compare with
            raise ConfigError(
                "objective=max_sparsity_within compares with a dense level 0 and this run's "
                "level 0 is already sparse; use objective=last_val_accuracy"
            )
        floor = _val_accuracy(dense) - tolerance / 100.0  # points -> a fraction
        within = [
            float(lv["sparsity"]) for lv in levels if _val_accuracy(lv) >= floor - _SLACK
        ]  # NaN compares false: a level without a validation accuracy never counts
        result = max(within, default=math.nan)
    else:
        raise ConfigError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    if math.isnan(result):
        raise RunFailed(f"objective={objective}: the run recorded no validation accuracy")
    return result


def measure(objective: str, tolerance: float, run_dir: Path) -> float:
    """The objective of the finished run in ``run_dir``, from its ``summary.json``."""
    from prune_cli.io import load_json_mapping

    summary = load_json_mapping(run_dir / "summary.json", "summary")
    return value(objective, tolerance, list(summary.get("levels") or []))


def _group_choice(overrides: list[str], key: str) -> str | None:
    """The option chosen for ``key`` on the command line (the last one wins, as in Hydra)."""
    chosen = None
    for override in overrides:
        name, sep, option = override.partition("=")
        if sep and name.lstrip("+~").removeprefix("override ") == key:
            chosen = None if option in ("", "null") else option
    return chosen


def _sweeper_installed() -> bool:
    try:
        return importlib.util.find_spec(_SWEEPER_MODULE) is not None
    except ModuleNotFoundError:  # no ``hydra_plugins`` package at all: no plugin installed
        return False


def check_search(overrides: list[str], multirun: bool) -> None:
    """Refuse, in one line, a search that cannot start: the sweeper is an optional extra
    (without it Hydra answers with a multi-line "Could not find 'hydra/sweeper/optuna'"), and
    a search is a multirun."""
    preset = _group_choice(overrides, "hparams_search")
    sweeper = _group_choice(overrides, "hydra/sweeper")
    if (preset or sweeper == "optuna") and not _sweeper_installed():
        raise UserError(
            f"{'hparams_search=' + preset if preset else 'hydra/sweeper=optuna'} needs Hydra's "
            f"Optuna sweeper, which is not installed: {SEARCH_INSTALL}"
        )
    if preset and not multirun:
        raise UserError(
            f"hparams_search={preset} is a search: add -m (prune-run -m hparams_search={preset})"
        )


def is_search(overrides: list[str]) -> bool:
    """Whether the command runs a hyperparameter search (a preset or Hydra's Optuna sweeper)."""
    return (
        _group_choice(overrides, "hparams_search") is not None
        or _group_choice(overrides, "hydra/sweeper") == "optuna"
    )


def no_trial_completed(exc: BaseException) -> bool:
    """Whether ``exc`` is the sweeper's complaint at the end of a search none of whose trials
    completed (Optuna's ``study.best_trial`` raises it): the failed trials say why."""
    return isinstance(exc, ValueError) and "No trials are completed" in str(exc)


def fixed_overrides(overrides: list[str]) -> list[str] | None:
    """Of a search's command line, the overrides that every trial shares (not ``a=1,2``,
    ``choice(...)`` and the like, nor a sweep preset), to compose and check its config once
    before any trial runs; None where the command starts no search."""
    if _group_choice(overrides, "hparams_search") is None:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [
        text
        for text, override in zip(overrides, parsed, strict=True)
        if not override.is_sweep_override() and override.get_key_element() != "sweep"
    ]
