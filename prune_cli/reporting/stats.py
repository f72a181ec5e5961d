"""Statistics of the recall-distortion study (Good et al. 2022; METHODS.md section 2).

- t-based confidence intervals of E[alpha] per method and ratio, at level 99% with a Bonferroni
  correction over the m ratios (each interval at 1 - 0.01 / m);
- one-sided paired t-tests between consecutive ratios of a method (H1: alpha grows with t);
- two-sided paired t-tests between methods at each ratio.

Pairs are runs of the same dataset, model and seed (the same dense model when ``dense_from``
was used).

``alphas`` has columns dataset, model, series, label, target, seed, alpha and, optionally,
collapsed (one row per run): ``label`` is a report row (runs whose configs differ only in seed),
``series`` the same without the pruning target (a method's curve over ratios t), ``target`` the
ratio t (NaN for a method that reaches its sparsity by training: an interval, no test).
Without a ``series`` column the label is the series. Every interval and test counts the runs
that collapsed (``collapsed``). A seed that a row holds twice (the same run
reported from two directories) is averaged before pairing, so that a pair is one per seed.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats


def t_interval(values: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """(mean, low, high) of the t-based interval of the mean; NaN bounds for fewer than 2."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if len(values) else math.nan
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1)
    half /= math.sqrt(len(values))
    return mean, mean - half, mean + half


def _with_series(alphas: pd.DataFrame) -> pd.DataFrame:
    if "series" in alphas:
        return alphas
    return alphas.assign(series=alphas["label"])


def _with_target(alphas: pd.DataFrame) -> pd.DataFrame:
    """The rows a test between ratios or methods can use: a method that reaches its sparsity
    by training has no target ratio to be compared at."""
    alphas = _with_series(alphas)
    return alphas[alphas["target"].notna()]


def alpha_intervals(alphas: pd.DataFrame, level: float = 0.99) -> pd.DataFrame:
    """Per (dataset, model, label): n, mean alpha and its Bonferroni-corrected interval.

    The correction is over the m targets of the row's series (its method's ratios).
    """
    rows = []
    alphas = _with_series(alphas)
    for (dataset, model, _), group in alphas.groupby(["dataset", "model", "series"]):
        m = max(1, group["target"].nunique())  # a series with no target is one interval
        confidence = 1 - (1 - level) / m
        for (label, target), sub in group.groupby(["label", "target"], dropna=False):
            mean, low, high = t_interval(sub["alpha"].dropna().to_numpy(), confidence)
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "label": label,
                    "target": target,
                    "n": int(sub["alpha"].notna().sum()),
                    "collapsed": _collapsed_runs(sub),
                    "alpha_mean": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "confidence": confidence,
                }
            )
    return pd.DataFrame(rows)


def _collapsed_runs(*groups: pd.DataFrame) -> int:
    """Runs among ``groups`` that collapsed (0 where the frame does not say)."""
    return sum(int(g["collapsed"].sum()) for g in groups if "collapsed" in g)


def _by_seed(group: pd.DataFrame) -> pd.Series:
    """alpha per seed (a duplicated seed averaged: a seed index must be unique to pair on)."""
    return group.groupby("seed")["alpha"].mean()


def _paired(a: pd.Series, b: pd.Series, alternative: str) -> tuple[int, float, float]:
    joined = pd.concat([a, b], axis=1, join="inner").dropna()
    if len(joined) < 2:
        return len(joined), math.nan, math.nan
    with warnings.catch_warnings():  # identical samples: scipy warns, the result is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(joined.iloc[:, 1], joined.iloc[:, 0], alternative=alternative)
    return len(joined), float(result.statistic), float(result.pvalue)


def consecutive_ratio_tests(alphas: pd.DataFrame) -> pd.DataFrame:
    """One-sided paired t-tests, alpha(t_next) > alpha(t), per series and consecutive ratios."""
    rows = []
    alphas = _with_target(alphas)
    for (dataset, model, series), group in alphas.groupby(["dataset", "model", "series"]):
        # one point per report row, in target order (two rows at one target: both, by label)
        points = sorted(group.groupby(["target", "label"]), key=lambda point: point[0])
        for ((t0, label0), g0), ((t1, label1), g1) in itertools.pairwise(points):
            n, statistic, p = _paired(_by_seed(g0), _by_seed(g1), "greater")
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "series": series,
                    "label_from": label0,
                    "label_to": label1,
                    "t_from": t0,
                    "t_to": t1,
                    "n": n,
                    "collapsed": _collapsed_runs(g0, g1),
                    "t_statistic": statistic,
                    "p_value": p,
                }
            )
    return pd.DataFrame(rows)


def method_pair_tests(alphas: pd.DataFrame) -> pd.DataFrame:
    """Two-sided paired t-tests between every two series (methods) at each ratio.

    A series is named by its report row's label where it has two rows at one ratio.
    """
    rows = []
    alphas = _with_target(alphas)
    for (dataset, model, target), group in alphas.groupby(["dataset", "model", "target"]):
        one_row_each = group.groupby("series")["label"].nunique().max() == 1
        names = group["series"] if one_row_each else group["label"]
        by_name = dict(list(group.groupby(names)))
        series = {name: _by_seed(g) for name, g in by_name.items()}
        collapsed = {name: _collapsed_runs(g) for name, g in by_name.items()}
        labels = sorted(series)
        for i, a in enumerate(labels):
            for b in labels[i + 1 :]:
                n, statistic, p = _paired(series[a], series[b], "two-sided")
                rows.append(
                    {
                        "dataset": dataset,
                        "model": model,
                        "target": target,
                        "method_a": a,
                        "method_b": b,
                        "n": n,
                        "collapsed": collapsed[a] + collapsed[b],
                        "t_statistic": statistic,
                        "p_value": p,
                    }
                )
    return pd.DataFrame(rows)
