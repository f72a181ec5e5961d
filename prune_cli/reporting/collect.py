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
- ``series``: the label without the settings that set the pruning target (the method's
  declared ``target_keys``: ``ratio``, ``sparsity``, ``rate``): the curve a method draws across
  targets, which the recall-distortion statistics compare;
- ``target``: the nominal pruning ratio t = weights before / weights after of the run's final
  level, as the run recorded it (``summary.json``'s ``target``; ``target_unit`` says what it
  counts); None when the method's target counts filters (a fraction of filters is no ratio of
  weights), when sparsity emerges from training, or for dense runs.

What a method adds (columns beside its final level, tables, figure lines) and what its target
counts come from the run's declaration (``summary.json``'s ``results``,
:mod:`prune_cli.pruning.results`): this module names no method.

Settings are compared within a study (dataset, model), the first columns of every row key (a
report over two datasets need not label every run with the datasets' own training presets).
Method settings are compared among runs of the same family (each method has its own settings
and defaults: magnitude's ``levels: 3`` against random's ``levels: 1`` is not a variation, the
method name already tells them apart); the other settings among all pruned runs, and among all
dense runs (a dense baseline's unused ``train.retrain`` need not label every pruned run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pandas.api.types import is_numeric_dtype

from prune_cli.pruning.results import (
    Column,
    Marker,
    Results,
    Table,
)
from prune_cli.reporting.runs import find_runs, is_number, read_run

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
    "target_unit",
    "seed",
]


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
    #: what the completed runs' methods and analyses add: columns, tables, figure lines
    declared: Results = field(default_factory=Results)

    @property
    def completed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "completed"]


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

    Level 0 is the dense model only where nothing is pruned yet: a method that sparsifies while
    it trains (early filter pruning, block phases, a sparsifying optimizer) ends level 0 sparse.
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


def _is_dense(run: dict) -> bool:
    """A run that only trained its dense level 0 (a ``dense_from`` source, a baseline)."""
    levels = run.get("levels", [])
    if not (len(levels) == 1 and levels[0].get("sparsity", 0) == 0):
        return False
    # a method that ends at level 0 by design and reports what it measured there (the
    # pruning limit) is its own family, not a dense baseline: it says so in its declaration
    return run["results"].dense_baseline


def _family(run: dict) -> str:
    if _is_dense(run):
        return "dense"
    return str(run.get("method") or run["config"].get("method.name") or "?")


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
        targets = {f"method.{k}" for k in r["results"].target_keys}
        for key in sorted(varying.get((r.get("dataset"), r.get("model"), family), ())):
            text = f"{key.removeprefix('method.')}={_show(r['config'].get(key))}"
            parts.append(text)
            if key not in targets:
                series.append(text)
        r["label"], r["series"] = " ".join(parts), " ".join(series)
        # the target column is a ratio of weights, comparable across methods: blocks (of equal
        # size) count weights of the layers they cover; a fraction of filters does not (filters
        # differ in size), and its label shows the setting where it varies
        comparable = r["target_unit"] in ("weights", "blocks")
        if family == "dense" or not comparable or not is_number(r["target"]):
            r["target"] = None


def collect(paths: list[Path]) -> Collection:
    runs = [read_run(p) for p in find_runs(paths)]
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
        ["dataset", "model", "method", "label", "series", "target", "target_unit", "seed", *varying]
    ]
    level_rows = []
    for r in done:
        last = max(lv["level"] for lv in r["levels"])
        every, final = _declared_values(r["summary"], r["results"].columns)
        for lv in r["levels"]:
            level_rows.append(
                {"run": r["run"], **lv, **every, **(final if lv["level"] == last else {})}
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
        declared=_union([r["results"] for r in done]),
    )


def _lookup(summary: dict[str, Any], source: str) -> dict[str, Any]:
    """The mapping at a dotted path of the summary (``method_info``, ``analysis.limit``)."""
    node: Any = summary
    for part in source.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _declared_values(
    summary: dict[str, Any], columns: tuple[Column, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The declared columns' values of one run: (on every level row, on the final level's)."""
    every: dict[str, Any] = {}
    final: dict[str, Any] = {}
    for col in columns:
        value = _lookup(summary, col.source).get(col.key)
        if isinstance(value, str) if col.text else is_number(value):
            (every if col.levels == "all" else final)[col.column] = value
    return every, final


def _union(declared: list[Results]) -> Results:
    """The columns, tables and figure lines of all the runs' declarations, each once, in the
    order they were first declared."""

    def unique(items: list[Any]) -> tuple[Any, ...]:
        return tuple(dict.fromkeys(items))

    columns: list[Column] = [c for d in declared for c in d.columns]
    tables: list[Table] = [t for d in declared for t in d.tables]
    markers: list[Marker] = [m for d in declared for m in d.markers]
    return Results(columns=unique(columns), tables=unique(tables), markers=unique(markers))
