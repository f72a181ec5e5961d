"""``prune-report``'s output: tables (CSV + Markdown), PNG plots and an ``index.md``.

One "study" is a (dataset, model) pair; within it, a row is a ``label``: the runs whose configs
differ only in seed (see :mod:`prune_cli.reporting.collect`). Means and standard deviations are
over those runs (completed runs only; ``n`` counts them, ``seeds`` lists their seeds); failed,
running and unreadable runs are listed with the reason. Rows are never averaged across pruning
targets or any other setting; the settings that vary are named in the tables and ``index.md``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt
import pandas as pd

from prune_cli.io import save_text
from prune_cli.reporting.collect import Collection
from prune_cli.reporting.stats import (
    alpha_intervals,
    consecutive_ratio_tests,
    method_pair_tests,
)

#: the row key; ``target`` follows from ``label`` (it is in the key to be shown beside it)
KEYS = ["dataset", "model", "label", "target", "level"]
TEST_NOTES = {
    "alpha_consecutive_tests": "One-sided paired t-tests over seeds, "
    "H1: alpha(t_to) > alpha(t_from).",
    "alpha_method_tests": "Two-sided paired t-tests over seeds; t > 0: method_b's alpha is larger.",
}


def _fmt(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or math.isnan(std):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


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


def accuracy_table(levels: pd.DataFrame, varying: list[str] | None = None) -> pd.DataFrame:
    """Mean and std over the runs of each (dataset, model, label, target, level).

    ``varying``: the dotted settings that vary across the report (columns of ``levels``); each
    becomes a column of the table, its value in the row (constant within a row by construction).
    """
    frame = levels.copy()
    frame["target"] = frame["target"].astype(object).where(frame["target"].notna(), "-")
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
    ).reset_index()
    if "pqi" in frame:
        table["pqi_mean"] = grouped["pqi"].mean().to_numpy()
    for key in varying or []:
        if key in frame:
            table[key] = grouped[key].first().to_numpy()
    return table


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table with accuracies as 'mean ± std' in percent."""
    # the varying settings' own columns (dotted names) are for the CSV: the label shows them
    shown = table.drop(columns=[c for c in table.columns if "." in c])
    if "duplicate_seeds" in shown and not shown["duplicate_seeds"].astype(bool).any():
        shown = shown.drop(columns="duplicate_seeds")
    for split in ("val", "test"):
        if f"{split}_mean" in shown:
            shown[f"{split} acc %"] = [
                _fmt(m, s)
                for m, s in zip(shown[f"{split}_mean"], shown[f"{split}_std"], strict=True)
            ]
            shown = shown.drop(columns=[f"{split}_mean", f"{split}_std"])
    if "remaining_mean" in shown:
        shown["remaining %"] = (100 * shown.pop("remaining_mean")).round(2)
    return shown.to_markdown(index=False, floatfmt=".4g")


def _save_table(table: pd.DataFrame, out: Path, name: str, note: str = "") -> str:
    table.to_csv(out / f"{name}.csv", index=False)
    text = markdown(table)
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


def _figure(path: Path, draw, title: str, xlabel: str, ylabel: str, ncols: int = 1) -> None:
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        draw(ax, i)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _slug(*parts: object) -> str:
    """A file-name part: labels may hold any config value (lists, paths, quotes)."""
    return "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p).replace(" ", "")) for p in parts)


def study_plots(c: Collection, dataset: str, model: str, out: Path) -> list[str]:
    """The PNG files of one study; returns their names."""
    names: list[str] = []
    levels = c.levels[(c.levels.dataset == dataset) & (c.levels.model == model)]
    mean = (
        levels.groupby(["series", "label", "target", "level"], dropna=False)
        .agg(
            remaining=("remaining", "mean"),
            test=("test_accuracy", "mean"),
            test_std=("test_accuracy", "std"),
        )
        .reset_index()
    )

    # accuracy against remaining weights
    name = f"accuracy_remaining_{_slug(dataset, model)}.png"

    def lines(frame: pd.DataFrame):
        """One line per series when its rows are one-shot (a curve over targets), else one
        line per row (an iterative run's levels: two schedules in one line would zigzag)."""
        for series, g in frame.groupby("series"):
            if g.groupby("label")["level"].max().max() <= 1:
                yield series, g
            else:
                yield from g.groupby("label")

    def draw_accuracy(ax, _):
        for name, g in lines(mean):
            # the dense level 0 of a one-shot series' rows: one point, not a vertical line
            g = g.groupby("remaining")[["test", "test_std"]].mean()
            g = g.sort_index(ascending=False)
            ax.errorbar(
                100 * g.index.to_numpy(),
                100 * g["test"],
                yerr=100 * g["test_std"].fillna(0),
                marker="o",
                ms=3,
                capsize=2,
                label=name,
            )
        ax.set_xscale("log")
        ax.invert_xaxis()

    _figure(
        out / name,
        draw_accuracy,
        f"{dataset} / {model}: test accuracy",
        "remaining weights % (log)",
        "test accuracy %",
    )
    names.append(name)

    pqi = c.pqi[(c.pqi.dataset == dataset) & (c.pqi.model == model)]
    if not pqi.empty:
        glob = pqi[(pqi.scope == "global") & (pqi.stage == "trained")]
        pairs = sorted({(p, q) for p, q in zip(glob.p, glob.q, strict=True)})
        agg = glob.groupby(["label", "p", "q", "level"]).pqi.mean().reset_index()
        agg = agg.join(mean.groupby(["label", "level"]).remaining.mean(), on=["label", "level"])
        for x, xlabel in (("level", "level"), ("remaining", "remaining weights % (log)")):
            name = f"pqi_{x}_{_slug(dataset, model)}.png"

            def draw_pqi(ax, i, x=x):
                p, q = pairs[i]
                for label, g in agg[(agg.p == p) & (agg.q == q)].groupby("label"):
                    g = g.sort_values("level")
                    ax.plot(
                        g[x] * (100 if x == "remaining" else 1),
                        g["pqi"],
                        marker="o",
                        ms=3,
                        label=label,
                    )
                if x == "remaining":
                    ax.set_xscale("log")
                    ax.invert_xaxis()
                ax.set_title(f"(p, q) = ({p}, {q})")

            _figure(
                out / name,
                draw_pqi,
                f"{dataset} / {model}: PQ index (global, trained)",
                xlabel,
                "PQI",
                ncols=len(pairs),
            )
            names.append(name)
        # per-layer PQI for each label, first (p, q)
        p, q = pairs[0]
        layer = pqi[(pqi.scope == "layer") & (pqi.stage == "trained") & (pqi.p == p) & (pqi.q == q)]
        for label, g in layer.groupby("label"):
            name = f"pqi_layers_{_slug(dataset, model, label)}.png"

            def draw_layers(ax, _, g=g):
                for lname, lg in g.groupby("name"):
                    lg = lg.groupby("level").pqi.mean()
                    ax.plot(lg.index, lg.to_numpy(), marker=".", label=lname)

            _figure(out / name, draw_layers, f"{label}: per-layer PQI ({p}, {q})", "level", "PQI")
            names.append(name)

    sparsity = c.sparsity[(c.sparsity.dataset == dataset) & (c.sparsity.model == model)]
    for label, g in sparsity.groupby("label"):
        if g["level"].nunique() < 2:
            continue
        name = f"layer_remaining_{_slug(dataset, model, label)}.png"

        def draw_remaining(ax, _, g=g):
            for lname, lg in g.groupby("name"):
                lg = lg.groupby("level").sparsity.mean()
                ax.plot(lg.index, 100 * (1 - lg.to_numpy()), marker=".", label=lname)
            ax.set_yscale("log")

        _figure(
            out / name,
            draw_remaining,
            f"{label}: remaining weights per layer",
            "level",
            "remaining %",
        )
        names.append(name)

    recall = c.recall[
        (c.recall.dataset == dataset) & (c.recall.model == model) & (c.recall.stage == "trained")
    ]
    if not recall.empty:
        recall = recall.join(levels.set_index(["run", "level"]).remaining, on=["run", "level"])
        # one panel per series (a method's rows over targets share the remaining-weights axis)
        labels = sorted(recall.series.unique())
        name = f"recall_{_slug(dataset, model)}.png"

        def draw_recall(ax, i):
            g = recall[recall.series == labels[i]]
            for cname, cg in g.groupby("class_name"):
                cg = cg.groupby("remaining").recall.mean().sort_index(ascending=False)
                ax.plot(100 * cg.index, 100 * cg.to_numpy(), marker=".", label=str(cname))
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.set_title(labels[i])

        _figure(
            out / name,
            draw_recall,
            f"{dataset} / {model}: per-class test recall",
            "remaining weights % (log)",
            "recall %",
            ncols=len(labels),
        )
        names.append(name)
    return names


def alpha_frame(c: Collection) -> pd.DataFrame:
    lv = c.levels
    if lv.empty or "alpha" not in lv:
        return pd.DataFrame()
    final = lv[lv["level"] == lv.groupby("run")["level"].transform("max")]
    final = final[(final["level"] > 0) & final.alpha.notna()]
    frame = final[["dataset", "model", "series", "label", "target", "seed", "alpha"]].copy()
    frame["target"] = frame["target"].fillna(-1)
    return frame


def write_report(c: Collection, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# prune-run report", ""]
    counts = c.runs.status.value_counts().to_dict()
    lines += [f"Runs: {len(c.runs)} ({', '.join(f'{v} {k}' for k, v in counts.items())}).", ""]
    not_done = c.runs[c.runs.status != "completed"]
    if not not_done.empty:
        lines += ["## Runs left out (not completed, or unreadable: see reason)", ""]
        lines += [markdown_plain(not_done[["run", "status", "reason"]]), ""]
    if not c.levels.empty:
        table = accuracy_table(c.levels, list(c.varying))
        notes = [varying_note(c.varying), duplicate_note(table)]
        note = "\n\n".join(n for n in notes if n)
        lines += [
            "## Accuracy (mean ± std over seeds, %)",
            "",
            note,
            "",
            _save_table(table, out, "accuracy", note),
            "",
        ]
        for (dataset, model), _ in c.levels.groupby(["dataset", "model"]):
            lines += [f"## {dataset} / {model}", ""]
            for name in study_plots(c, dataset, model, out):
                lines += [f"![{name}]({name})", ""]
    alphas = alpha_frame(c)
    if not alphas.empty:
        intervals = alpha_intervals(alphas)
        intervals.to_csv(out / "alpha.csv", index=False)
        lines += [
            "## Recall distortion: alpha (99% CI, Bonferroni over ratios)",
            "",
            markdown_plain(intervals),
            "",
        ]
        for name, frame in (
            ("alpha_consecutive_tests", consecutive_ratio_tests(alphas)),
            ("alpha_method_tests", method_pair_tests(alphas)),
        ):
            if not frame.empty:
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
