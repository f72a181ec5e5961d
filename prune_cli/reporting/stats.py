"""Statistics of the recall-distortion study (Good et al. 2022; METHODS.md section 2).

- t-based confidence intervals of E[alpha] per method and ratio, at level 99% with a Bonferroni
  correction over the m ratios (each interval at 1 - 0.01 / m);
- one-sided paired t-tests between consecutive ratios of a method (H1: alpha grows with t);
- two-sided paired t-tests between methods at each ratio.

Pairs are runs of the same dataset, model and seed (the same dense model when ``dense_from``
was used).
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


def alpha_intervals(alphas: pd.DataFrame, level: float = 0.99) -> pd.DataFrame:
    """Per (dataset, model, label, target): n, mean alpha and its Bonferroni-corrected interval.

    ``alphas`` has columns dataset, model, label, target, seed, alpha.
    """
    rows = []
    for (dataset, model, label), group in alphas.groupby(["dataset", "model", "label"]):
        m = group["target"].nunique()
        confidence = 1 - (1 - level) / m
        for target, sub in group.groupby("target"):
            mean, low, high = t_interval(sub["alpha"].dropna().to_numpy(), confidence)
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "label": label,
                    "target": target,
                    "n": int(sub["alpha"].notna().sum()),
                    "alpha_mean": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "confidence": confidence,
                }
            )
    return pd.DataFrame(rows)


def _paired(a: pd.Series, b: pd.Series, alternative: str) -> tuple[int, float, float]:
    joined = pd.concat([a, b], axis=1, join="inner").dropna()
    if len(joined) < 2:
        return len(joined), math.nan, math.nan
    with warnings.catch_warnings():  # identical samples: scipy warns, the result is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(joined.iloc[:, 1], joined.iloc[:, 0], alternative=alternative)
    return len(joined), float(result.statistic), float(result.pvalue)


def consecutive_ratio_tests(alphas: pd.DataFrame) -> pd.DataFrame:
    """One-sided paired t-tests, alpha(t_next) > alpha(t), per method and consecutive ratios."""
    rows = []
    for (dataset, model, label), group in alphas.groupby(["dataset", "model", "label"]):
        series = {t: g.set_index("seed")["alpha"] for t, g in group.groupby("target")}
        targets = sorted(series)
        for t0, t1 in itertools.pairwise(targets):
            n, statistic, p = _paired(series[t0], series[t1], "greater")
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "label": label,
                    "t_from": t0,
                    "t_to": t1,
                    "n": n,
                    "t_statistic": statistic,
                    "p_value": p,
                }
            )
    return pd.DataFrame(rows)


def method_pair_tests(alphas: pd.DataFrame) -> pd.DataFrame:
    """Two-sided paired t-tests between every two methods at each ratio."""
    rows = []
    for (dataset, model, target), group in alphas.groupby(["dataset", "model", "target"]):
        series = {lab: g.set_index("seed")["alpha"] for lab, g in group.groupby("label")}
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
                        "t_statistic": statistic,
                        "p_value": p,
                    }
                )
    return pd.DataFrame(rows)
