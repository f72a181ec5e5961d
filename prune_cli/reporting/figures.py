"""``prune-report``'s figures, one set per study (dataset, model), each as PNG and PDF.

Made for papers: integer ticks on level axes; the remaining-weights axis is logarithmic with
labelled ticks (100, 50, 20, 10, 5, 2, 1 ... %) and runs from dense to sparse; accuracy plots
draw the dense baseline (the study's mean level-0 test accuracy) as a dashed line; error bars
(one standard deviation over seeds) wherever a point averages more than one run; the legend
sits outside the axes, so it never covers data. The per-class recall figure is a heat map of
the change in recall against the dense level (rows: report rows, columns: classes), so that
100 classes and a dozen methods stay one readable figure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import FixedLocator, MaxNLocator, NullFormatter, NullLocator

from prune_cli.pruning.results import Marker
from prune_cli.reporting.collect import Collection, dense_baselines

#: candidate labelled ticks of the remaining-weights axis, in percent
REMAINING_TICKS = (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
#: figure formats: PNG for the index page, PDF for the paper
FORMATS = ("png", "pdf")
#: more report rows than this: the recall heat map shows each row's final level only
HEATMAP_ROWS = 40


def slug(*parts: object) -> str:
    """A file-name part: labels may hold any config value (lists, paths, quotes)."""
    return "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p).replace(" ", "")) for p in parts)


def level_axis(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def remaining_axis(ax: Axes, percents: np.ndarray) -> None:
    """Log scale, labelled ticks, dense on the left (remaining weights fall to the right)."""
    ax.set_xscale("log")
    values = np.asarray(percents, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size:
        lo, hi = values.min(), values.max()
        ticks = [t for t in REMAINING_TICKS if lo / 1.05 <= t <= hi * 1.05]
        if len(ticks) < 2:  # a narrow range: label its ends
            ticks = sorted({float(f"{lo:.2g}"), float(f"{hi:.2g}")})
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    if not ax.xaxis_inverted():
        ax.invert_xaxis()


def _legend(ax: Axes) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            ncol=max(1, math.ceil(len(handles) / 24)),
        )


@dataclass(frozen=True)
class FigureDir:
    """Where figures go, and in which formats (PNG first: the index shows it)."""

    root: Path
    formats: tuple[str, ...] = FORMATS

    def save(self, fig: plt.Figure, stem: str) -> str:
        """Write the figure in every format; returns the PNG's name."""
        for fmt in self.formats:
            fig.savefig(self.root / f"{stem}.{fmt}", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return f"{stem}.png"


def figure(
    out: FigureDir,
    stem: str,
    draw: Callable[[Axes, int], None],
    title: str,
    xlabel: str,
    ylabel: str,
    ncols: int = 1,
) -> str:
    """A row of ``ncols`` panels; the legend of the last panel stands for all (the panels of
    one figure draw the same rows)."""
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4.0), squeeze=False)
    for i, ax in enumerate(axes[0]):
        draw(ax, i)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    _legend(axes[0][-1])
    fig.suptitle(title)
    return out.save(fig, stem)


def _errorbar(ax: Axes, x, y, std, n, label: str) -> None:
    """Points with one std of error bars where they average more than one run."""
    std = np.where(np.asarray(n) > 1, np.nan_to_num(np.asarray(std, dtype=float)), 0.0)
    ax.errorbar(x, y, yerr=std if std.any() else None, marker="o", ms=3, capsize=2, label=label)


def _dense_line(ax: Axes, levels: pd.DataFrame) -> None:
    """The dense models' mean test accuracy (each once; none where every level 0 is sparse)."""
    dense = dense_baselines(levels)["test_accuracy"].mean()
    if dense == dense:
        ax.axhline(100 * dense, color="0.35", ls="--", lw=1, label=f"dense {100 * dense:.2f}%")


def _marker_lines(ax: Axes, levels: pd.DataFrame, marker: Marker) -> None:
    """A declared marker (an analysis's predicted limit, say): a vertical line at each row's
    mean of the marker's column, a fraction removed, drawn as remaining weights %."""
    if marker.column not in levels:
        return
    values = levels.groupby("label")[marker.column].mean().dropna()
    if values.round(4).nunique() == 1:  # one dense model (dense_from) under every row
        values = values.iloc[:1]
    for i, (label, rho) in enumerate(values.items()):
        ax.axvline(
            100 * (1 - rho),
            color="0.2",  # neutral: the label, not a colour, names the row it belongs to
            ls=(0, (1, 1 + i)),
            lw=1,
            label=f"{marker.label} {label}" if len(values) > 1 else marker.label,
        )


def _lines(frame: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """One line per series when its rows are one-shot (a curve over targets), else one line
    per row (an iterative run's levels: two schedules in one line would zigzag)."""
    for series, g in frame.groupby("series"):
        if g.groupby("label")["level"].max().max() <= 1:
            yield series, g
        else:
            yield from g.groupby("label")


def _points(g: pd.DataFrame, x: str) -> pd.DataFrame:
    """A line's points by ``x``: the dense level 0 of a one-shot series' rows is one point,
    not a vertical line (the rows' level 0 are the same dense model)."""
    g = g.groupby(x)[["test", "test_std", "n"]].agg(
        {"test": "mean", "test_std": "mean", "n": "max"}
    )
    return g.sort_index(ascending=False)


def study_plots(
    c: Collection, dataset: str, model: str, root: Path, formats: tuple[str, ...] = FORMATS
) -> list[str]:
    """The figures of one study, in ``formats`` (PNG always); returns the PNGs' names."""
    out = FigureDir(root, ("png", *(f for f in formats if f != "png")))
    names: list[str] = []
    study = slug(dataset, model)
    levels = c.levels[(c.levels.dataset == dataset) & (c.levels.model == model)]
    if "macs_sparse" not in levels:  # runs written before MACs were counted
        levels = levels.assign(macs_sparse=np.nan)
    mean = (
        levels.groupby(["series", "label", "target", "level"], dropna=False)
        .agg(
            n=("run", "nunique"),
            remaining=("remaining", "mean"),
            test=("test_accuracy", "mean"),
            test_std=("test_accuracy", "std"),
            macs=("macs_sparse", "mean"),
        )
        .reset_index()
    )

    def draw_accuracy(ax: Axes, _: int) -> None:
        for name, g in _lines(mean):
            g = _points(g, "remaining")
            _errorbar(
                ax, 100 * g.index.to_numpy(), 100 * g["test"], 100 * g["test_std"], g["n"], name
            )
        _dense_line(ax, levels)
        for marker in c.declared.markers:
            _marker_lines(ax, levels, marker)
        remaining_axis(ax, 100 * mean["remaining"].to_numpy())

    names.append(
        figure(
            out,
            f"accuracy_remaining_{study}",
            draw_accuracy,
            f"{dataset} / {model}: test accuracy",
            "remaining weights % (log)",
            "test accuracy %",
        )
    )

    if levels["macs_sparse"].notna().any():

        def draw_macs(ax: Axes, _: int) -> None:
            for name, g in _lines(mean[mean["macs"].notna()]):
                g = _points(g, "macs")
                _errorbar(
                    ax, g.index.to_numpy(), 100 * g["test"], 100 * g["test_std"], g["n"], name
                )
            _dense_line(ax, levels)
            ax.set_xscale("log")
            ax.invert_xaxis()

        names.append(
            figure(
                out,
                f"accuracy_macs_{study}",
                draw_macs,
                f"{dataset} / {model}: test accuracy against compute",
                "MACs per sample, unstructured sparse (log)",
                "test accuracy %",
            )
        )

    remaining = mean.groupby(["label", "level"]).remaining.mean()
    names += _index_plots(c.pqi, "pqi", "PQ index", dataset, model, remaining, out)
    names += _index_plots(c.gini, "gini", "Gini index", dataset, model, remaining, out)
    names += _layer_plots(c, dataset, model, out)
    recall = recall_heatmap(c, dataset, model, out)
    if recall:
        names.append(recall)
    return names


def _index_plots(
    frame: pd.DataFrame,
    column: str,
    what: str,
    dataset: str,
    model: str,
    remaining: pd.Series,
    out: FigureDir,
) -> list[str]:
    """A sparsity index (PQI per (p, q), Gini) of all prunable weights, trained models, against
    the level and against the remaining weights, mean ± std over each row's runs."""
    if frame.empty:
        return []
    frame = frame[(frame.dataset == dataset) & (frame.model == model)]
    glob = frame[(frame.scope == "global") & (frame.stage == "trained")]
    if glob.empty:
        return []
    pairs = sorted({(p, q) for p, q in zip(glob.p, glob.q, strict=True)}) if "p" in glob else [None]
    keys = ["label", "p", "q", "level"] if "p" in glob else ["label", "level"]
    agg = glob.groupby(keys)[column].agg(["mean", "std", "count"]).reset_index()
    agg = agg.join(remaining, on=["label", "level"])
    names = []
    for x, xlabel in (("level", "level"), ("remaining", "remaining weights % (log)")):

        def draw(ax: Axes, i: int, x: str = x) -> None:
            g_all = agg
            if pairs[i] is not None:
                p, q = pairs[i]
                g_all = agg[(agg.p == p) & (agg.q == q)]
                ax.set_title(f"(p, q) = ({p}, {q})")
            for label, g in g_all.groupby("label"):
                g = g.sort_values("level")
                xs = g[x] * (100 if x == "remaining" else 1)
                _errorbar(ax, xs, g["mean"], g["std"], g["count"], label)
            if x == "remaining":
                remaining_axis(ax, 100 * agg["remaining"].to_numpy())
            else:
                level_axis(ax)

        names.append(
            figure(
                out,
                f"{column}_{x}_{slug(dataset, model)}",
                draw,
                f"{dataset} / {model}: {what} (all prunable weights, trained)",
                xlabel,
                what,
                ncols=len(pairs),
            )
        )
    return names


def _layer_plots(c: Collection, dataset: str, model: str, out: FigureDir) -> list[str]:
    """Per label: the per-layer PQI (first (p, q)) and remaining weights across levels."""
    names = []
    pqi = c.pqi
    if not pqi.empty:
        pqi = pqi[(pqi.dataset == dataset) & (pqi.model == model)]
        layer = pqi[(pqi.scope == "layer") & (pqi.stage == "trained")]
        if not layer.empty:
            p, q = min(zip(layer.p, layer.q, strict=True))
            layer = layer[(layer.p == p) & (layer.q == q)]
            for label, g in layer.groupby("label"):

                def draw_layers(ax: Axes, _: int, g: pd.DataFrame = g) -> None:
                    for lname, lg in g.groupby("name"):
                        lg = lg.groupby("level").pqi.mean()
                        ax.plot(lg.index, lg.to_numpy(), marker=".", label=lname)
                    level_axis(ax)

                names.append(
                    figure(
                        out,
                        f"pqi_layers_{slug(dataset, model, label)}",
                        draw_layers,
                        f"{label}: per-layer PQI ({p}, {q})",
                        "level",
                        "PQI",
                    )
                )
    sparsity = c.sparsity
    if not sparsity.empty:  # runs without sparsity.csv (none written yet) draw nothing here
        sparsity = sparsity[(sparsity.dataset == dataset) & (sparsity.model == model)]
    for label, g in sparsity.groupby("label") if not sparsity.empty else ():
        if g["level"].nunique() < 2:
            continue

        def draw_remaining(ax: Axes, _: int, g: pd.DataFrame = g) -> None:
            for lname, lg in g.groupby("name"):
                lg = lg.groupby("level").sparsity.mean()
                ax.plot(lg.index, 100 * (1 - lg.to_numpy()), marker=".", label=lname)
            ax.set_yscale("log")
            level_axis(ax)

        names.append(
            figure(
                out,
                f"layer_remaining_{slug(dataset, model, label)}",
                draw_remaining,
                f"{label}: remaining weights per layer",
                "level",
                "remaining % (log)",
            )
        )
    return names


def recall_change(c: Collection, dataset: str, model: str) -> pd.DataFrame:
    """Mean change of test recall against each run's own dense level 0, in points of percent:
    one row per (label, level > 0), one column per class (in class order)."""
    recall = c.recall
    if recall.empty:
        return pd.DataFrame()
    recall = recall[
        (recall.dataset == dataset) & (recall.model == model) & (recall.stage == "trained")
    ]
    dense = recall[recall.level == 0].set_index(["run", "class"]).recall
    pruned = recall[recall.level > 0].copy()
    if pruned.empty:
        return pd.DataFrame()
    pruned["change"] = 100 * (
        pruned["recall"]
        - dense.reindex(pd.MultiIndex.from_frame(pruned[["run", "class"]])).to_numpy()
    )
    names = pruned.groupby("class")["class_name"].first()
    table = pruned.pivot_table(
        index=["label", "level"], columns="class", values="change", aggfunc="mean"
    )
    if len(table) > HEATMAP_ROWS:  # each row's final level only
        last = table.reset_index().groupby("label")["level"].transform("max")
        table = table[(table.reset_index()["level"] == last).to_numpy()]
    table.columns = [str(names[k]) for k in table.columns]
    return table


def recall_heatmap(c: Collection, dataset: str, model: str, out: FigureDir) -> str | None:
    table = recall_change(c, dataset, model)
    if table.empty:
        return None
    rows, classes = table.shape
    one_shot = table.index.get_level_values("level").max() <= 1
    row_names = [lab if one_shot else f"{lab} @ {lv}" for lab, lv in table.index]
    width = min(20.0, max(6.0, 3.0 + 0.14 * classes))
    height = min(14.0, max(3.0, 1.5 + 0.28 * rows))
    fig, ax = plt.subplots(figsize=(width, height))
    values = table.to_numpy(dtype=float)
    bound = max(1.0, float(np.nanmax(np.abs(values)))) if np.isfinite(values).any() else 1.0
    image = ax.imshow(
        values, aspect="auto", cmap="RdBu", vmin=-bound, vmax=bound, interpolation="nearest"
    )
    step = max(1, math.ceil(classes / 50))  # at most 50 class labels
    ax.set_xticks(range(0, classes, step))
    ax.set_xticklabels(table.columns[::step], rotation=90, fontsize=7)
    ax.set_yticks(range(rows))
    ax.set_yticklabels(row_names, fontsize=7)
    ax.set_xlabel("class")
    fig.colorbar(image, ax=ax, label="recall change vs dense (points of %)", fraction=0.04)
    ax.set_title(f"{dataset} / {model}: per-class test recall, change against the dense level")
    return out.save(fig, f"recall_{slug(dataset, model)}")
