"""Reports that survive a bad run: a run whose files hold what prune-run never writes (a word
where a number belongs) is left out and named, and every other run is still reported."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import record_figures
from test_report import make_run

from prune_cli.paths import RunPaths
from prune_cli.report_cli import main as report_main
from prune_cli.reporting.collect import collect

LEVELS = [(0.0, 0.95, 0.96, None), (0.5, 0.93, 0.90, 1.1)]
#: gini entries in the summaries, so that make_run writes gini.csv too
GINI = {0: {"gini": 0.3}, 1: {"gini": 0.4}}


def _csv_word(name: str, column: str):
    def spoil(run: Path) -> None:
        path = run / name
        frame = pd.read_csv(path)
        frame[column] = frame[column].astype(object)
        frame.loc[len(frame) - 1, column] = "oops"
        frame.to_csv(path, index=False)

    return spoil


def _distortion_word(run: Path) -> None:
    rows = "level,class,recall_dense,recall,balance_dense,balance,intensification\n"
    rows += "1,0,0.9,0.8,0.2,0.3,1.5\n1,1,0.9,oops,0.2,0.3,1.5\n"
    RunPaths(run).recall_distortion.write_text(rows)


def _level_value(key: str, value: object):
    def spoil(run: Path) -> None:
        path = run / "summary.json"
        summary = json.loads(path.read_text())
        summary["levels"][1][key] = value
        path.write_text(json.dumps(summary))

    return spoil


#: case -> (how the bad run is spoiled, what its reason must name)
CASES = {
    "sparsity.csv sparsity": (_csv_word("sparsity.csv", "sparsity"), "sparsity.csv"),
    "sparsity.csv nonzero": (_csv_word("sparsity.csv", "nonzero"), "column nonzero"),
    "recall word": (_csv_word("per_class_recall.csv", "recall"), "per_class_recall.csv"),
    "pqi word": (_csv_word("pqi.csv", "pqi"), "pqi.csv is corrupt: column pqi"),
    "pqi p word": (_csv_word("pqi.csv", "p"), "column p holds"),
    "gini word": (_csv_word("gini.csv", "gini"), "gini.csv is corrupt: column gini"),
    "distortion word": (_distortion_word, "recall_distortion.csv is corrupt: column recall"),
    "test_accuracy text": (_level_value("test_accuracy", "0.9"), "non-numeric test_accuracy"),
    "val_accuracy text": (_level_value("val_accuracy", "high"), "non-numeric val_accuracy"),
    "test_accuracy true": (_level_value("test_accuracy", True), "non-numeric test_accuracy"),
    "macs a list": (_level_value("macs_sparse", [1, 2]), "non-numeric macs_sparse"),
    "pqi a mapping": (_level_value("pqi", {"p": 1}), "non-numeric pqi"),
    "collapsed text": (_level_value("collapsed", "yes"), "collapsed that is not true/false"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_holding_a_non_number_is_left_out_and_the_rest_reported(
    tmp_path, case, capsys, monkeypatch
):
    spoil, reason = CASES[case]
    drawn = None if case == next(iter(CASES)) else record_figures(monkeypatch)
    sweep = tmp_path / "sweep"
    make_run(sweep / "good", "sap", 0, LEVELS, extra=GINI)
    bad = sweep / "bad"
    make_run(bad, "sap", 1, LEVELS, extra=GINI)
    spoil(bad)
    out = tmp_path / "report"
    report_main([str(sweep), "-o", str(out), "--formats", "png"])  # no SystemExit: status 0
    terminal = capsys.readouterr()
    index = (out / "index.md").read_text()
    assert reason in index
    accuracy = pd.read_csv(out / "accuracy.csv")
    assert set(accuracy.n) == {1}  # the good run alone, in every row
    assert accuracy[accuracy.level == 1].test_mean.iloc[0] == pytest.approx(0.90)
    listed = pd.read_csv(out / "runs_left_out.csv")
    assert list(listed.columns) == ["run", "status", "reason"]
    assert listed.run.tolist() == [str(bad)] and listed.status.tolist() == ["unreadable"]
    assert reason in listed.reason.iloc[0]
    assert f"left out {bad}: unreadable: " in terminal.err and reason in terminal.err
    assert "1 completed of 2 runs (1 left out: 1 unreadable" in terminal.out
    c = collect([sweep])
    for frame in (c.levels, c.pqi, c.gini, c.recall, c.sparsity, c.distortion):
        assert str(bad) not in set(frame.get("run", ()))
    if drawn is None:  # the figures drawn, of the good run alone
        assert list(out.glob("*.png")) and "![" in index
    else:
        assert drawn == [{str(sweep / "good")}]


def test_failed_and_running_runs_are_listed_with_a_reason(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_run(sweep / "good", "sap", 0, LEVELS)
    make_run(sweep / "failed", "sap", 1, LEVELS, status="failed")
    make_run(sweep / "stopped", "sap", 2, LEVELS, status="interrupted")
    (sweep / "running").mkdir()
    (sweep / "running" / "summary.json").write_text(json.dumps({"status": "running"}))
    out = tmp_path / "report"
    report_main([str(sweep), "-o", str(out), "--formats", "png"])
    listed = pd.read_csv(out / "runs_left_out.csv").set_index("run")
    assert listed.loc[str(sweep / "failed")].reason == "training loss became nan in epoch 3"
    assert "resume" in listed.loc[str(sweep / "stopped")].reason
    assert "still running" in listed.loc[str(sweep / "running")].reason
    err = capsys.readouterr().err
    assert err.count("prune-report: left out ") == 3
    assert f"left out {sweep / 'failed'}: failed: training loss became nan" in err


def test_a_report_of_only_bad_runs_fails_with_one_line(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_run(sweep / "bad", "sap", 0, LEVELS)
    _level_value("test_accuracy", "oops")(sweep / "bad")
    make_run(sweep / "failed", "sap", 1, LEVELS, status="failed")
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(sweep), "-o", str(out), "--formats", "png"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "error" in line] == [
        f"prune-report: error: nothing to report: 0 of 2 runs completed and could be read "
        f"(listed in {out / 'runs_left_out.csv'})"
    ]
    assert len(err) == 3 and "Traceback" not in "\n".join(err)
    assert not (out / "index.md").exists()
    assert len(pd.read_csv(out / "runs_left_out.csv")) == 2
