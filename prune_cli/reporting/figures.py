"""``prune-report``'s figures, one set per study (dataset, model), each as PNG and PDF (SVG on
request).

Made for papers: every title names the dataset and the model; integer ticks on level axes;
logarithmic axes carry plain labels (remaining weights: 100, 50, 20, 10, 5, 2, 1 ... %, dense on
the left; MACs: 1K, 2K, 5K ...), never matplotlib's ``9x10^1``; accuracy plots draw the dense
baseline (the study's mean level-0 test accuracy) as a dashed line; error bars (one standard
deviation over seeds) wherever a point averages more than one run, and a note below the panels
says so with n; a point whose mean holds a run that collapsed (a class at test recall 0 or a
layer with no weight left, :mod:`prune_cli.recording.measure`) is marked with a red cross. The
legend sits outside the axes, so it never covers data. Per-layer figures list the layers in
network order: the order the run wrote them in ``sparsity.csv`` (its per-tensor table follows
the model's parameters), not the alphabet (``features.10`` after ``features.2``). The
per-class recall figure is a heat map of the change in recall against the dense level (rows:
report rows, columns: classes), so that 100 classes and a dozen methods stay one readable
figure.

Fonts are embedded as TrueType (``pdf.fonttype`` 42), not matplotlib's default Type 3, which
publishers' checks reject; SVGs keep text as text. Both are set for the save only
(``rc_context``): importing the report changes no one else's matplotlib settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    MaxNLocator,
    NullFormatter,
    NullLocator,
)

from prune_cli.pruning.results import Marker
from prune_cli.reporting.collect import Collection, dense_baselines, is_collapsed
from prune_cli.reporting.pivot import COLLAPSED, count_text

#: candidate labelled ticks of the remaining-weights axis, in percent
REMAINING_TICKS = (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
#: figure formats: PNG for the index page, PDF for the paper
FORMATS = ("png", "pdf")
#: more report rows than this: the recall heat map shows each row's final level only
HEATMAP_ROWS = 40
#: set while a figure is saved: TrueType (Type 42) fonts in PDF and PostScript, because
#: publishers reject the default Type 3; text as text in SVG (editable, searchable)
SAVE_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none"}
#: the legend entry of the red crosses on collapsed points
COLLAPSED_LABEL = "collapsed run in the mean"
COLLAPSED_NOTE = (
    "×: the point's mean holds a run that collapsed "
    "(a class at test recall 0 or a layer with no weight left)"
)


def slug(*parts: object) -> str:
    """A file-name part: labels may hold any config value (lists, paths, quotes)."""
    return "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p).replace(" ", "")) for p in parts)


def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key that reads digit runs as numbers: ``layer2`` before ``layer10``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", name)
        if part
    )


def layer_order(names: Iterable[object], *stored: pd.DataFrame) -> list[str]:
    """``names`` in network order.

    The order is the one stored with the runs: the row order of the first of ``stored`` (tables
    with ``run`` and ``name`` columns, as the files were read: ``sparsity.csv`` lists a model's
    tensors in parameter order) that lists any of them, a layer's position averaged over the
    runs that list it. Layers that no stored table lists come after, and everything in natural
    order (digits as numbers) when none does.
    """
    wanted = list(dict.fromkeys(str(n) for n in names))
    for frame in stored:
        if frame.empty or not {"run", "name"} <= set(frame.columns):
            continue
        first = frame[["run", "name"]].astype(str).drop_duplicates()
        first = first[first["name"].isin(wanted)]
        if first.empty:
            continue
        rank = first.groupby("run").cumcount().to_numpy()
        position = pd.Series(rank, index=first["name"].to_numpy()).groupby(level=0).mean()
        listed = sorted(position.index, key=lambda k: (position[k], natural_key(k)))
        rest = sorted((k for k in wanted if k not in position.index), key=natural_key)
        return listed + rest
    return sorted(wanted, key=natural_key)


def level_axis(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _decade_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks over [lo, hi] (decades alone where that would be more than 8)."""
    steps = [
        (m, m * 10.0**e)
        for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
        for m in (1, 2, 5)
    ]
    inside = [(m, t) for m, t in steps if lo / 1.05 <= t <= hi * 1.05]
    if len(inside) > 8:
        inside = [(m, t) for m, t in inside if m == 1]
    return [t for _, t in inside]


def log_axis(
    ax: Axes,
    which: str,
    values: np.ndarray,
    candidates: Sequence[float] | None = None,
    text: Callable[[float], str] = "{:g}".format,
) -> None:
    """A log-scaled ``which`` ("x" or "y") axis whose ticks are plain numbers (100, 50, 20 or
    1K, 2K), not matplotlib's ``10^2`` and ``5x10^1``: the ``candidates`` (1-2-5 steps when
    None) within the data's range, or the range's two ends where fewer than two fall in it.
    Minor ticks are off: below a decade matplotlib would label them in its own notation."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if not values.size:
        return
    lo, hi = float(values.min()), float(values.max())
    pool = _decade_ticks(lo, hi) if candidates is None else candidates
    ticks = [t for t in pool if lo / 1.05 <= t <= hi * 1.05]
    if len(ticks) < 2:  # a narrow range: label its ends
        ticks = sorted({float(f"{lo:.2g}"), float(f"{hi:.2g}")})
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: text(v)))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def remaining_axis(ax: Axes, percents: np.ndarray) -> None:
    """Log scale, labelled ticks, dense on the left (remaining weights fall to the right)."""
    log_axis(ax, "x", percents, REMAINING_TICKS)
    if not ax.xaxis_inverted():
        ax.invert_xaxis()


def _legend(ax: Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    # matplotlib lists plain artists (the crosses) before error-bar lines: the rows first, in
    # the order they were drawn (network order for layers), the crosses' entry last
    pairs = sorted(zip(handles, labels, strict=True), key=lambda hl: hl[1] == COLLAPSED_LABEL)
    if pairs:
        ax.legend(
            *zip(*pairs, strict=True),
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            ncol=max(1, math.ceil(len(handles) / 24)),
        )


@dataclass
class Marks:
    """What a figure's error bars and crosses stand for, gathered while its panels are drawn,
    for the note below them."""

    #: n (runs averaged) of every point drawn with an error bar
    seeds: set[int] = field(default_factory=set)
    #: a point of one run drawn beside points with error bars
    single: bool = False
    collapsed: bool = False

    def note(self) -> str:
        lines = []
        if self.seeds:
            lo, hi = min(self.seeds), max(self.seeds)
            n = f"{lo}" if lo == hi else f"{lo}-{hi}"
            lines.append(
                f"error bars: ± 1 std over n = {n} seeds"
                + ("; a point without a bar is one seed" if self.single else "")
            )
        if self.collapsed:
            lines.append(COLLAPSED_NOTE)
        return "\n".join(lines)


@dataclass(frozen=True)
class FigureDir:
    """Where figures go, and in which formats (PNG first: the index shows it)."""

    root: Path
    formats: tuple[str, ...] = FORMATS

    def save(self, fig: plt.Figure, stem: str) -> str:
        """Write the figure in every format (fonts as :data:`SAVE_RC` says); returns the
        PNG's name."""
        try:
            with plt.rc_context(SAVE_RC):
                for fmt in self.formats:
                    fig.savefig(self.root / f"{stem}.{fmt}", dpi=110, bbox_inches="tight")
        finally:
            plt.close(fig)
        return f"{stem}.png"


def figure(
    out: FigureDir,
    stem: str,
    draw: Callable[[Axes, int, Marks], None],
    title: str,
    xlabel: str,
    ylabel: str,
    ncols: int = 1,
) -> str:
    """A row of ``ncols`` panels; the legend of the last panel stands for all (the panels of
    one figure draw the same rows); below them, what the error bars and crosses are."""
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4.0), squeeze=False)
    marks = Marks()
    for i, ax in enumerate(axes[0]):
        draw(ax, i, marks)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    _legend(axes[0][-1])
    fig.suptitle(title)
    note = marks.note()
    if note:  # below the x label: the tight bounding box of the save takes it in
        fig.text(0.01, 0.0, note, ha="left", va="top", fontsize=7)
    return out.save(fig, stem)


def _errorbar(
    ax: Axes,
    marks: Marks,
    x: Iterable[float],
    y: Iterable[float],
    std: Iterable[float],
    n: Iterable[int],
    label: str,
    collapsed: Iterable[bool] | None = None,
    **style: object,
) -> None:
    """Points with one std of error bars where they average more than one run; a red cross
    on each point whose mean holds a collapsed run."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = np.asarray(n, dtype=float)
    bars = n > 1
    std = np.where(bars, np.nan_to_num(np.asarray(std, dtype=float)), 0.0)
    options = {"marker": "o", "ms": 3, "capsize": 2, **style}
    ax.errorbar(x, y, yerr=std if bars.any() else None, label=label, **options)
    marks.seeds.update(int(k) for k in n[bars])
    marks.single |= bool(bars.any() and (~bars).any())
    if collapsed is not None:
        hit = np.asarray(list(collapsed), dtype=bool)
        if hit.any():
            shown = ax.get_legend_handles_labels()[1]
            ax.scatter(
                x[hit],
                y[hit],
                marker="x",
                s=40,
                color="red",
                linewidths=1.5,
                zorder=5,
                label="_nolegend_" if COLLAPSED_LABEL in shown else COLLAPSED_LABEL,
            )
            marks.collapsed = True


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
    g = g.groupby(x)[["test", "test_std", "n", "collapsed"]].agg(
        {"test": "mean", "test_std": "mean", "n": "max", "collapsed": "max"}
    )
    return g.sort_index(ascending=False)


def _collapsed_runs(values: pd.Series) -> int:
    return int(sum(map(is_collapsed, values)))


def collapsed_levels(levels: pd.DataFrame) -> pd.Series:
    """(label, level) -> whether a run of that row collapsed at that level."""
    if "collapsed" not in levels:
        return pd.Series(dtype=bool)
    return levels.groupby(["label", "level"])["collapsed"].agg(_collapsed_runs) > 0


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
    if "collapsed" not in levels:  # runs written before collapse was recorded
        levels = levels.assign(collapsed=False)
    mean = (
        levels.groupby(["series", "label", "target", "level"], dropna=False)
        .agg(
            n=("run", "nunique"),
            remaining=("remaining", "mean"),
            test=("test_accuracy", "mean"),
            test_std=("test_accuracy", "std"),
            macs=("macs_sparse", "mean"),
            collapsed=("collapsed", _collapsed_runs),
        )
        .reset_index()
    )

    def draw_accuracy(ax: Axes, _: int, marks: Marks) -> None:
        for name, g in _lines(mean):
            g = _points(g, "remaining")
            x = 100 * g.index.to_numpy()
            _errorbar(
                ax, marks, x, 100 * g["test"], 100 * g["test_std"], g["n"], name, g["collapsed"] > 0
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

        def draw_macs(ax: Axes, _: int, marks: Marks) -> None:
            for name, g in _lines(mean[mean["macs"].notna()]):
                g = _points(g, "macs")
                _errorbar(
                    ax,
                    marks,
                    g.index.to_numpy(),
                    100 * g["test"],
                    100 * g["test_std"],
                    g["n"],
                    name,
                    g["collapsed"] > 0,
                )
            _dense_line(ax, levels)
            log_axis(ax, "x", mean["macs"].to_numpy(), text=count_text)
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
    collapsed = collapsed_levels(levels)
    for frame, column, what in ((c.pqi, "pqi", "PQ index"), (c.gini, "gini", "Gini index")):
        names += _index_plots(frame, column, what, dataset, model, remaining, collapsed, out)
    names += _layer_plots(c, dataset, model, collapsed, out)
    recall = recall_heatmap(c, dataset, model, out)
    if recall:
        names.append(recall)
    return names


def _at(collapsed: pd.Series, label: object, levels: Iterable[object]) -> list[bool]:
    """Whether a run of ``label`` collapsed at each of ``levels``."""
    return [bool(collapsed.get((label, lv), False)) for lv in levels]


def _index_plots(
    frame: pd.DataFrame,
    column: str,
    what: str,
    dataset: str,
    model: str,
    remaining: pd.Series,
    collapsed: pd.Series,
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

        def draw(ax: Axes, i: int, marks: Marks, x: str = x) -> None:
            g_all = agg
            if pairs[i] is not None:
                p, q = pairs[i]
                g_all = agg[(agg.p == p) & (agg.q == q)]
                ax.set_title(f"(p, q) = ({p}, {q})")
            for label, g in g_all.groupby("label"):
                g = g.sort_values("level")
                xs = g[x] * (100 if x == "remaining" else 1)
                hit = _at(collapsed, label, g["level"])
                _errorbar(ax, marks, xs, g["mean"], g["std"], g["count"], label, hit)
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


def layer_means(frame: pd.DataFrame, value: str, order: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Per layer, in ``order``: the ``mean``, ``std`` and ``n`` of ``value`` at each level (rows
    by level); ``n`` counts the runs that have a value (one row per run, layer and level)."""
    stats = (
        frame.groupby(["name", "level"])
        .agg(mean=(value, "mean"), std=(value, "std"), n=(value, "count"))
        .reset_index()
    )
    by_name = {str(name): g.set_index("level").sort_index() for name, g in stats.groupby("name")}
    return {name: by_name[name] for name in order if name in by_name}


def _layer_lines(
    ax: Axes, marks: Marks, means: dict[str, pd.DataFrame], label: str, collapsed: pd.Series
) -> None:
    """One line per layer (a small marker: many layers share the panel)."""
    for name, g in means.items():
        hit = _at(collapsed, label, g.index)
        _errorbar(ax, marks, g.index, g["mean"], g["std"], g["n"], name, hit, marker=".", ms=4)


def _layer_plots(
    c: Collection, dataset: str, model: str, collapsed: pd.Series, out: FigureDir
) -> list[str]:
    """Per label: the per-layer PQI (first (p, q)) and remaining weights across levels, mean ±
    std over the label's runs, layers in network order."""
    names = []
    sparsity = c.sparsity
    if not sparsity.empty:  # runs without sparsity.csv (none written yet) draw nothing here
        sparsity = sparsity[(sparsity.dataset == dataset) & (sparsity.model == model)]
    pqi = c.pqi
    layer = pd.DataFrame()
    if not pqi.empty:
        pqi = pqi[(pqi.dataset == dataset) & (pqi.model == model)]
        layer = pqi[(pqi.scope == "layer") & (pqi.stage == "trained")]
    if not layer.empty:
        p, q = min(zip(layer.p, layer.q, strict=True))
        layer = layer[(layer.p == p) & (layer.q == q)]
        for label, g in layer.groupby("label"):
            order = layer_order(g["name"], sparsity, g)
            means = layer_means(g, "pqi", order)

            def draw_layers(
                ax: Axes, _: int, marks: Marks, means=means, label: str = label
            ) -> None:
                _layer_lines(ax, marks, means, label, collapsed)
                level_axis(ax)

            names.append(
                figure(
                    out,
                    f"pqi_layers_{slug(dataset, model, label)}",
                    draw_layers,
                    f"{dataset} / {model}, {label}: per-layer PQI ({p}, {q})",
                    "level",
                    "PQI",
                )
            )
    for label, g in sparsity.groupby("label") if not sparsity.empty else ():
        if g["level"].nunique() < 2:
            continue
        # a layer with no weight left has no place on a log axis (its level is marked collapsed)
        percent = 100 * (1 - g["sparsity"].astype(float))
        g = g.assign(remaining_percent=percent.where(percent > 0))
        means = layer_means(g, "remaining_percent", layer_order(g["name"], g))

        def draw_remaining(
            ax: Axes, _: int, marks: Marks, means=means, g=g, label: str = label
        ) -> None:
            _layer_lines(ax, marks, means, label, collapsed)
            log_axis(ax, "y", g["remaining_percent"].to_numpy(), REMAINING_TICKS)
            level_axis(ax)

        names.append(
            figure(
                out,
                f"layer_remaining_{slug(dataset, model, label)}",
                draw_remaining,
                f"{dataset} / {model}, {label}: remaining weights per layer",
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
    """The heat map of :func:`recall_change` (None where no level is pruned); a row that holds
    a collapsed run is marked."""
    table = recall_change(c, dataset, model)
    if table.empty:
        return None
    rows, classes = table.shape
    one_shot = table.index.get_level_values("level").max() <= 1
    study = c.levels[(c.levels.dataset == dataset) & (c.levels.model == model)]
    collapsed = collapsed_levels(study)
    hits = [bool(collapsed.get((lab, lv), False)) for lab, lv in table.index]
    row_names = [
        (lab if one_shot else f"{lab} @ {lv}") + (f" {COLLAPSED}" if hit else "")
        for (lab, lv), hit in zip(table.index, hits, strict=True)
    ]
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
    title = f"{dataset} / {model}: per-class test recall, change against the dense level"
    if any(hits):  # under the title: rotated class names may reach below the figure
        title += (
            f"\n{COLLAPSED} the row holds a run that collapsed at that level "
            "(a class at test recall 0 or a layer with no weight left)"
        )
    ax.set_title(title, fontsize=9 if any(hits) else None)
    return out.save(fig, f"recall_{slug(dataset, model)}")
