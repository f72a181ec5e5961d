"""Read one stored run directory as prune-run writes it: the read side's only contact with the
files. A run that failed, is still running, or cannot be read (a summary that is not a mapping,
a config that is not YAML, a corrupt CSV, a word where a number belongs in a CSV or a level
entry, a level without ``sparsity``, a declaration that is not one...) comes back with its
status and the reason, never an exception: one bad run must not cost the report its others.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from prune_cli.identity import NON_RESULT_KEYS, only_dataset_settings
from prune_cli.paths import RunPaths, shared_dense_marker
from prune_cli.pruning.results import Results, stored_results, stored_target
from prune_cli.stored import (
    Unreadable,
    check_files,
    check_identity,
    check_levels,
    is_number,
    shown,
)

__all__ = ["Unreadable", "find_runs", "flatten", "is_number", "read_run"]

#: dotted config keys (and their children) that never separate report rows: the seed (rows are
#: over seeds), ``dense_from`` (a path that differs per seed), Hydra's own settings, and the
#: settings that do not change results (the config hash leaves them out too)
IGNORED = ("seed", "dense_from", "hydra", *NON_RESULT_KEYS)


#: the columns each result CSV must have (more are allowed; a file that is absent, as
#: ``gini.csv`` in runs written before it existed, is an empty table)
CSV_COLUMNS = {
    "per_class_recall.csv": ("level", "stage", "class_name", "recall"),
    "pqi.csv": ("level", "stage", "scope", "name", "p", "q", "pqi"),
    "gini.csv": ("level", "stage", "scope", "name", "gini"),
    "sparsity.csv": ("level", "name", "sparsity"),
    "recall_distortion.csv": ("level",),
}

#: the columns of each result CSV that hold numbers where the file has them (an empty cell, a
#: measure that was not defined, reads as NaN and is allowed): a word there would make every
#: mean over the report fail, so the run is left out instead
CSV_NUMBERS = {
    "per_class_recall.csv": ("level", "support", "recall"),
    "pqi.csv": ("level", "p", "q", "pqi"),
    "gini.csv": ("level", "gini"),
    "sparsity.csv": ("level", "numel", "nonzero", "sparsity"),
    "recall_distortion.csv": (
        "level",
        "recall_dense",
        "recall",
        "balance_dense",
        "balance",
        "intensification",
    ),
}


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories under ``paths``, each once: one run given under two spellings (relative
    and absolute, a symlink, a sweep and a run inside it) is one run, not two seeds; it keeps
    the spelling it was first found under."""
    found: dict[Path, Path] = {}
    for path in paths:
        path = Path(path)
        if (path / "summary.json").is_file():
            runs = [path]
        elif path.is_dir():
            # a shared dense level found in a folder is left out: its level-0 rows are in every
            # run that took it, and counted there (named directly, it is reported as any run)
            # hidden folders are prune-run's own (an old run set aside by an overwrite in
            # progress, Hydra's records), never runs of the folder's
            runs = sorted(
                p.parent
                for p in path.rglob("summary.json")
                if not shared_dense_marker(p.parent).is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts[:-1])
            )
        else:
            runs = []
        for run in runs:
            found.setdefault(run.resolve(), run)
    return sorted(found.values())


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted key: leaf value}; lists are leaves."""
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in IGNORED)


def _damaged(root: Path, files: dict) -> str | None:
    """Why a completed run's level files are not as it wrote them (sizes only: cheap)."""
    for name, recorded in files.items():
        path = root / name
        if not path.is_file():
            return f"{name} is missing"
        if isinstance(recorded, dict) and path.stat().st_size != recorded.get("bytes"):
            return f"{name} is truncated"
    return None


def _read_config(paths: RunPaths) -> dict[str, Any] | None:
    """The run's flattened config; None when it has no config.yaml."""
    if not paths.config.exists():
        return None
    try:
        config = yaml.safe_load(paths.config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Unreadable(f"config.yaml is not readable YAML: {reason}") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise Unreadable("config.yaml is not a mapping")
    if not isinstance(config.get("method", {}), dict):
        raise Unreadable("config.yaml's method is not a mapping")
    only_dataset_settings(config)
    # a null setting is an unset one, as in the config hash: a run made before a setting
    # existed (model.depth, dataset.data_id) is not told apart from one that leaves it null
    return {k: v for k, v in flatten(config).items() if not _ignored(k) and v is not None}


def read_table(
    path: Path, columns: tuple[str, ...] = (), numbers: tuple[str, ...] = ()
) -> pd.DataFrame:
    """A result CSV as prune-run writes it: readable text, rows of the header's width, the
    ``columns`` present, numbers in the ``numbers`` columns (and in ``level``, where there is
    one); anything else raises :class:`Unreadable` naming the file by its name. Also the
    Python API's reader (``prune_cli/api.py``)."""
    name = path.name
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        # EmptyDataError and ParserError are ValueErrors; one line of pandas' text is enough
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unreadable(f"{name} is corrupt: {reason}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise Unreadable(f"{name} is corrupt: no column {', '.join(missing)}")
    # a header without rows (recall_distortion.csv of a run with only a dense level 0) reads
    # as text columns: nothing there to be non-numeric
    level = frame.get("level")
    if not frame.empty and level is not None and not pd.api.types.is_numeric_dtype(level):
        raise Unreadable(f"{name} is corrupt: non-numeric level values")
    if not frame.empty:
        for column in (c for c in numbers if c in frame.columns):
            _check_numeric(frame, name, column)
    return frame


def _read_csv(root: Path, name: str) -> pd.DataFrame:
    path = root / name
    if not path.exists():
        return pd.DataFrame()
    frame = read_table(path, CSV_COLUMNS[name], CSV_NUMBERS[name])
    frame.insert(0, "run", str(root))
    return frame


def _check_numeric(frame: pd.DataFrame, name: str, column: str) -> None:
    """Refuse a column of numbers that holds anything else, naming the first such cell."""
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values[numbers.isna() & values.notna()]
    if bad.empty:  # only booleans: True/False read as such, not as numbers
        bad = values
    row = int(bad.index[0]) + 2  # the file's line: the header is line 1
    raise Unreadable(
        f"{name} is corrupt: column {column} holds a non-number ({shown(bad.iloc[0])}, line {row})"
    )


def _unreadable(root: Path, reason: str) -> dict:
    """A run whose summary is not read: every key a read run has, nothing from its files."""
    return {
        "run": str(root),
        "status": "unreadable",
        "reason": reason,
        "config": {},
        "levels": [],
        "csv": {},
        "summary": {},
        "results": Results(),
    }


def read_run(root: Path) -> dict:
    """Everything the report needs from one run directory, or its status and why not."""
    paths = RunPaths(root)
    try:
        summary = json.loads(paths.summary.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _unreadable(root, f"summary.json: {exc}")
    if not isinstance(summary, dict):
        return _unreadable(root, "summary is not a mapping")
    try:
        # the fields every row of the report carries must be plain values (a list where the
        # dataset's name belongs cannot be grouped), even for a run that is left out
        check_identity(summary)
    except Unreadable as exc:
        return _unreadable(root, str(exc))
    run = {
        "run": str(root),
        "status": summary.get("status", "unknown"),
        "reason": summary.get("reason"),
        "dataset": summary.get("dataset"),
        "model": summary.get("model"),
        "method": summary.get("method"),
        "seed": summary.get("seed"),
        "config": {},
        "levels": [],
        "csv": {},
        "summary": summary,
        "results": Results(),
    }
    if run["status"] == "completed" and "files" in summary:
        try:
            files = check_files(summary["files"])
        except Unreadable as exc:
            return {**run, "status": "unreadable", "reason": str(exc)}
        damage = _damaged(root, files)
        if damage is not None:
            return {**run, "status": "damaged", "reason": damage}
    try:
        config = _read_config(paths)
        if run["status"] != "completed":
            return {**run, "config": config or {}}
        if config is None:
            raise Unreadable("config.yaml is missing: its runs cannot be grouped")
        run["config"] = config
        try:
            run["results"] = stored_results(summary)
        except ValueError as exc:
            raise Unreadable(f"summary {exc}") from None
        run["target_unit"], run["target"] = stored_target(summary, config)
        run["levels"] = check_levels(summary.get("levels", []))
        if not run["levels"]:
            raise Unreadable("summary has no levels")
        run["csv"] = {name: _read_csv(root, name) for name in CSV_COLUMNS}
    except Unreadable as exc:
        return {**run, "status": "unreadable", "reason": str(exc), "config": {}, "levels": []}
    return run
