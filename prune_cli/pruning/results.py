"""What a method (or an analysis) adds to the results: its declaration, read by the report.

A method's ``finalize`` returns figures of its own (``summary.json``'s ``method_info``: the thin
network's latency, the searched metric, the predicted limit...), may write files of its own
into the run directory, and sets a target that counts weights, filters or blocks. It says so in
one :class:`Results` object, the class attribute ``results`` of its
:class:`~prune_cli.pruning.method.PruningMethod`; an analysis (``prune_cli.analysis``) does the
same. The run writes the declaration into ``summary.json`` (``results``), so ``prune-report``
learns from the run itself which columns, tables and figure lines to add, without importing
the method (or torch): the read side names no method, and a method defined outside this
package reports like the built-in ones.

Runs written before summary.json carried the declaration are read with the declarations the
methods had then (``legacy_results.json`` beside this module, frozen; a test checks it against
the registry).

This module imports nothing but the standard library: the report side imports it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

#: what a method's ``sparsity`` / ``ratio`` / ``rate`` counts; None: it has no target (the
#: sparsity emerges from training: SAP, DNS, gRDA)
TargetUnit = Literal["weights", "filters", "blocks"] | None

#: how the accuracy table shows a column's mean: ``remaining`` a removed fraction as remaining
#: %, ``macs`` as 1.23M, ``arrow`` as "<pair> -> <this>"; None: in the CSV only
Display = Literal["number", "remaining", "macs", "arrow"] | None

#: the settings of a target schedule (``pruning/level.py``; every method that has them)
TARGET_KEYS = ("ratio", "sparsity", "rate")


def nominal_ratio(
    ratio: Any = None, rate: Any = None, sparsity: Any = None, levels: Any = 1
) -> float | None:
    """The nominal pruning ratio t (before / after) of a target schedule's final level: ``ratio``
    when set; else ``rate`` of the remaining per level over ``levels`` levels; else
    ``sparsity``. None without a valid target. In the unit the method's target counts."""

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and value == value

    if number(ratio):
        t = float(ratio)
    elif number(rate) and number(levels) and 0 < rate < 1:
        t = (1.0 - rate) ** -levels
    elif number(sparsity) and 0 <= sparsity < 1:
        t = 1.0 / (1.0 - sparsity)
    else:
        return None
    return float(f"{t:.6g}")  # 1 / (1 - 0.9) is 10.000000000000002: one target, not two


@dataclass(frozen=True)
class Column:
    """One figure of the run's summary, shown as a column of the report's level rows."""

    #: the key in ``source``
    key: str
    #: the column's name in the report's tables (unique across methods and analyses)
    column: str
    #: where the figure is in ``summary.json``: ``method_info`` or ``analysis.<name>``
    source: str = "method_info"
    #: ``last``: on the run's final level only (what the method measured at its end); ``all``:
    #: on every level row (an analysis of the dense model, compared with each level)
    levels: Literal["last", "all"] = "last"
    #: a text value (taken as it is) rather than a finite number (averaged over seeds)
    text: bool = False
    #: the heading in the Markdown accuracy table; None: only in the CSV
    heading: str | None = None
    display: Display = None
    #: for ``display="arrow"``: the column shown before this one
    pair: str | None = None


@dataclass(frozen=True)
class Cell:
    """A cell of a method's own table: a column of the level rows, summarised over the row's
    runs (``mean_std``: mean ± std, marked † under 3 runs; ``counts``: each value's count)."""

    column: str
    heading: str
    how: Literal["mean_std", "counts"] = "mean_std"


@dataclass(frozen=True)
class Table:
    """A table of the report of its own: one row per (dataset, model, label) of the runs that
    have a value in column ``when``."""

    #: the file stem in the report folder (``<name>.csv``)
    name: str
    title: str
    note: str
    when: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Marker:
    """A vertical line on the accuracy-against-remaining-weights figure: each row's mean of
    ``column``, a fraction of weights removed."""

    column: str
    label: str


@dataclass(frozen=True)
class Network:
    """A plain network the method saves for its last level (``prune-export``, ``load_run``):
    ``method_info[key]`` names its file in the run directory. ``thin``: the physically thinner
    network with its removed channels (``prune_cli.thin``); ``folded``: the model's own
    architecture with the method's re-parametrisation folded into plain weights."""

    key: str
    kind: Literal["thin", "folded"]


@dataclass(frozen=True)
class Results:
    """Everything a method (or an analysis) adds to the results."""

    columns: tuple[Column, ...] = ()
    tables: tuple[Table, ...] = ()
    markers: tuple[Marker, ...] = ()
    #: files it writes into the run directory (relative paths): ``overwrite=true`` clears them
    files: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()
    target: TargetUnit = "weights"
    #: whether a run that ended with an unpruned level 0 only is a dense baseline; False for a
    #: method that ends at level 0 by design and reports what it measured there (the limit)
    dense_baseline: bool = True
    #: the method settings that set the target: the curve a method draws across targets
    #: (the report's ``series``) leaves them out
    target_keys: tuple[str, ...] = TARGET_KEYS

    def merge(self, other: Results) -> Results:
        """This method's declaration with an analysis's columns, tables, figures and files."""
        return replace(
            self,
            columns=self.columns + other.columns,
            tables=self.tables + other.tables,
            markers=self.markers + other.markers,
            files=self.files + other.files,
        )

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Any) -> Results:
        """The declaration as a run stored it; one that is not as written raises ValueError."""
        if not isinstance(data, dict):
            raise ValueError("results is not a mapping")
        try:
            return cls(
                columns=tuple(Column(**c) for c in data.get("columns", ())),
                tables=tuple(
                    Table(**{**t, "cells": tuple(Cell(**c) for c in t["cells"])})
                    for t in data.get("tables", ())
                ),
                markers=tuple(Marker(**m) for m in data.get("markers", ())),
                files=tuple(str(f) for f in data.get("files", ())),
                networks=tuple(Network(**n) for n in data.get("networks", ())),
                target=data.get("target", "weights"),
                dense_baseline=bool(data.get("dense_baseline", True)),
                target_keys=tuple(data.get("target_keys", TARGET_KEYS)),
            )
        except (TypeError, KeyError) as exc:
            raise ValueError(f"results is not a declaration: {exc}") from None


LEGACY = Path(__file__).with_name("legacy_results.json")


@cache
def _legacy() -> dict[str, dict[str, Any]]:
    return json.loads(LEGACY.read_text())


def target_of(unit: TargetUnit, settings: dict[str, Any]) -> dict[str, Any]:
    """A run's nominal target, ``{"unit": ..., "ratio": t}``, from the unit its method declares
    and its method settings (``sparsity``, ``ratio``, ``rate``, ``levels``). Blocks of one
    weight (``block_size: 1``) are weights."""
    if unit is None:
        return {"unit": None, "ratio": None}
    if unit == "blocks" and settings.get("block_size") == 1:
        unit = "weights"
    ratio = nominal_ratio(
        settings.get("ratio"),
        settings.get("rate"),
        settings.get("sparsity"),
        settings.get("levels", 1),
    )
    return {"unit": unit, "ratio": ratio}


def stored_target(summary: dict[str, Any], config: dict[str, Any]) -> tuple[TargetUnit, Any]:
    """(unit, nominal ratio) of a run's target: as the run recorded it, or, for a run written
    before summaries recorded it, from its method settings (``config``: the run's flattened
    config) and the unit its method declared then."""
    target = summary.get("target")
    if not isinstance(target, dict):
        settings = {
            k.removeprefix("method."): v for k, v in config.items() if k.startswith("method.")
        }
        target = target_of(stored_results(summary).target, settings)
    return target.get("unit"), target.get("ratio")


def target_ratio(config: dict[str, Any]) -> float | None:
    """The nominal ratio of a run's target schedule, from its flattened config (``method.*``)."""
    m = {k.removeprefix("method."): v for k, v in config.items() if k.startswith("method.")}
    return nominal_ratio(m.get("ratio"), m.get("rate"), m.get("sparsity"), m.get("levels", 1))


def stored_results(summary: dict[str, Any]) -> Results:
    """The declaration a run's summary carries, or, for a run written before summaries carried
    one, the declarations its method and analyses had then (none for a method unknown then).
    Raises ValueError for a declaration that is not as the run writes it."""
    if "results" in summary:
        return Results.from_dict(summary["results"])
    legacy = _legacy()
    declared = Results.from_dict(legacy["methods"].get(str(summary.get("method")), {}))
    analyses = summary.get("analysis")
    for name in analyses if isinstance(analyses, dict) else ():
        if name in legacy["analyses"]:
            declared = declared.merge(Results.from_dict(legacy["analyses"][name]))
    return declared
