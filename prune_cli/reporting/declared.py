"""What the runs' methods and analyses declare (:mod:`prune_cli.pruning.results`), shown: their
columns in the accuracy table, their tables of their own. Generic: no method is named here; a
run's ``summary.json`` says what to show."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pandas as pd

from prune_cli.pruning.results import Column, Table


def declared_shown(
    table: pd.DataFrame, columns: tuple[Column, ...], macs: Callable[[float], str]
) -> Iterator[tuple[str, list | pd.Series]]:
    """(heading, values) of each declared column with a heading that the table holds, as its
    ``display`` says (``remaining``: a removed fraction as remaining %; ``macs``: 1.23M;
    ``arrow``: "<pair> -> <this>", 3 significant digits; else the mean as it is)."""
    for col in columns:
        mean = f"{col.column}_mean"
        if col.heading is None or col.text or mean not in table:
            continue
        values = table[mean]
        if col.display == "remaining":
            yield col.heading, (100 * (1 - values)).round(2)
        elif col.display == "macs":
            yield col.heading, values.map(macs)
        elif col.display == "arrow" and f"{col.pair}_mean" in table:
            before = table[f"{col.pair}_mean"]
            yield (
                col.heading,
                [
                    "" if t != t else f"{d:.3g} -> {t:.3g}"
                    for d, t in zip(before, values, strict=True)
                ],
            )
        else:
            yield col.heading, values


def mean_std(values: pd.Series) -> str:
    """'mean ± std' with 3 decimals, marked † when from 2 runs; '-' without a value."""
    values = values.dropna()
    if values.empty:
        return "-"
    std = values.std(ddof=1) if len(values) > 1 else math.nan
    mark = " †" if 1 < len(values) < 3 else ""
    return f"{values.mean():.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}") + mark


def counts(values: pd.Series) -> str:
    """Each value with the number of runs that have it, most frequent first."""
    return "; ".join(f"{v} ({k})" for v, k in values.dropna().value_counts().items())


def method_table(levels: pd.DataFrame, table: Table) -> pd.DataFrame:
    """A declared table: one row per (dataset, model, label) of the runs with a value in
    ``table.when``, each run once; its cells summarised over them."""
    if table.when not in levels:
        return pd.DataFrame()
    runs = levels[levels[table.when].notna()]
    if "run" in runs:
        runs = runs.drop_duplicates("run")
    rows = []
    for (dataset, model, label), g in runs.groupby(["dataset", "model", "label"], sort=True):
        row = {"dataset": dataset, "model": model, "label": label, "n": len(g)}
        for cell in table.cells:
            values = g[cell.column] if cell.column in g else pd.Series(dtype=float)
            row[cell.heading] = counts(values) if cell.how == "counts" else mean_std(values)
        rows.append(row)
    return pd.DataFrame(rows)


def declared_tables(
    levels: pd.DataFrame, tables: tuple[Table, ...]
) -> Iterator[tuple[Table, pd.DataFrame]]:
    """Each declared table with its rows, where it has any."""
    for table in tables:
        frame = method_table(levels, table)
        if not frame.empty:
            yield table, frame
