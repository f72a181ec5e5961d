"""Pivot tables for papers: method x target (or x level), cells mean ± std over seeds.

For each study (dataset, model) and each quantity (test accuracy, the pruned accuracy before
fine-tuning, remaining weights, unstructured-sparse MACs, PQI, Gini), one table in CSV,
Markdown and LaTeX (booktabs). Two shapes:

- ``by_target``: a series (a method's setting without its target) whose rows are one-shot runs
  at several pruning ratios t: one row per series, one column per t (the final level), with
  the series' dense level 0 as the first column;
- ``by_level``: every other row (iterative runs): one row per report row, one column per level
  (Markdown and LaTeX show at most :data:`MAX_LEVEL_COLUMNS` levels, evenly spaced, always the
  first and the last; the CSV has them all).

Marks: ``†`` beside a spread from fewer than 3 runs (a standard deviation of two runs is not a
reliable interval); ``‡`` where a run of the cell collapsed (a class at recall 0 or a layer with
no weight left, see :mod:`prune_cli.recording.measure`). One run: the mean alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prune_cli.io import save_text
from prune_cli.reporting.collect import dense_baselines, is_collapsed, unpruned

#: shown in Markdown and LaTeX at most (the CSV has every level)
MAX_LEVEL_COLUMNS = 7
FEW = "†"
COLLAPSED = "‡"
NOTE = (
    f"Cells: mean ± std over seeds; {FEW} the spread is from fewer than 3 runs; "
    f"{COLLAPSED} (test accuracy) a run of the cell collapsed (a class at test recall 0 or a "
    "layer with no weight left)."
)


@dataclass(frozen=True)
class Quantity:
    title: str
    column: str  # in the collection's levels table
    scale: float = 1.0
    digits: int = 2
    spread: bool = True  # show ± std
    count: bool = False  # a large count: 1.23M
    mark_collapse: bool = False  # the accuracy that a collapsed run drags down


QUANTITIES = (
    Quantity("test accuracy %", "test_accuracy", 100.0, mark_collapse=True),
    Quantity("pruned test accuracy % (before fine-tuning)", "pruned_test_accuracy", 100.0),
    Quantity("remaining weights %", "remaining", 100.0, spread=False),
    Quantity("MACs per sample (unstructured sparse)", "macs_sparse", spread=False, count=True),
    Quantity("PQI (p, q) = first of the grid", "pqi", digits=3),
    Quantity("Gini index", "gini", digits=3),
)


def count_text(value: float) -> str:
    """A large count as 1.23M (tables and the figures' MACs axis)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


def cell(mean: float, std: float, n: int, collapsed: int, q: Quantity, latex: bool = False) -> str:
    """One cell's text; '-' where nothing was measured."""
    if mean is None or not math.isfinite(mean):
        return "-"
    value = count_text(mean * q.scale) if q.count else f"{mean * q.scale:.{q.digits}f}"
    spread = q.spread and n > 1 and std is not None and math.isfinite(std)
    marks = (FEW if spread and n < 3 else "") + (COLLAPSED if collapsed and q.mark_collapse else "")
    if latex:
        text = value + (f" \\pm {std * q.scale:.{q.digits}f}" if spread else "")
        tex_marks = marks.replace(FEW, "\\dagger").replace(COLLAPSED, "\\ddagger")
        return f"${text}{'^{' + tex_marks + '}' if tex_marks else ''}$"
    return value + (f" ± {std * q.scale:.{q.digits}f}" if spread else "") + marks


def _cells(frame: pd.DataFrame, row: str, column: str) -> pd.DataFrame:
    """mean, std, n and collapsed runs of every quantity per (row, column)."""
    frame = frame.copy()
    for q in QUANTITIES:
        if q.column not in frame:
            frame[q.column] = np.nan
    collapsed = frame["collapsed"] if "collapsed" in frame else pd.Series(False, frame.index)
    frame["_collapsed"] = collapsed.map(is_collapsed)
    rows = []
    for (r, col), g in frame.groupby([row, column], sort=False):
        for q in QUANTITIES:
            values = g[q.column].astype(float).dropna()
            rows.append(
                {
                    "row": r,
                    "column": col,
                    "quantity": q.title,
                    "mean": values.mean() if len(values) else math.nan,
                    "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                    "n": len(values),
                    "collapsed": int(g["_collapsed"].sum()),
                }
            )
    return pd.DataFrame(rows)


def pivots(levels: pd.DataFrame) -> dict[tuple[str, str, str], pd.DataFrame]:
    """(dataset, model, shape) -> tidy cells (row, column, quantity, mean, std, n, collapsed);
    ``column`` is a target t, ``"dense"``, or a level number."""
    out: dict[tuple[str, str, str], pd.DataFrame] = {}
    for (dataset, model), study in levels.groupby(["dataset", "model"]):
        last = study.groupby("label")["level"].transform("max")
        label_max = study.groupby("label")["level"].max()
        series_one_shot = {
            series: bool((label_max[g["label"].unique()] <= 1).all() and g["target"].notna().all())
            for series, g in study.groupby("series")
        }
        one_shot = study["series"].map(series_one_shot)
        by_target = study[one_shot.astype(bool)]
        if not by_target.empty:
            finals = by_target[by_target["level"] == last[by_target.index]].assign(
                column=lambda f: f["target"].astype(float)
            )
            # a level 0 already sparse (sparsified while training) is the series' result, not
            # its dense baseline
            dense = dense_baselines(by_target).assign(column="dense")
            sparse_finals = finals[(finals["level"] > 0) | ~unpruned(finals)]
            # an empty part left out: pandas 2 warns that the dtypes of the result will change
            # with it, and pandas 3 changed them
            # (one part always holds rows: each final is a dense baseline or sparse)
            parts = [f for f in (dense, sparse_finals) if not f.empty]
            cells = _cells(pd.concat(parts), "series", "column")
            out[(dataset, model, "by_target")] = cells
        by_level = study[~one_shot.astype(bool)]
        if not by_level.empty:
            out[(dataset, model, "by_level")] = _cells(by_level, "label", "level")
    return out


def _columns(cells: pd.DataFrame, shape: str, limit: bool) -> list:
    columns = list(dict.fromkeys(cells["column"]))
    if shape == "by_target":
        numbers = sorted(c for c in columns if c != "dense")
        return (["dense"] if "dense" in columns else []) + numbers
    columns = sorted(columns)
    if limit and len(columns) > MAX_LEVEL_COLUMNS:
        picks = np.linspace(0, len(columns) - 1, MAX_LEVEL_COLUMNS).round().astype(int)
        columns = [columns[i] for i in sorted(set(picks))]
    return columns


def _heading(column: object, shape: str) -> str:
    if shape == "by_level":
        return f"level {column}"
    return "dense" if column == "dense" else f"t = {float(column):.3g}"


def wide(cells: pd.DataFrame, shape: str, q: Quantity, limit: bool, latex: bool = False):
    """(headings, rows of cell texts) of one quantity."""
    cells = cells[cells["quantity"] == q.title]
    columns = _columns(cells, shape, limit)
    index = cells.set_index(["row", "column"])
    rows = []
    for r in sorted(dict.fromkeys(cells["row"]), key=str):
        texts = [str(r)]
        for col in columns:
            if (r, col) in index.index:
                c = index.loc[(r, col)]
                texts.append(cell(c["mean"], c["std"], int(c["n"]), int(c["collapsed"]), q, latex))
            else:
                texts.append("-")
        rows.append(texts)
    first = "method" if shape == "by_target" else "row"
    return [first, *(_heading(c, shape) for c in columns)], rows


def _markdown(headings: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def _latex(title: str, headings: list[str], rows: list[list[str]]) -> str:
    """A booktabs table: row names escaped, cells already in math mode."""
    spec = "l" + "r" * (len(headings) - 1)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{tex_escape(title)}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(tex_escape(h) for h in headings) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join([tex_escape(r[0]), *r[1:]]) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def write_pivots(levels: pd.DataFrame, out: Path, slug) -> list[tuple[str, str, str]]:
    """Write every pivot as ``pivot_<study>_<shape>.{csv,md,tex}``; returns (title, Markdown,
    file stem) of each, for the index. Quantities that no run measured are left out."""
    written = []
    for (dataset, model, shape), cells in pivots(levels).items():
        stem = f"pivot_{slug(dataset, model)}_{shape}"
        md, tex, csv_rows = [NOTE, ""], [f"% {NOTE}", r"% needs \usepackage{booktabs}"], []
        for q in QUANTITIES:
            if not (cells[cells["quantity"] == q.title]["n"] > 0).any():
                continue
            headings, rows = wide(cells, shape, q, limit=True)
            md += [f"**{q.title}**", "", _markdown(headings, rows), ""]
            title = f"{dataset} / {model}: {q.title}"
            tex += [_latex(title, *wide(cells, shape, q, limit=True, latex=True)), ""]
            all_headings, all_rows = wide(cells, shape, q, limit=False)
            csv_rows += [
                dict(zip(["quantity", *all_headings], [q.title, *r], strict=True)) for r in all_rows
            ]
        pd.DataFrame(csv_rows).to_csv(out / f"{stem}.csv", index=False)
        text = "\n".join(md)
        save_text(text, out / f"{stem}.md")
        save_text("\n".join(tex), out / f"{stem}.tex")
        shape_words = "method x target" if shape == "by_target" else "row x level"
        written.append((f"{dataset} / {model}: {shape_words}", text, stem))
    return written
