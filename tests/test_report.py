"""prune-report: aggregation of synthetic runs, recall-distortion statistics, plots, sweeps."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli, run_config
from scipy import stats

from prune_cli.experiment import Experiment
from prune_cli.paths import RunPaths
from prune_cli.report_cli import main as report_main
from prune_cli.reporting import figures
from prune_cli.reporting.collect import collect
from prune_cli.reporting.pivot import pivots
from prune_cli.reporting.report import accuracy_table
from prune_cli.reporting.stats import alpha_intervals, consecutive_ratio_tests, method_pair_tests


def make_run(
    root, method, seed, levels, status="completed", method_cfg=None, classes=3, extra=None
):
    """A run directory as prune-run writes it; ``levels``: list of (sparsity, val, test, alpha);
    ``extra``: {level: more entries of its summary} (and a gini.csv is written with them)."""
    paths = RunPaths(root)
    root.mkdir(parents=True)
    summary = {
        "status": status,
        "method": method,
        "model": "mlp",
        "dataset": "digits",
        "seed": seed,
        "levels": [
            {
                "level": k,
                "sparsity": s,
                "params_nonzero": 100,
                "val_accuracy": v,
                "test_accuracy": t,
                "test_loss": 1.0,
                "alpha": a,
                "pqi": 0.1 + 0.01 * k,
            }
            for k, (s, v, t, a) in enumerate(levels)
        ],
    }
    for k, entries in (extra or {}).items():
        summary["levels"][k].update(entries)
    if status == "failed":
        summary["reason"] = "training loss became nan in epoch 3"
    paths.summary.write_text(json.dumps(summary))
    paths.config.write_text(yaml.safe_dump({"method": {"name": method, **(method_cfg or {})}}))
    recall = [
        (k, "trained", c, f"c{c}", 10, t)
        for k, (_, _, t, _) in enumerate(levels)
        for c in range(classes)
    ]
    pd.DataFrame(
        recall, columns=["level", "stage", "class", "class_name", "support", "recall"]
    ).to_csv(paths.per_class_recall, index=False)
    pqi = [
        (k, "trained", scope, name, p, q, 0.1 + 0.01 * k)
        for k in range(len(levels))
        for scope, name in (("global", "all"), ("layer", "net.1.weight"))
        for p, q in ((0.5, 1.0), (1.0, 2.0))
    ]
    pd.DataFrame(pqi, columns=["level", "stage", "scope", "name", "p", "q", "pqi"]).to_csv(
        paths.pqi, index=False
    )
    sparsity = [
        (k, "net.1.weight", 100, round(100 * (1 - s)), s) for k, (s, _, _, _) in enumerate(levels)
    ]
    pd.DataFrame(sparsity, columns=["level", "name", "numel", "nonzero", "sparsity"]).to_csv(
        paths.sparsity, index=False
    )
    if extra:
        gini = [
            (k, "trained", scope, name, 0.3 + 0.1 * k)
            for k in range(len(levels))
            for scope, name in (("global", "all"), ("layer", "net.1.weight"))
        ]
        pd.DataFrame(gini, columns=["level", "stage", "scope", "name", "gini"]).to_csv(
            paths.gini, index=False
        )


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for seed, (t1, t2) in enumerate([(0.90, 0.80), (0.92, 0.84), (0.94, 0.79)]):
        make_run(
            root / f"sap-{seed}",
            "sap",
            seed,
            [(0.0, 0.95, 0.96, None), (0.5, 0.93, t1, 1.1), (0.75, 0.9, t2, 1.3)],
        )
        make_run(
            root / f"lt-{seed}",
            "lt",
            seed,
            [(0.0, 0.95, 0.96, None), (0.2, 0.94, 0.95, 1.0), (0.36, 0.93, 0.9, 1.0)],
        )
    make_run(root / "broken", "sap", 9, [(0.0, 0.1, 0.1, None)], status="failed")
    (root / "running").mkdir()
    (root / "running" / "summary.json").write_text(json.dumps({"status": "running"}))
    return root


def test_aggregation_means_stds_and_left_out_runs(sweep):
    c = collect([sweep])
    assert len(c.runs) == 8 and len(c.completed) == 6
    table = accuracy_table(c.levels)
    sap2 = table[(table.label == "sap") & (table.level == 2)].iloc[0]
    assert sap2.n == 3
    assert sap2.test_mean == pytest.approx(np.mean([0.80, 0.84, 0.79]))
    assert sap2.test_std == pytest.approx(np.std([0.80, 0.84, 0.79], ddof=1))
    assert sap2.remaining_mean == pytest.approx(0.25)
    assert 9 not in set(c.levels.seed)  # the failed run is not in the means


def test_report_writes_tables_plots_and_index(sweep, tmp_path):
    out = tmp_path / "report"
    report_main([str(sweep), "-o", str(out)])
    index = (out / "index.md").read_text()
    assert "failed" in index and "training loss became nan" in index and "running" in index
    assert "92.00 ± 2.00" in (out / "accuracy.md").read_text()  # sap level 1: 0.90, 0.92, 0.94
    pngs = sorted(out.glob("*.png"))
    assert {p.name.split("_fashion")[0].split("_digits")[0] for p in pngs} >= {
        "accuracy_remaining",
        "pqi_level",
        "pqi_remaining",
        "recall",
    }
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
        width, height = struct.unpack(">II", data[16:24])
        assert 400 <= width <= 3000 and 300 <= height <= 1500
        assert f"]({png.name})" in index
    assert (out / "alpha.csv").exists()


def test_real_runs_of_a_sparsity_sweep_are_two_rows(tmp_path):
    """End to end on runs prune-run wrote: their full config.yaml groups by sparsity only."""
    quick = ["model=mlp", "train.epochs=1", "method.levels=1", "progress=false"]
    for sparsity in (0.5, 0.9):
        run = run_config([*quick, f"method.sparsity={sparsity}", f"output_root={tmp_path}"])
        summary = Experiment(run, tmp_path / "sweep" / f"s{sparsity}").run()
        assert summary["status"] == "completed"
    c = collect([tmp_path / "sweep"])
    assert c.varying == {"method.sparsity": ["magnitude"]}
    table = accuracy_table(c.levels, list(c.varying)).set_index(["label", "level"])
    for sparsity, target in ((0.5, 2), (0.9, 10)):
        row = table.loc[(f"magnitude sparsity={sparsity}", 1)]
        assert row.n == 1 and row.target == pytest.approx(target)
        assert row.remaining_mean == pytest.approx(1 - sparsity, abs=0.01)
        assert row.test_std != row.test_std  # one run: no spread is made up (NaN)


def test_report_refuses_empty_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path)])
    assert exit_info.value.code == 2 and "no runs" in capsys.readouterr().err


def alpha_data() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for label, slope in (("magnitude", 0.05), ("undecayed", 0.02)):
        for seed in range(6):
            for target in (2, 4, 10):
                rows.append(
                    {
                        "dataset": "d",
                        "model": "m",
                        "label": label,
                        "target": target,
                        "seed": seed,
                        "alpha": 0.9 + slope * target + rng.normal(0, 0.05),
                    }
                )
    return pd.DataFrame(rows)


def test_alpha_intervals_are_bonferroni_t_intervals():
    data = alpha_data()
    table = alpha_intervals(data).set_index(["label", "target"])
    values = data[(data.label == "magnitude") & (data.target == 4)].alpha.to_numpy()
    n, m = len(values), 3
    half = stats.t.ppf(1 - 0.01 / (2 * m), n - 1) * values.std(ddof=1) / math.sqrt(n)
    row = table.loc[("magnitude", 4)]
    assert row.n == 6 and row.alpha_mean == pytest.approx(values.mean())
    assert (row.ci_low, row.ci_high) == pytest.approx((values.mean() - half, values.mean() + half))


def test_paired_t_tests_by_hand():
    data = alpha_data()
    consecutive = consecutive_ratio_tests(data).set_index(["series", "t_from"])
    a = data[(data.label == "magnitude") & (data.target == 2)].sort_values("seed").alpha.to_numpy()
    b = data[(data.label == "magnitude") & (data.target == 4)].sort_values("seed").alpha.to_numpy()
    d = b - a
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    row = consecutive.loc[("magnitude", 2)]
    assert row.t_statistic == pytest.approx(t)
    assert row.p_value == pytest.approx(1 - stats.t.cdf(t, len(d) - 1))
    pairs = method_pair_tests(data).set_index("target")
    x = data[(data.label == "magnitude") & (data.target == 10)].sort_values("seed").alpha.to_numpy()
    y = data[(data.label == "undecayed") & (data.target == 10)].sort_values("seed").alpha.to_numpy()
    d = y - x
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    assert pairs.loc[10].t_statistic == pytest.approx(t)
    assert pairs.loc[10].p_value == pytest.approx(2 * (1 - stats.t.cdf(abs(t), len(d) - 1)))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "submitit_local"])
def test_two_job_multirun_through_a_launcher(tmp_path, launcher):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            f"hydra/launcher={launcher}",
            "method=magnitude,random",
            "model=mlp",
            "train.epochs=1",
            "method.levels=1",
            "progress=false",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(p.parent.name for p in sweep_dir.glob("*/summary.json"))
    assert [r.rsplit("-", 1)[0] for r in runs] == [
        "digits-mlp-magnitude-s0",
        "digits-mlp-random-s0",
    ]
    for p in sweep_dir.glob("*/summary.json"):
        summary = json.loads(p.read_text())
        assert summary["status"] == "completed"
        assert p.parent.name.endswith(summary["config_hash"])  # the job's own hash names it
    c = collect([sweep_dir])
    assert set(c.completed.method) == {"magnitude", "random"}


def test_a_method_that_sparsifies_while_training_has_no_dense_cell(tmp_path):
    """SA++-like runs have one level, 0, already sparse: their pivot cell is the target's."""
    root = tmp_path / "sweep"
    for seed, test in enumerate([0.90, 0.92, 0.94]):
        make_run(
            root / f"sapp-{seed}",
            "sapp",
            seed,
            [(0.9, 0.9, test, None)],
            method_cfg={"sparsity": 0.9},
        )
    out = tmp_path / "report"
    report_main([str(root), "-o", str(out), "--formats", "png"])
    md = (out / "pivot_digits_mlp_by_target.md").read_text()
    assert "| method | t = 10 |" in md and "| sapp | 92.00 ± 2.00 |" in md


def test_paper_ready_outputs_mark_few_runs_and_collapse(tmp_path):
    """gradient at t = 2 (3 seeds) and t = 10 (2 seeds, one of which lost class c1)."""
    root = tmp_path / "sweep"
    tests = {2: [0.90, 0.92, 0.94], 10: [0.80, 0.60]}
    for ratio, values in tests.items():
        for seed, test in enumerate(values):
            collapsed = ratio == 10 and seed == 1
            extra = {
                k: {
                    "macs_dense": 1000,
                    "macs_sparse": 1000 if k == 0 else 1000 // ratio,
                    "pruned_test_accuracy": None if k == 0 else test - 0.3,
                    "collapsed": collapsed and k == 1,
                    "zero_recall_classes": ["c1"] if collapsed and k == 1 else [],
                }
                for k in (0, 1)
            }
            make_run(
                root / f"gp-{ratio}-{seed}",
                "gradient",
                seed,
                [(0.0, 0.95, 0.96, None), (1 - 1 / ratio, 0.9, test, 1.0 + test)],
                method_cfg={"ratio": ratio},
                extra=extra,
            )
    out = tmp_path / "report"
    report_main([str(root), "-o", str(out)])
    rows = pd.read_csv(out / "accuracy.csv").set_index(["label", "level"])
    assert rows.loc[("gradient ratio=10", 1), "collapsed"] == 1
    assert rows.loc[("gradient ratio=10", 1), "macs_sparse_mean"] == 100
    assert rows.loc[("gradient ratio=2", 1), "pruned_mean"] == pytest.approx(0.62)
    accuracy = (out / "accuracy.md").read_text()
    # n = 2: std of 0.80, 0.60 is 0.1414; marked as from fewer than 3 runs and as collapsed
    assert "70.00 ± 14.14†‡" in accuracy and "92.00 ± 2.00 " in accuracy
    assert "| 1/2" in accuracy and "the mean mixes working and broken models" in accuracy
    index = (out / "index.md").read_text()
    assert "gradient ratio=10, seed 1, level 1: recall 0 for class c1" in index
    # the pivot: one row per method, columns dense, t = 2, t = 10
    md = (out / "pivot_digits_mlp_by_target.md").read_text()
    assert "| method | dense | t = 2 | t = 10 |" in md
    assert "| gradient | 96.00 ± 0.00 | 92.00 ± 2.00 | 70.00 ± 14.14†‡ |" in md
    assert "| gradient | - | 62.00 ± 2.00 | 40.00 ± 14.14† |" in md  # pruned accuracy
    assert "| gradient | 1K | 500 | 100 |" in md  # MACs
    tex = (out / "pivot_digits_mlp_by_target.tex").read_text()
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrrr}"):
        assert command in tex
    assert r"$70.00 \pm 14.14^{\dagger\ddagger}$" in tex and r"test accuracy \%" in tex
    alpha = pd.read_csv(out / "alpha.csv", keep_default_na=False).set_index("target")
    assert alpha.loc[10.0, "warning"] == "n < 3" and alpha.loc[2.0, "warning"] == ""
    pngs = sorted(out.glob("*.png"))
    names = {p.stem.split("_digits")[0] for p in pngs}
    assert {"accuracy_macs", "gini_level", "gini_remaining", "recall"} <= names
    for png in pngs:
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"


def test_recall_heatmap_stays_readable_for_100_classes_and_12_methods(tmp_path):
    for i in range(12):
        make_run(
            tmp_path / "runs" / f"m{i}",
            f"method{i:02d}",
            0,
            [(0.0, 0.9, 0.9, None), (0.5, 0.9, 0.5 + 0.03 * i, 1.0)],
            classes=100,
        )
    c = collect([tmp_path / "runs"])
    change = figures.recall_change(c, "digits", "mlp")
    assert change.shape == (12, 100)
    assert change.loc[("method03", 1), "c7"] == pytest.approx(100 * (0.59 - 0.9))
    name = figures.recall_heatmap(c, "digits", "mlp", figures.FigureDir(tmp_path, ("png",)))
    width, height = struct.unpack(">II", (tmp_path / name).read_bytes()[16:24])
    assert 600 <= width <= 2400 and 300 <= height <= 1500  # one panel, not 12 side by side


def test_a_run_with_only_its_dense_level_is_read(tmp_path):
    """Its recall_distortion.csv is a header without rows (no pruned level to compare)."""
    make_run(tmp_path / "run", "grda", 0, [(0.4, 0.9, 0.9, None)])
    RunPaths(tmp_path / "run").recall_distortion.write_text(
        "level,class,recall_dense,recall,balance_dense,balance,intensification\n"
    )
    c = collect([tmp_path])
    assert list(c.runs.status) == ["completed"] and list(c.levels.sparsity) == [0.4]


def test_limit_table_summarises_predicted_and_actual_limits():
    """method=limit's declared table (``PruningLimit.results``), as the report makes it."""
    from prune_cli.pruning.methods.limit import PruningLimit
    from prune_cli.reporting.declared import method_table

    def limit_table(levels: pd.DataFrame) -> pd.DataFrame:
        return method_table(levels, PruningLimit.results.tables[0])

    levels = pd.DataFrame(
        {
            "dataset": ["d"] * 4,
            "model": ["m"] * 4,
            "label": ["limit l1=0.1"] * 3 + ["magnitude"],
            "predicted_limit": [0.8, 0.9, 1.0, None],
            "actual_limit": [0.5, 0.6, 0.7, None],
            "actual_limit_tolerance": [0.6, 0.6, 0.6, None],
            "limit_dense_accuracy": [0.9, 0.9, 0.9, None],
        }
    )
    table = limit_table(levels)
    assert list(table["label"]) == ["limit l1=0.1"] and int(table["n"].iloc[0]) == 3
    assert table["predicted"].iloc[0] == "0.900 ± 0.100"
    assert table["actual"].iloc[0] == "0.600 ± 0.100"
    assert limit_table(levels.drop(columns="predicted_limit")).empty


def test_search_table_shows_the_chosen_metrics_and_the_premise_check():
    """method=crossword's declared table (``CrosswordPruning.results``), as the report makes it."""
    from prune_cli.pruning.methods.crossword import CrosswordPruning
    from prune_cli.reporting.declared import method_table

    def search_table(levels: pd.DataFrame) -> pd.DataFrame:
        return method_table(levels, CrosswordPruning.results.tables[0])

    levels = pd.DataFrame(
        {
            "run": ["a", "b", "c", "c"],
            "dataset": ["d"] * 4,
            "model": ["m"] * 4,
            "label": ["crossword"] * 4,
            "search_expression": ["l1", "l1", "fpgm", "fpgm"],
            "search_objective": [1.0, 2.0, 3.0, 3.0],
            "search_objective_accuracy_spearman": [0.1, -0.1, 0.0, 0.0],
        }
    )
    row = search_table(levels).iloc[0]
    assert row["n"] == 3 and row["chosen"] == "l1 (2); fpgm (1)"  # one row per run
    assert row["objective"] == "2.000 ± 1.000"
    assert row["objective vs accuracy (Spearman)"] == "0.000 ± 0.100"
    assert search_table(levels.drop(columns="search_objective_accuracy_spearman")).empty


def test_each_dense_model_counts_once_and_each_run_once(tmp_path, monkeypatch):
    """gradient at t = 2 and t = 10, seeds 0 and 1: the two runs of a seed share its dense
    model (96% for seed 0, 90% for seed 1); an SA++ run, sparse from level 0 on (50%), is no
    dense model; the sweep given twice (relative and absolute) and one of its runs a third
    time is still five runs."""
    root = tmp_path / "sweep"
    for ratio in (2, 10):
        for seed, dense in enumerate([0.96, 0.90]):
            make_run(
                root / f"gp-{ratio}-{seed}",
                "gradient",
                seed,
                [(0.0, 0.95, dense, None), (1 - 1 / ratio, 0.9, dense - 0.05, 1.0)],
                method_cfg={"ratio": ratio},
            )
    make_run(root / "sapp", "sapp", 0, [(0.9, 0.5, 0.5, None)], method_cfg={"sparsity": 0.9})
    monkeypatch.chdir(tmp_path)
    c = collect([Path("sweep"), root, root / "gp-2-0"])
    assert len(c.runs) == 5 and sorted(c.levels.seed.unique()) == [0, 1]
    (cells,) = [v for (_, _, shape), v in pivots(c.levels).items() if shape == "by_target"]
    dense = cells[(cells.column == "dense") & (cells.quantity == "test accuracy %")]
    assert dense.n.tolist() == [2]  # one dense model per seed, not one per target
    assert dense["std"].iloc[0] == pytest.approx(np.std([0.96, 0.90], ddof=1))
    fig, ax = plt.subplots()
    figures._dense_line(ax, c.levels)
    assert ax.lines[0].get_ydata()[0] == pytest.approx(93.0)  # the SA++ run is not in it
    plt.close(fig)


def test_alpha_without_a_target_is_an_interval_only_and_collapse_is_counted():
    """SAP and DNS reach their sparsity by training: no ratio to test them at, and a run that
    lost a class is counted beside its interval and in every test it is part of."""
    data = alpha_data().assign(collapsed=False)
    data.loc[(data.label == "undecayed") & (data.target == 10) & (data.seed == 0), "collapsed"] = (
        True
    )
    untargeted = pd.DataFrame(
        [
            {"dataset": "d", "model": "m", "label": m, "target": math.nan, "seed": s, "alpha": a}
            for m, base in (("sap", 1.0), ("dns", 2.0))
            for s, a in enumerate(base + np.array([0.1, 0.3, 0.2]))
        ]
    ).assign(collapsed=False)
    data = pd.concat([data, untargeted], ignore_index=True)
    intervals = alpha_intervals(data)
    sap = intervals[intervals.label == "sap"].iloc[0]
    assert math.isnan(sap.target) and sap.n == 3 and sap.confidence == pytest.approx(0.99)
    assert sap.alpha_mean == pytest.approx(1.2) and sap.collapsed == 0
    assert intervals.set_index(["label", "target"]).loc[("undecayed", 10), "collapsed"] == 1
    pairs = method_pair_tests(data)
    assert pairs.target.notna().all() and not {"sap", "dns"} & set(pairs.method_a)
    assert pairs.set_index("target").loc[10, "collapsed"] == 1
    assert pairs.set_index("target").loc[2, "collapsed"] == 0
    consecutive = consecutive_ratio_tests(data)
    assert set(consecutive.series) == {"magnitude", "undecayed"}
    assert consecutive.set_index(["series", "t_to"]).loc[("undecayed", 10), "collapsed"] == 1
