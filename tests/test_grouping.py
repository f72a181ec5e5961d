"""prune-report's grouping: a row is the runs whose configs differ only in seed.

Fake run directories (summary.json, a full resolved config.yaml, the CSVs) for sweeps over
``method.sparsity``, ``method.rate``, ``method.ratio``, ``train.lr`` and a method x sparsity grid;
every row's n, means, std and target are checked against the fakes' own values, selected by
their configs (not by the code under test). Malformed inputs are listed as unreadable.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import compose_config, record_figures
from omegaconf import OmegaConf

from prune_cli.paths import RunPaths
from prune_cli.pruning.results import target_ratio
from prune_cli.report_cli import main as report_main
from prune_cli.reporting.collect import collect
from prune_cli.reporting.report import accuracy_table, alpha_frame
from prune_cli.reporting.stats import alpha_intervals

_BASE: dict[str, dict] = {}


def base_config(method: str) -> dict:
    """The resolved config prune-run writes for ``method`` on the MLP (composed once)."""
    if method not in _BASE:
        cfg = compose_config([f"method={method}", "model=mlp"])
        _BASE[method] = OmegaConf.to_container(cfg, resolve=True)
    return copy.deepcopy(_BASE[method])


def set_dotted(config: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[leaf] = value


def level_sparsities(config: dict) -> list[float]:
    """Each level's sparsity as the level schedule sets it (the fakes' ground truth)."""
    m = config["method"]
    n = m.get("levels", 1)
    if n == 0:  # a dense run
        return [0.0]
    if m.get("rate") is not None:
        return [1 - (1 - m["rate"]) ** k for k in range(n + 1)]
    final = 1 - 1 / m["ratio"] if m.get("ratio") is not None else m["sparsity"]
    return [1 - (1 - final) ** (k / n) for k in range(n + 1)]


def fake_run(root: Path, method: str, seed: int, settings: dict[str, Any], test: float) -> dict:
    """A completed run; level k's test accuracy is ``test - 0.01 k``, alpha ``1 + test``."""
    config = base_config(method)
    for key, value in {"seed": seed, **settings}.items():
        set_dotted(config, key, value)
    sparsities = level_sparsities(config)
    levels = [
        {
            "level": k,
            "sparsity": s,
            "val_accuracy": test + 0.005,
            "test_accuracy": test - 0.01 * k,
            "alpha": None if k == 0 else 1 + test,
        }
        for k, s in enumerate(sparsities)
    ]
    paths = RunPaths(root)
    root.mkdir(parents=True)
    summary = {"status": "completed", "method": method, "model": "mlp", "dataset": "digits"}
    paths.summary.write_text(json.dumps({**summary, "seed": seed, "levels": levels}))
    paths.config.write_text(yaml.safe_dump(config))
    rows = [(k, "trained", c, f"c{c}", 10, 0.9) for k in range(len(levels)) for c in range(2)]
    pd.DataFrame(
        rows, columns=["level", "stage", "class", "class_name", "support", "recall"]
    ).to_csv(paths.per_class_recall, index=False)
    pd.DataFrame(
        [(k, "trained", "global", "all", 0.5, 1.0, 0.1) for k in range(len(levels))],
        columns=["level", "stage", "scope", "name", "p", "q", "pqi"],
    ).to_csv(paths.pqi, index=False)
    pd.DataFrame(
        [(k, "fc.weight", 100, round(100 * (1 - s)), s) for k, s in enumerate(sparsities)],
        columns=["level", "name", "numel", "nonzero", "sparsity"],
    ).to_csv(paths.sparsity, index=False)
    return {"dir": str(root), "method": method, "seed": seed, "config": config, "test": test}


def sweep(root: Path, methods: list[str], grid: list[dict[str, Any]], seeds=(0, 1, 2)) -> list:
    """Runs of every method x setting x seed, each with its own test accuracy."""
    runs = []
    for i, (method, settings) in enumerate((m, g) for m in methods for g in grid):
        for seed in seeds:
            test = 0.5 + 0.03 * i + 0.011 * seed**2  # distinct per row and seed
            name = f"{method}-{i}-s{seed}"
            runs.append(fake_run(root / name, method, seed, settings, test))
    return runs


SWEEPS = {
    "sparsity": (["magnitude"], [{"method.sparsity": 0.5}, {"method.sparsity": 0.9}]),
    "rate": (
        ["lt"],
        [{"method.rate": 0.2, "method.levels": 2}, {"method.rate": 0.5, "method.levels": 2}],
    ),
    "ratio": (["gradient"], [{"method.ratio": 2}, {"method.ratio": 4}, {"method.ratio": 10}]),
    "train.lr": (["magnitude"], [{"train.lr": 0.1}, {"train.lr": 0.01}]),
    "method x sparsity": (
        ["magnitude", "random"],
        [{"method.sparsity": 0.5}, {"method.sparsity": 0.9}],
    ),
}


def expected_target(config: dict) -> float:
    m = config["method"]
    if m.get("ratio") is not None:
        return float(m["ratio"])
    if m.get("rate") is not None:
        return (1 - m["rate"]) ** -m["levels"]
    return 1 / (1 - m["sparsity"])


@pytest.mark.parametrize("name", list(SWEEPS))
def test_every_row_is_one_config_over_seeds(tmp_path, name):
    methods, grid = SWEEPS[name]
    runs = sweep(tmp_path / "sweep", methods, grid)
    c = collect([tmp_path / "sweep"])
    table = accuracy_table(c.levels, list(c.varying))
    # one row per config and level: never two configs in one row
    assert len(table) == sum(len(level_sparsities(r["config"])) for r in runs) // 3
    assert table.groupby(["label", "level"]).size().max() == 1
    labels = dict(zip(c.runs.run, c.runs.label, strict=True))
    for method in methods:
        for settings in grid:
            members = [
                r
                for r in runs
                if r["method"] == method
                and all(_get(r["config"], k) == v for k, v in settings.items())
            ]
            assert len(members) == 3
            (label,) = {labels[r["dir"]] for r in members}  # one label for the three seeds
            for k, s in enumerate(level_sparsities(members[0]["config"])):
                row = table[(table.label == label) & (table.level == k)].iloc[0]
                tests = [r["test"] - 0.01 * k for r in members]
                assert row.n == 3 and row.seeds == "0,1,2" and row.duplicate_seeds == ""
                assert row.test_mean == pytest.approx(np.mean(tests))
                assert row.test_std == pytest.approx(np.std(tests, ddof=1))
                assert row.remaining_mean == pytest.approx(1 - s)
                assert row.target == pytest.approx(expected_target(members[0]["config"]))
    # the varying keys are named, with the families whose labels show them
    varied = {k for s in grid for k in s if len({json.dumps(g.get(k)) for g in grid}) > 1}
    assert set(c.varying) == varied
    # alpha: one row per config, never averaged across targets
    intervals = alpha_intervals(alpha_frame(c))
    assert len(intervals) == len(methods) * len(grid)
    for _, row in intervals.iterrows():
        members = [r for r in runs if labels[r["dir"]] == row.label]
        assert row.n == 3
        assert row.alpha_mean == pytest.approx(np.mean([1 + r["test"] for r in members]))
        assert row.target == pytest.approx(expected_target(members[0]["config"]))


def _get(config: dict, key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def test_a_sparsity_sweep_report_is_right_end_to_end(tmp_path):
    """The issue's case: 0.5 and 0.9 are two rows (remaining 50% and 10%), n = 3 each."""
    methods, grid = SWEEPS["method x sparsity"]
    sweep(tmp_path / "sweep", methods, grid)
    out = tmp_path / "report"
    report_main([str(tmp_path / "sweep"), "-o", str(out), "--formats", "png"])
    accuracy = pd.read_csv(out / "accuracy.csv")
    pruned = accuracy[accuracy.level == 1].set_index("label")
    assert sorted(pruned.index) == [
        "magnitude sparsity=0.5",
        "magnitude sparsity=0.9",
        "random sparsity=0.5",
        "random sparsity=0.9",
    ]
    assert list(pruned.n) == [3, 3, 3, 3]
    assert pruned.loc["random sparsity=0.9", "remaining_mean"] == pytest.approx(0.1)
    assert pruned.loc["random sparsity=0.9", "method.sparsity"] == pytest.approx(0.9)
    alpha = pd.read_csv(out / "alpha.csv").set_index("label")
    assert alpha.loc["magnitude sparsity=0.5", "target"] == pytest.approx(2)
    assert alpha.loc["magnitude sparsity=0.9", "target"] == pytest.approx(10)
    consecutive = pd.read_csv(out / "alpha_consecutive_tests.csv")
    assert sorted(consecutive.series) == ["magnitude", "random"]
    assert set(zip(consecutive.t_from, consecutive.t_to, strict=True)) == {(2, 10)}
    pairs = pd.read_csv(out / "alpha_method_tests.csv")
    assert sorted(pairs.target) == [2, 10] and set(pairs.method_a) == {"magnitude"}
    for name in ("index.md", "accuracy.md"):
        assert "`method.sparsity` (magnitude, random)" in (out / name).read_text()


def test_settings_that_never_change_results_do_not_split_rows(tmp_path):
    runs = [
        ({"device": "cpu", "progress": False, "dense_from": "/a/dense-s0"}, 0),
        ({"device": "cuda", "output_root": "elsewhere", "dense_from": "/a/dense-s1"}, 1),
        ({"dataset.root": "/data", "train.eval_batch_size": 7, "overwrite": True}, 2),
    ]
    for settings, seed in runs:
        fake_run(tmp_path / f"r{seed}", "magnitude", seed, settings, 0.8)
    c = collect([tmp_path])
    assert c.varying == {} and set(c.runs.label) == {"magnitude"}
    table = accuracy_table(c.levels)
    assert list(table.n) == [3] * len(table)


def test_dense_runs_are_their_own_family(tmp_path):
    """A dense baseline's settings (levels=0, its own train.retrain) do not label pruned runs."""
    for seed in (0, 1):
        fake_run(tmp_path / f"dense-{seed}", "magnitude", seed, {"method.levels": 0}, 0.9)
        for ratio in (2, 10):
            settings = {"method.ratio": ratio, "method.levels": 1, "train.retrain": {"epochs": 3}}
            fake_run(tmp_path / f"mp-{ratio}-{seed}", "magnitude", seed, settings, 0.8)
    c = collect([tmp_path])
    assert set(c.runs.label) == {"dense", "magnitude ratio=2", "magnitude ratio=10"}
    assert set(c.runs.series) == {"dense", "magnitude"}
    assert c.runs.set_index("label").target.isna()["dense"].all()


def test_duplicate_seeds_are_reported_not_a_crash(tmp_path):
    for copy_ in ("a", "b"):
        for seed, test in ((0, 0.7), (1, 0.8)):
            fake_run(tmp_path / copy_ / f"s{seed}", "magnitude", seed, {}, test)
    fake_run(tmp_path / "a" / "other", "magnitude", 0, {"method.sparsity": 0.5}, 0.6)
    out = tmp_path / "report"
    report_main([str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out), "--formats", "png"])
    accuracy = pd.read_csv(out / "accuracy.csv", dtype={"seeds": str, "duplicate_seeds": str})
    row = accuracy[(accuracy.label == "magnitude sparsity=0.9") & (accuracy.level == 1)].iloc[0]
    assert row.n == 4 and row.seeds == "0,0,1,1" and row.duplicate_seeds == "0,1"
    assert row.test_mean == pytest.approx(np.mean([0.7, 0.8, 0.7, 0.8]) - 0.01)
    index = (out / "index.md").read_text()
    assert "Duplicate seeds" in index and "magnitude sparsity=0.9: seed 0,1" in index


def test_target_is_the_pruning_ratio():
    assert target_ratio({"method.ratio": 4, "method.sparsity": 0.9}) == 4
    assert target_ratio({"method.sparsity": 0.9}) == 10  # not 10.000000000000002
    assert target_ratio({"method.rate": 0.5, "method.levels": 3, "method.sparsity": 0.9}) == 8
    assert target_ratio({"method.p": 0.5}) is None  # SAP: sparsity emerges


def _write(path: Path, content: str | bytes) -> None:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


MALFORMED = {
    "summary not a mapping": ("summary.json", "[1, 2]", "summary is not a mapping"),
    "summary not JSON": ("summary.json", '{"status": "compl', "summary.json"),
    "bad YAML config": ("config.yaml", "method: {name: [magnitude\n", "config.yaml is not"),
    "config not a mapping": ("config.yaml", "- 1\n- 2\n", "config.yaml is not a mapping"),
    "config missing": ("config.yaml", None, "config.yaml is missing"),
    "CSV with a bad row": ("pqi.csv", "level,stage\n1,a,b,c,d\n", "pqi.csv is corrupt"),
    "CSV not text": ("sparsity.csv", b"\xff\xfe\x00\x81garbage", "sparsity.csv is corrupt"),
    "CSV empty": ("per_class_recall.csv", "", "per_class_recall.csv is corrupt"),
    "CSV missing a column": ("pqi.csv", "level,stage\n1,trained\n", "no column scope"),
    "level without sparsity": ("summary.json", "no-sparsity", "has no sparsity"),
    "levels not a list": ("summary.json", "levels-mapping", "levels is not a list"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_runs_are_listed_unreadable_and_the_report_completes(tmp_path, case, monkeypatch):
    name, content, reason = MALFORMED[case]
    drawn = None if case == next(iter(MALFORMED)) else record_figures(monkeypatch)
    for seed in (0, 1):
        fake_run(tmp_path / "sweep" / f"good-{seed}", "magnitude", seed, {}, 0.8)
    bad = tmp_path / "sweep" / "bad"
    fake_run(bad, "magnitude", 2, {}, 0.1)
    path = bad / name
    if content is None:
        path.unlink()
    elif content in ("no-sparsity", "levels-mapping"):
        summary = json.loads(path.read_text())
        if content == "no-sparsity":
            del summary["levels"][1]["sparsity"]
        else:
            summary["levels"] = {"0": summary["levels"][0]}
        path.write_text(json.dumps(summary))
    else:
        _write(path, content)
    c = collect([tmp_path / "sweep"])
    listed = c.runs.set_index("run").loc[str(bad)]
    assert listed.status == "unreadable" and reason in listed.reason
    assert str(bad) not in set(c.levels.run)
    for frame in (c.pqi, c.recall, c.sparsity):
        assert str(bad) not in set(frame.run)
    out = tmp_path / "report"
    report_main([str(tmp_path / "sweep"), "-o", str(out), "--formats", "png"])
    index = (out / "index.md").read_text()
    assert "unreadable" in index and reason in index
    accuracy = pd.read_csv(out / "accuracy.csv")
    assert set(accuracy.n) == {2}  # the good runs, whatever the bad one held
    assert accuracy[accuracy.level == 1].test_mean.iloc[0] == pytest.approx(0.79)
    good = {str(tmp_path / "sweep" / f"good-{seed}") for seed in (0, 1)}
    if drawn is None:  # the figures drawn, of the good runs alone
        assert list(out.glob("*.png")) and "![" in index
    else:
        assert drawn == [good]
