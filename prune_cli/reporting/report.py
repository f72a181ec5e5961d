"""``prune-report``'s output: tables (CSV + Markdown), pivot tables (CSV, Markdown, LaTeX),
figures (PNG + PDF, :mod:`prune_cli.reporting.figures`) and an ``index.md``.

One "study" is a (dataset, model) pair; within it, a row is a ``label``: the runs whose configs
differ only in seed (see :mod:`prune_cli.reporting.collect`). Means and standard deviations are
over those runs (completed runs only; ``n`` counts them, ``seeds`` lists their seeds); failed,
running, damaged and unreadable runs are listed with the reason (in ``index.md`` and
``runs_left_out.csv``). Rows are never averaged across pruning
targets or any other setting; the settings that vary are named in the tables and ``index.md``.
A spread computed from fewer than 3 runs is marked (``†``), and so is a row that holds a run
that collapsed (``collapsed`` counts them; :mod:`prune_cli.recording.measure` says what that is).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from prune_cli.io import save_text
from prune_cli.pruning.results import Column
from prune_cli.reporting.collect import Collection, is_collapsed
from prune_cli.reporting.declared import declared_shown, declared_tables
from prune_cli.reporting.figures import FORMATS, slug, study_plots
from prune_cli.reporting.pivot import COLLAPSED, FEW, write_pivots
from prune_cli.reporting.stats import (
    alpha_intervals,
    consecutive_ratio_tests,
    method_pair_tests,
)

#: the row key; ``target`` follows from ``label`` (it is in the key to be shown beside it)
KEYS = ["dataset", "model", "label", "target", "level"]
ALPHA_NOTE = (
    "`collapsed`: runs that collapsed (a class at test recall 0 or a layer with no weight left); "
    "their alpha describes a network that lost a class. Target '-': the method reaches its "
    "sparsity by training, not at a fixed ratio of weights (or its target counts filters), so "
    "it has an interval but no test between ratios or against other methods."
)
TEST_NOTES = {
    "alpha_consecutive_tests": "One-sided paired t-tests over seeds, "
    "H1: alpha(t_to) > alpha(t_from).",
    "alpha_method_tests": "Two-sided paired t-tests over seeds; t > 0: method_b's alpha is larger.",
}


def _fmt(mean: float, std: float, n: int = 3, collapsed: int = 0) -> str:
    """'mean ± std' in percent, marked when the spread is from fewer than 3 runs or a run of
    the row collapsed."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    marks = COLLAPSED if collapsed else ""
    if std is None or math.isnan(std):
        return f"{100 * mean:.2f}{marks}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}{FEW if n < 3 else ''}{marks}"


def _seed_key(seed: object) -> tuple[int, float, str]:
    """Numbers in order, then anything else (a summary without a seed) by its text."""
    if isinstance(seed, int | float) and not isinstance(seed, bool) and seed == seed:
        return 0, float(seed), ""
    return 1, 0.0, str(seed)


def _seeds(seeds: pd.Series) -> str:
    def text(seed: object) -> str:  # a seed column with a gap is float: 1.0 is seed 1
        return str(int(seed)) if isinstance(seed, float) and seed.is_integer() else str(seed)

    return ",".join(text(s) for s in sorted(seeds, key=_seed_key))


def _duplicates(seeds: pd.Series) -> str:
    counts = seeds.value_counts()
    return _seeds(pd.Series(counts[counts > 1].index))


#: level columns a run may lack (written before they were recorded): NaN in its rows
OPTIONAL = (
    "val_accuracy",
    "pruned_test_accuracy",
    "params_nonzero",
    "macs_dense",
    "macs_sparse",
    "pqi",
    "gini",
    "units_no_incoming",
    "units_no_outgoing",
)


def _collapsed(values: pd.Series) -> int:
    return int(sum(map(is_collapsed, values)))


def accuracy_table(
    levels: pd.DataFrame, varying: list[str] | None = None, columns: tuple[Column, ...] = ()
) -> pd.DataFrame:
    """Mean and std over the runs of each (dataset, model, label, target, level).

    ``varying``: the dotted settings that vary across the report (columns of ``levels``); each
    becomes a column of the table, its value in the row (constant within a row by construction).
    ``columns``: what the runs' methods and analyses declare (numbers: ``<column>_mean``).
    ``collapsed`` counts the row's runs that collapsed at that level.
    """
    frame = levels.copy()
    frame["target"] = frame["target"].astype(object).where(frame["target"].notna(), "-")
    for column in (*OPTIONAL, "collapsed"):
        if column not in frame:
            frame[column] = math.nan
    grouped = frame.groupby(KEYS, dropna=False)
    table = grouped.agg(
        n=("run", "nunique"),
        seeds=("seed", _seeds),
        duplicate_seeds=("seed", _duplicates),
        remaining_mean=("remaining", "mean"),
        val_mean=("val_accuracy", "mean"),
        val_std=("val_accuracy", "std"),
        test_mean=("test_accuracy", "mean"),
        test_std=("test_accuracy", "std"),
        pruned_mean=("pruned_test_accuracy", "mean"),
        pruned_std=("pruned_test_accuracy", "std"),
        params_nonzero_mean=("params_nonzero", "mean"),
        macs_dense=("macs_dense", "mean"),
        macs_sparse_mean=("macs_sparse", "mean"),
        pqi_mean=("pqi", "mean"),
        pqi_std=("pqi", "std"),
        gini_mean=("gini", "mean"),
        units_no_incoming_mean=("units_no_incoming", "mean"),
        units_no_outgoing_mean=("units_no_outgoing", "mean"),
        collapsed=("collapsed", _collapsed),
    ).reset_index()
    for column in (c.column for c in columns if not c.text):
        if column in frame:
            table[f"{column}_mean"] = grouped[column].mean().to_numpy()
    for key in varying or []:
        if key in frame:
            table[key] = grouped[key].first().to_numpy()
    return table


def _macs(value: float) -> str:
    if value != value:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


def markdown(table: pd.DataFrame, columns: tuple[Column, ...] = ()) -> str:
    """A Markdown table: accuracies as 'mean ± std' in percent, marked as :func:`_fmt` does;
    MACs as 1.23M; columns that no run measured are left out; then the declared ``columns``
    that have a heading, as they say."""
    # the varying settings' own columns (dotted names) are for the CSV: the label shows them
    shown = table[
        [c for c in ("dataset", "model", "label", "target", "level", "n", "seeds") if c in table]
    ].copy()
    if "duplicate_seeds" in table and table["duplicate_seeds"].astype(bool).any():
        shown["duplicate_seeds"] = table["duplicate_seeds"]
    if "remaining_mean" in table:
        shown["remaining %"] = (100 * table["remaining_mean"]).round(2)
    collapsed = table["collapsed"] if "collapsed" in table else pd.Series(0, table.index)
    for split, name in (("val", "val acc %"), ("test", "test acc %"), ("pruned", "pruned acc %")):
        if f"{split}_mean" in table and table[f"{split}_mean"].notna().any():
            shown[name] = [
                _fmt(m, s, n, c if split == "test" else 0)
                for m, s, n, c in zip(
                    table[f"{split}_mean"],
                    table[f"{split}_std"],
                    table["n"],
                    collapsed,
                    strict=True,
                )
            ]
    if "macs_sparse_mean" in table and table["macs_sparse_mean"].notna().any():
        shown["MACs"] = table["macs_sparse_mean"].map(_macs)
    for column, name in (("pqi_mean", "PQI"), ("gini_mean", "Gini")):
        if column in table and table[column].notna().any():
            shown[name] = table[column]
    if collapsed.astype(bool).any():
        shown["collapsed"] = [
            f"{c}/{n}" if c else "" for c, n in zip(collapsed, table["n"], strict=True)
        ]
    for heading, values in declared_shown(table, columns, _macs):
        shown[heading] = values
    return shown.to_markdown(index=False, floatfmt=".4g")


def _save_table(
    table: pd.DataFrame, out: Path, name: str, note: str = "", columns: tuple[Column, ...] = ()
) -> str:
    table.to_csv(out / f"{name}.csv", index=False)
    text = markdown(table, columns)
    save_text((f"{note}\n\n" if note else "") + text + "\n", out / f"{name}.md")
    return text


def varying_note(varying: dict[str, list[str]]) -> str:
    """Which settings vary across the report, and so are part of the row labels."""
    if not varying:
        return (
            "Settings that vary across these runs: none besides dataset, model and method "
            "(a row is the runs whose configs differ only in seed)."
        )
    keys = ", ".join(f"`{k}` ({', '.join(f)})" for k, f in varying.items())
    return (
        f"Settings that vary across these runs (in the labels of): {keys}. "
        "A row is the runs whose configs differ only in seed; `target` is the pruning ratio t."
    )


def marks_note(table: pd.DataFrame) -> str:
    """What the marks in the accuracy cells mean, when any cell has one."""
    notes = []
    if ((table["n"] == 2) & table["test_std"].notna()).any():
        notes.append(f"{FEW} the spread is the std of fewer than 3 runs: not a reliable interval")
    if "collapsed" in table and table["collapsed"].astype(bool).any():
        notes.append(
            f"{COLLAPSED} the row holds a run that collapsed at that level (a class at test "
            "recall 0, or a layer with no weight left; `collapsed` counts them): the mean mixes "
            "working and broken models"
        )
    return "; ".join(notes) + ("." if notes else "")


def collapse_note(levels: pd.DataFrame) -> str:
    """Which runs collapsed, at which level, and what they lost."""
    if "collapsed" not in levels:
        return ""
    bad = levels[levels["collapsed"].map(lambda v: v is True)]
    if bad.empty:
        return ""
    items = []
    for _, r in bad.sort_values(["label", "seed", "level"]).iterrows():
        classes = r.get("zero_recall_classes")
        if isinstance(classes, list) and classes:
            lost = f"recall 0 for class {', '.join(map(str, classes))}"
        else:
            lost = "a layer with no weight left"
        where = f"{r['dataset']} / {r['model']} / {r['label']}, seed {r['seed']}"
        test = f"test accuracy {100 * r['test_accuracy']:.2f}%"
        items.append(f"- {where}, level {r['level']}: {lost} ({test})")
    return "Collapsed runs:\n\n" + "\n".join(items)


def duplicate_note(table: pd.DataFrame) -> str:
    """Rows that hold a seed twice (the same run reported from two directories, say)."""
    dup = table[table["duplicate_seeds"].astype(bool)]
    columns = ["dataset", "model", "label", "duplicate_seeds"]
    rows = sorted(set(dup[columns].itertuples(index=False, name=None)))
    if not rows:
        return ""
    listed = "; ".join(f"{d} / {m} / {lab}: seed {s}" for d, m, lab, s in rows)
    return (
        "Duplicate seeds (the same config and seed in more than one run directory; n counts "
        f"each run): {listed}."
    )


FEW_RUNS = "n < 3"


def _warn_few(frame: pd.DataFrame) -> pd.DataFrame:
    """A ``warning`` column beside every interval or test computed from fewer than 3 runs."""
    return frame.assign(warning=[FEW_RUNS if n < 3 else "" for n in frame["n"]])


def alpha_frame(c: Collection) -> pd.DataFrame:
    lv = c.levels
    if lv.empty or "alpha" not in lv:
        return pd.DataFrame()
    final = lv[lv["level"] == lv.groupby("run")["level"].transform("max")]
    final = final[(final["level"] > 0) & final.alpha.notna()]
    columns = ["dataset", "model", "series", "label", "target", "seed", "alpha"]
    frame = final[columns].copy()
    # a method whose sparsity comes out of training has no target: NaN, so it
    # is never paired with another such method "at the same ratio"
    frame["target"] = frame["target"].astype(float)
    collapsed = final["collapsed"] if "collapsed" in final else pd.Series(False, final.index)
    frame["collapsed"] = collapsed.map(is_collapsed)
    return frame


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    """For Markdown: no target is '-', not 'nan'."""
    if "target" not in frame:
        return frame
    return frame.assign(target=[t if t == t else "-" for t in frame["target"]])


#: the file that lists the runs no table counts, one row each: run, status, reason
LEFT_OUT_FILE = "runs_left_out.csv"
#: what a left-out run without a recorded reason is, by its status
DEFAULT_REASONS = {
    "running": "no end recorded: still running, or stopped before it could say so "
    "(re-run its command to resume it)",
    "interrupted": "interrupted (re-run its command to resume it)",
    "failed": "failed (no reason recorded)",
    "unknown": "summary.json has no status",
}


def left_out(c: Collection) -> pd.DataFrame:
    """The runs that no table counts (failed, interrupted, running, damaged, unreadable), each
    with a reason, so that a reader need not open their directories to learn why."""
    frame = c.runs.loc[c.runs.status != "completed", ["run", "status", "reason"]].copy()
    missing = frame["reason"].isna() | (frame["reason"].astype(str).str.strip() == "")
    frame.loc[missing, "reason"] = [
        DEFAULT_REASONS.get(str(status), f"status {status}")
        for status in frame.loc[missing, "status"]
    ]
    return frame.sort_values("run").reset_index(drop=True)


def write_left_out(c: Collection, out: Path) -> pd.DataFrame:
    """Write :data:`LEFT_OUT_FILE` (a header alone when every run counts) and return its rows."""
    out.mkdir(parents=True, exist_ok=True)
    frame = left_out(c)
    frame.to_csv(out / LEFT_OUT_FILE, index=False)
    return frame


def write_report(c: Collection, out: Path, formats: tuple[str, ...] = FORMATS) -> Path:
    """Write the report into ``out``; figures in ``formats`` (PNG always, for the index)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# prune-run report", ""]
    counts = c.runs.status.value_counts().to_dict()
    lines += [f"Runs: {len(c.runs)} ({', '.join(f'{v} {k}' for k, v in counts.items())}).", ""]
    not_done = write_left_out(c, out)
    if not not_done.empty:
        lines += [
            "## Runs left out (not completed, damaged or unreadable: see reason)",
            "",
            f"No table or figure counts them; also in `{LEFT_OUT_FILE}`.",
            "",
        ]
        lines += [markdown_plain(not_done), ""]
    if not c.levels.empty:
        table = accuracy_table(c.levels, list(c.varying), c.declared.columns)
        notes = [varying_note(c.varying), marks_note(table), duplicate_note(table)]
        note = "\n\n".join(n for n in notes if n)
        lines += [
            "## Accuracy (mean ± std over seeds, %)",
            "",
            note,
            "",
            _save_table(table, out, "accuracy", note, c.declared.columns),
            "",
        ]
        collapsed = collapse_note(c.levels)
        if collapsed:
            lines += [collapsed, ""]
        pivots = write_pivots(c.levels, out, slug)
        if pivots:
            lines += [
                "## Pivot tables",
                "",
                "Also as CSV and LaTeX (booktabs): the files named below each table.",
                "",
            ]
            for title, text, stem in pivots:
                lines += [
                    f"### {title}",
                    "",
                    text,
                    f"Files: `{stem}.csv`, `{stem}.md`, `{stem}.tex`.",
                    "",
                ]
        for declared, frame in declared_tables(c.levels, c.declared.tables):
            frame.to_csv(out / f"{declared.name}.csv", index=False)
            lines += [f"## {declared.title}", "", declared.note, "", markdown_plain(frame), ""]
        for (dataset, model), _ in c.levels.groupby(["dataset", "model"]):
            lines += [
                f"## {dataset} / {model}",
                "",
                "Every figure is also a PDF of the same name (fonts embedded as TrueType). "
                "Error bars are ± 1 std over seeds (each figure says over how many); a red "
                "cross marks a point whose mean holds a run that collapsed.",
                "",
            ]
            for name in study_plots(c, dataset, model, out, formats):
                lines += [f"![{name}]({name})", ""]
    alphas = alpha_frame(c)
    if not alphas.empty:
        intervals = _warn_few(alpha_intervals(alphas))
        intervals.to_csv(out / "alpha.csv", index=False)
        lines += [
            "## Recall distortion: alpha (99% CI, Bonferroni over ratios)",
            "",
            f"`warning`: {FEW_RUNS} (an interval or test from so few runs is not reliable). "
            f"{ALPHA_NOTE}",
            "",
            markdown_plain(_shown(intervals)),
            "",
        ]
        for name, frame in (
            ("alpha_consecutive_tests", consecutive_ratio_tests(alphas)),
            ("alpha_method_tests", method_pair_tests(alphas)),
        ):
            if not frame.empty:
                frame = _warn_few(frame)
                frame.to_csv(out / f"{name}.csv", index=False)
                lines += [
                    f"### {name.replace('_', ' ')}",
                    "",
                    TEST_NOTES[name],
                    "",
                    markdown_plain(frame),
                    "",
                ]
    index = out / "index.md"
    save_text("\n".join(lines), index)
    return index


def markdown_plain(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".4g")
