"""Collect run directories into pandas tables: the read side of the results contract.

A run directory is any directory holding ``summary.json``; a multirun directory is searched
recursively. Runs that failed, are still running, or cannot be read (a summary that is not a
mapping, a config that is not YAML, a corrupt CSV, a level without ``sparsity``...) are listed
with the reason but left out of the result tables.

Grouping cannot lie: a report row is the set of runs whose configs (``config.yaml``, flattened
to dotted keys) differ only in ``seed``. Each run gets

- ``label``: its family (the method name, or ``dense`` for a run that trained only its dense
  level) plus every setting that varies across the report, with this run's value, for example
  ``magnitude sparsity=0.5 train.lr=0.1``. Within one (dataset, model) two runs share a label
  exactly when their configs differ only in seed (and the settings in :data:`IGNORED`);
- ``series``: the label without the pruning target (``ratio``, ``sparsity``, ``rate``): the
  curve a method draws across targets, which the recall-distortion statistics compare;
- ``target``: the nominal pruning ratio t = params before / params after of the run's final
  level (``ratio``, or 1 / (1 - sparsity), or (1 - rate)^-levels); None when sparsity emerges
  from training (SAP, DNS, gRDA) or for dense runs.

Settings are compared within a study (dataset, model), the first columns of every row key (a
report over two datasets need not label every run with the datasets' own training presets).
Method settings are compared among runs of the same family (each method has its own settings
and defaults: magnitude's ``levels: 3`` against random's ``levels: 1`` is not a variation, the
method name already tells them apart); the other settings among all pruned runs, and among all
dense runs (a dense baseline's unused ``train.retrain`` need not label every pruned run).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pandas.api.types import is_numeric_dtype

from prune_cli.identity import NON_RESULT_KEYS, only_dataset_settings
from prune_cli.paths import RunPaths

#: dotted config keys (and their children) that never separate report rows: the seed (rows are
#: over seeds), ``dense_from`` (a path that differs per seed), Hydra's own settings, and the
#: settings that do not change results (the config hash leaves them out too)
IGNORED = ("seed", "dense_from", "hydra", *NON_RESULT_KEYS)

#: method settings that set the pruning target: kept apart in ``series``, summed up in ``target``
TARGET_KEYS = ("method.ratio", "method.sparsity", "method.rate")

#: a structured method's measurements of its thinner network (``method_info``), shown beside
#: the run's final level: measured latency is kept as measured, never recomputed
STRUCTURED_KEYS = {
    "latency_dense_ms": "latency_dense_ms",
    "latency_thin_ms": "latency_thin_ms",
    "latency_ratio": "latency_ratio",
    "macs_after": "macs_thin",
    "params_after": "params_thin",
}

#: the Crossword metric search (``method=crossword``): the chosen metric, its objective and the
#: premise check (rank correlation of objective and pruned accuracy over the candidates)
SEARCH_KEYS = {
    "objective": "search_objective",
    "objective_accuracy_spearman": "search_objective_accuracy_spearman",
}

#: the pruning-limit analysis (Zhang et al. 2024, ``method=limit``): predicted and actual limits
#: beside the run's final level
LIMIT_KEYS = {
    "predicted_limit": "predicted_limit",
    "actual_limit": "actual_limit",
    "actual_limit_tolerance": "actual_limit_tolerance",
    "dense_accuracy": "limit_dense_accuracy",
    "eps": "limit_eps",
    "hessian_trace": "hessian_trace",
}

#: the columns each result CSV must have (more are allowed; a file that is absent, as
#: ``gini.csv`` in runs written before it existed, is an empty table)
CSV_COLUMNS = {
    "per_class_recall.csv": ("level", "stage", "class_name", "recall"),
    "pqi.csv": ("level", "stage", "scope", "name", "p", "q", "pqi"),
    "gini.csv": ("level", "stage", "scope", "name", "gini"),
    "sparsity.csv": ("level", "name", "sparsity"),
    "recall_distortion.csv": ("level",),
}

RUN_COLUMNS = [
    "run",
    "status",
    "reason",
    "dataset",
    "model",
    "method",
    "label",
    "series",
    "target",
    "seed",
]


class Unreadable(Exception):
    """A run directory whose files cannot be read as prune-run writes them."""


@dataclass
class Collection:
    runs: pd.DataFrame  # one row per run: run, status, reason, dataset, model, method, label...
    levels: pd.DataFrame  # one row per run and level, with the run's columns
    pqi: pd.DataFrame
    recall: pd.DataFrame
    sparsity: pd.DataFrame
    distortion: pd.DataFrame
    gini: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: each setting that varies across the completed runs -> where it varies (families)
    varying: dict[str, list[str]] = field(default_factory=dict)

    @property
    def completed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "completed"]


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
            runs = sorted(p.parent for p in path.rglob("summary.json"))
        else:
            runs = []
        for run in runs:
            found.setdefault(run.resolve(), run)
    return sorted(found.values())


def is_collapsed(value: Any) -> bool:
    """A level's ``collapsed`` entry as read back: True, 1.0 after pandas mixed it with missing
    values, or None / NaN for levels measured before it existed."""
    return value is True or value == 1.0


def unpruned(levels: pd.DataFrame) -> pd.Series:
    """Rows with every weight left (up to rounding of the stored sparsity)."""
    return levels["remaining"] >= 1.0 - 1e-9


def _any_collapsed(values: pd.Series) -> bool:
    return any(map(is_collapsed, values))


def dense_baselines(levels: pd.DataFrame) -> pd.DataFrame:
    """The dense models among level rows, each once.

    Level 0 is the dense model only where nothing is pruned yet: SA++, ACDC, gRDA and filter
    pruning early in training sparsify while they train, so their level 0 is the sparse result.
    The runs of a series at one seed (one per target) share one dense training: one row per
    (series, seed), averaged where they trained it apart (another device or thread count), or
    a series at five targets would count each seed's dense model five times.
    """
    dense = levels[(levels["level"] == 0) & unpruned(levels)]
    keys = ["series", "seed"]
    if dense.empty:
        return dense
    how = {
        c: _any_collapsed if c == "collapsed" else "mean" if is_numeric_dtype(dense[c]) else "first"
        for c in dense.columns
        if c not in keys
    }
    return dense.groupby(keys, as_index=False, sort=False, dropna=False).agg(how)


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


def _canonical(value: Any) -> str:
    """A comparable text of a config value (equal values, equal texts; 1 and 1.0 are equal)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, default=str)


def _show(value: Any) -> str:
    """A config value as a label shows it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float | str):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def _cell(value: Any) -> Any:
    """A config value as a table cell: scalars as they are, lists and mappings as text."""
    return value if value is None or isinstance(value, int | float | str) else _show(value)


def _damaged(root: Path, files: dict) -> str | None:
    """Why a completed run's level files are not as it wrote them (sizes only: cheap)."""
    for name, recorded in files.items():
        path = root / name
        if not path.is_file():
            return f"{name} is missing"
        if isinstance(recorded, dict) and path.stat().st_size != recorded.get("bytes"):
            return f"{name} is truncated"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_levels(levels: Any) -> list[dict]:
    if not isinstance(levels, list):
        raise Unreadable("summary levels is not a list")
    for i, level in enumerate(levels):
        if not isinstance(level, dict):
            raise Unreadable(f"summary level entry {i} is not a mapping")
        for key in ("level", "sparsity"):
            if key not in level:
                raise Unreadable(f"summary level entry {i} has no {key}")
            if not _number(level[key]):
                raise Unreadable(f"summary level entry {i} has a non-numeric {key}")
    numbers = [level["level"] for level in levels]
    if len(set(numbers)) != len(numbers):  # a row's mean would count that run twice
        raise Unreadable("summary lists a level twice")
    return levels


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


def _read_csv(root: Path, name: str) -> pd.DataFrame:
    path = root / name
    if not path.exists():
        return pd.DataFrame()
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        # EmptyDataError and ParserError are ValueErrors; one line of pandas' text is enough
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unreadable(f"{name} is corrupt: {reason}") from None
    missing = [c for c in CSV_COLUMNS[name] if c not in frame.columns]
    if missing:
        raise Unreadable(f"{name} is corrupt: no column {', '.join(missing)}")
    # a header without rows (recall_distortion.csv of a run with only a dense level 0) reads
    # as text columns: nothing there to be non-numeric
    if not frame.empty and not pd.api.types.is_numeric_dtype(frame["level"]):
        raise Unreadable(f"{name} is corrupt: non-numeric level values")
    frame.insert(0, "run", str(root))
    return frame


def _read_run(root: Path) -> dict:
    """Everything the report needs from one run directory, or its status and why not."""
    paths = RunPaths(root)
    try:
        summary = json.loads(paths.summary.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"run": str(root), "status": "unreadable", "reason": f"summary.json: {exc}"}
    if not isinstance(summary, dict):
        return {"run": str(root), "status": "unreadable", "reason": "summary is not a mapping"}
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
        # analyses of the dense level (analysis=[limit]); their figures go on every level row
        "analysis": summary.get("analysis") if isinstance(summary.get("analysis"), dict) else {},
        "method_info": summary.get("method_info")
        if isinstance(summary.get("method_info"), dict)
        else {},
    }
    if run["status"] == "completed" and isinstance(summary.get("files"), dict):
        damage = _damaged(root, summary["files"])
        if damage is not None:
            return {**run, "status": "damaged", "reason": damage}
    try:
        config = _read_config(paths)
        if run["status"] != "completed":
            return {**run, "config": config or {}}
        if config is None:
            raise Unreadable("config.yaml is missing: its runs cannot be grouped")
        run["config"] = config
        run["levels"] = _check_levels(summary.get("levels", []))
        if not run["levels"]:
            raise Unreadable("summary has no levels")
        run["csv"] = {name: _read_csv(root, name) for name in CSV_COLUMNS}
    except Unreadable as exc:
        return {**run, "status": "unreadable", "reason": str(exc), "config": {}, "levels": []}
    return run


def _is_dense(run: dict) -> bool:
    """A run that only trained its dense level 0 (a ``dense_from`` source, a baseline)."""
    levels = run.get("levels", [])
    if not (len(levels) == 1 and levels[0].get("sparsity", 0) == 0):
        return False
    # a method that ends at level 0 by design and reports an analysis (method=limit: the
    # pruning limit) is its own family, not a dense baseline
    info = run.get("method_info") or {}
    return "predicted_limit" not in info


def _family(run: dict) -> str:
    if _is_dense(run):
        return "dense"
    return str(run.get("method") or run["config"].get("method.name") or "?")


def target_ratio(config: dict[str, Any]) -> float | None:
    """The nominal pruning ratio t of a run's final level, from its (flattened) method config.

    As the level schedule reads it (``pruning/level.py``): ``ratio`` when set; else ``rate`` of
    the remaining weights per level, over ``levels`` levels; else ``sparsity``. None for methods
    whose sparsity emerges from training.
    """
    ratio, rate = config.get("method.ratio"), config.get("method.rate")
    sparsity, levels = config.get("method.sparsity"), config.get("method.levels", 1)
    if _number(ratio):
        t = float(ratio)
    elif _number(rate) and _number(levels) and 0 < rate < 1:
        t = (1.0 - rate) ** -levels
    elif _number(sparsity) and 0 <= sparsity < 1:
        t = 1.0 / (1.0 - sparsity)
    else:
        return None
    return float(f"{t:.6g}")  # 1 / (1 - 0.9) is 10.000000000000002: one target, not two


def _varying(runs: list[dict]) -> dict[tuple[Any, Any, str], set[str]]:
    """(dataset, model, family) -> the settings that differ between runs they are compared among.

    Method settings are compared within a family; the others within the dense runs and within
    the pruned runs of a study (a key missing from a run's config counts as a value of its own).
    """
    pools: dict[tuple[Any, Any, str, bool], list[dict]] = {}
    for r in runs:
        family, study = _family(r), (r.get("dataset"), r.get("model"))
        pools.setdefault((*study, family, True), []).append(r)  # method settings
        kind = "dense" if family == "dense" else "pruned"
        pools.setdefault((*study, kind, False), []).append(r)
    found: dict[tuple[Any, Any, str], set[str]] = {}
    for (dataset, model, _, method_keys), members in pools.items():
        keys = {k for r in members for k in r["config"] if k.startswith("method.") == method_keys}
        for key in keys:
            if len({_canonical(r["config"].get(key, "<unset>")) for r in members}) > 1:
                for family in {_family(r) for r in members}:
                    found.setdefault((dataset, model, family), set()).add(key)
    return found


def _labels(runs: list[dict], varying: dict[tuple[Any, Any, str], set[str]]) -> None:
    for r in runs:
        family = _family(r)
        parts, series = [family], [family]
        for key in sorted(varying.get((r.get("dataset"), r.get("model"), family), ())):
            text = f"{key.removeprefix('method.')}={_show(r['config'].get(key))}"
            parts.append(text)
            if key not in TARGET_KEYS:
                series.append(text)
        r["label"], r["series"] = " ".join(parts), " ".join(series)
        r["target"] = None if family == "dense" else target_ratio(r["config"])


def collect(paths: list[Path]) -> Collection:
    runs = [_read_run(p) for p in find_runs(paths)]
    done = [r for r in runs if r["status"] == "completed"]
    by_family = _varying(done)
    _labels(done, by_family)
    # each varying setting -> the families whose labels show it, for the report's notes
    varying: dict[str, list[str]] = {}
    for (_, _, family), keys in sorted(by_family.items(), key=str):
        for key in keys:
            varying.setdefault(key, []).append(family)
    varying = {k: sorted(set(v)) for k, v in sorted(varying.items())}
    for r in runs:
        if r["status"] != "completed":
            r["label"] = r["series"] = r.get("method")
    run_frame = pd.DataFrame(
        [{k: r.get(k) for k in RUN_COLUMNS} for r in runs], columns=RUN_COLUMNS
    )
    # the varying settings' values, one column each (dotted names), for the CSV tables
    for key in varying:
        run_frame[key] = [_cell(r["config"].get(key)) for r in runs]
    info = run_frame.set_index("run")[
        ["dataset", "model", "method", "label", "series", "target", "seed", *varying]
    ]
    level_rows = []
    for r in done:
        last = max(lv["level"] for lv in r["levels"])
        structured: dict[str, Any] = {
            column: r["method_info"][key]
            for key, column in {**STRUCTURED_KEYS, **LIMIT_KEYS, **SEARCH_KEYS}.items()
            if _number(r["method_info"].get(key))
        }
        if "objective_accuracy_spearman" in r["method_info"]:
            structured["search_expression"] = r["method_info"].get("expression")
        limit = r.get("analysis", {}).get("limit")
        analysed = {
            f"analysis_{column}": limit[key]
            for key, column in LIMIT_KEYS.items()
            if isinstance(limit, dict) and _number(limit.get(key))
        }
        for lv in r["levels"]:
            level_rows.append(
                {
                    "run": r["run"],
                    **lv,
                    **analysed,
                    **(structured if lv["level"] == last else {}),
                }
            )
    levels = pd.DataFrame(level_rows)
    if not levels.empty:
        levels = levels.join(info, on="run")
        levels["remaining"] = 1.0 - levels["sparsity"]

    def gather(name: str) -> pd.DataFrame:
        frames = [r["csv"][name] for r in done if not r["csv"][name].empty]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True).join(info, on="run")

    return Collection(
        runs=run_frame,
        levels=levels,
        pqi=gather("pqi.csv"),
        gini=gather("gini.csv"),
        recall=gather("per_class_recall.csv"),
        sparsity=gather("sparsity.csv"),
        distortion=gather("recall_distortion.csv"),
        varying=varying,
    )
