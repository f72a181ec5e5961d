"""The read side on files prune-run never writes (issue 23): each case is one line on stderr and
exit status 2 with nothing created (``prune-export``, ``prune-report -o``), a run listed as
unreadable while the report goes on (``prune-report``), or the project's own error naming the
file (the Python API). Also the API's ``Run.evaluate`` and ``dir(prune_cli)`` (issue 26)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import record_figures, run_config
from test_report import make_run

import prune_cli
from prune_cli import export_cli, report_cli
from prune_cli.api import RunFileError
from prune_cli.errors import UserError
from prune_cli.experiment import Experiment
from prune_cli.paths import RunPaths
from prune_cli.pruning.structured import THIN_FORMAT, THIN_VERSION
from prune_cli.thin import load_thin_model


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-5 on digits, dense level 0 and one magnitude level: a real run to spoil copies of."""
    run = tmp_path_factory.mktemp("bad_files") / "run"
    Experiment(run_config(["train.epochs=1", "progress=false", "method.levels=1"]), run).run()
    return run


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _summary(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def spoil(run: Path) -> None:
        path = RunPaths(run).summary
        summary = json.loads(path.read_text())
        change(summary)
        path.write_text(json.dumps(summary))

    return spoil


def _level_file(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """Rewrite level 1's model.pt with ``change(state)``'s result (or the state it changed)."""

    def spoil(run: Path) -> None:
        path = RunPaths(run).level_model(1)
        state = torch.load(path, weights_only=True)
        changed = change(state)
        torch.save(state if changed is None else changed, path)

    return spoil


def _set(*keys_value: object) -> Callable[[dict], None]:
    *keys, value = keys_value

    def change(node: dict) -> None:
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


def _drop_levels(summary: dict) -> None:
    for entry in summary["levels"]:
        del entry["level"]


#: case -> (how the run copy is spoiled, extra arguments, what the one line must say)
EXPORT_CASES = {
    "levels lack level": (_summary(_drop_levels), [], "summary level entry 0 has no level"),
    "levels a string": (_summary(_set("levels", "abc")), [], "summary levels is not a list"),
    "level a word": (
        _summary(lambda s: s["levels"][1].update(level="one")),
        [],
        "level that is not a whole number",
    ),
    "level 1.5": (
        _summary(lambda s: s["levels"][1].update(level=1.5)),
        [],
        "level that is not a whole number",
    ),
    "levels entry a string": (_summary(_set("levels", ["x"])), [], "is not a mapping"),
    "channels a word": (
        _level_file(_set("model_info", "channels", "abc")),
        [],
        "model_info.channels is not a whole number >= 1 ('abc')",
    ),
    "channels 0": (
        _level_file(_set("model_info", "channels", 0)),
        [],
        "model_info.channels is not a whole number",
    ),
    "no image_size": (
        _level_file(lambda s: s["model_info"].pop("image_size") and None),
        [],
        "model_info has no image_size",
    ),
    "model_info a string": (
        _level_file(_set("model_info", "x")),
        [],
        "model_info is not a mapping",
    ),
    "settings a number": (
        _level_file(_set("model_info", "settings", 5)),
        [],
        "model_info.settings is not a mapping",
    ),
    "mask a list": (_level_file(_set("mask", [1])), [], "mask is not a mapping of tensors"),
    "mask entry a number": (
        _level_file(lambda s: s.update(mask=dict.fromkeys(s["mask"], 1))),
        [],
        "is not a tensor",
    ),
    "mask of another shape": (
        _level_file(lambda s: s.update(mask={k: torch.ones(2) for k in s["mask"]})),
        [],
        "its mask of",
    ),
    "level file a list": (_level_file(lambda s: [1, 2]), [], "not a prune-run level model"),
    "-o under a file": (None, ["-o", "{tmp}/afile/x.pt2"], "exists and is not a folder"),
    "-o a folder": (None, ["-o", "{tmp}/adir"], "is a folder"),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_export_refuses_with_one_line_and_creates_nothing(stored_run, tmp_path, case, capsys):
    spoil, extra, expected = EXPORT_CASES[case]
    run = tmp_path / "run"
    shutil.copytree(stored_run, run)
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "adir").mkdir()
    if spoil is not None:
        spoil(run)
    before = _files(tmp_path)
    argv = [str(run), "--format", "torch_export", *(a.format(tmp=tmp_path) for a in extra)]
    with pytest.raises(SystemExit) as exit_:
        export_cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("prune-export: error: "), err
    assert expected in err, err
    assert _files(tmp_path) == before


@pytest.mark.parametrize("out", ["afile", "afile/report"])
def test_report_refuses_an_output_that_is_no_folder(tmp_path, out, capsys):
    make_run(tmp_path / "sweep" / "good", "sap", 0, [(0.0, 0.95, 0.96, None)])
    (tmp_path / "afile").write_text("a file, not a folder")
    before = _files(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        report_cli.main([str(tmp_path / "sweep"), "-o", str(tmp_path / out), "--formats", "png"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and "exists and is not a folder" in err, err
    assert _files(tmp_path) == before
    assert (tmp_path / "afile").read_text() == "a file, not a folder"


LEVELS = [(0.0, 0.95, 0.96, None), (0.5, 0.93, 0.90, 1.1)]

#: case -> (how a run's summary is spoiled, what its reason must say)
REPORT_CASES = {
    "levels lack level": (_drop_levels, "summary level entry 0 has no level"),
    "levels a string": (_set("levels", "abc"), "summary levels is not a list"),
    "level 1.5": (lambda s: s["levels"][1].update(level=1.5), "not a whole number"),
    "level -1": (lambda s: s["levels"][1].update(level=-1), "not a whole number"),
    "sparsity 7": (lambda s: s["levels"][1].update(sparsity=7), "sparsity outside [0, 1]"),
    "status a list": (_set("status", ["completed"]), "summary status is not text"),
    "dataset a list": (_set("dataset", ["digits"]), "summary dataset is not text"),
    "model a mapping": (_set("model", {"a": 1}), "summary model is not text"),
    "seed a mapping": (_set("seed", {"a": 1}), "summary seed is not a whole number"),
    "reason a mapping": (_set("reason", {"a": 1}), "summary reason is not text"),
    "files a number": (_set("files", 3), "summary files is not a mapping"),
    "files outside the run": (
        _set("files", {"/etc/hostname": {"bytes": 1}}),
        "outside the run directory",
    ),
    "files entry a number": (_set("files", {"summary.json": 5}), "is not a mapping"),
}


@pytest.mark.parametrize("case", list(REPORT_CASES))
def test_report_lists_a_malformed_summary_and_reports_the_rest(tmp_path, case, capsys, monkeypatch):
    change, reason = REPORT_CASES[case]
    drawn = None if case == next(iter(REPORT_CASES)) else record_figures(monkeypatch)
    sweep = tmp_path / "sweep"
    make_run(sweep / "good", "sap", 0, LEVELS)
    make_run(sweep / "bad", "sap", 1, LEVELS, method_cfg={"p": 0.5})  # a varying setting
    _summary(change)(sweep / "bad")
    out = tmp_path / "report"
    report_cli.main([str(sweep), "-o", str(out), "--formats", "png"])  # status 0: reported
    err = capsys.readouterr().err
    assert f"left out {sweep / 'bad'}: unreadable: " in err and reason in err, err
    listed = pd.read_csv(out / "runs_left_out.csv")
    assert listed.run.tolist() == [str(sweep / "bad")] and reason in listed.reason.iloc[0]
    assert set(pd.read_csv(out / "accuracy.csv").n) == {1}  # the good run alone
    if drawn is None:  # the figures drawn, of the good run alone
        assert list(out.glob("*.png")) and "![" in (out / "index.md").read_text()
    else:
        assert drawn == [{str(sweep / "good")}]


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    def spoil(run: Path) -> None:
        (run / name).write_bytes(data)

    return spoil


#: case -> (how the run copy is spoiled, what is read, the file the error must name)
API_CASES = {
    "config.yaml garbage": (
        _write("config.yaml", b"model: [unclosed\n  : : {\x00"),
        lambda run: run.config,
        "config.yaml",
    ),
    "config.yaml a list": (_write("config.yaml", b"- 1\n- 2\n"), lambda r: r.config, "config.yaml"),
    "summary.json not UTF-8": (
        _write("summary.json", b'{"status": "\xff\xfe"}'),
        lambda run: run,
        "summary.json",
    ),
    "ragged CSV": (
        _write("metrics.csv", b"level,epoch,split,metric,value\n0,1,train,loss,2.3,9,9\n"),
        lambda run: run.metrics,
        "metrics.csv",
    ),
    "empty CSV": (_write("pqi.csv", b""), lambda run: run.pqi, "pqi.csv"),
    "binary CSV": (
        _write("sparsity.csv", bytes(range(256)) * 4),
        lambda run: run.sparsity,
        "sparsity.csv",
    ),
    "word in a CSV level": (
        _write("gini.csv", b"level,stage,scope,name,gini\nzero,trained,global,all,0.3\n"),
        lambda run: run.gini,
        "gini.csv",
    ),
    "levels a string": (_summary(_set("levels", "abc")), lambda r: r.levels, "summary.json"),
    "levels lack level": (_summary(_drop_levels), lambda r: r.model(), "summary.json"),
    "channels a word": (
        _level_file(_set("model_info", "channels", "abc")),
        lambda run: run.model(1),
        "levels/level_1/model.pt",
    ),
    "mask entry a number": (
        _level_file(lambda s: s.update(mask=dict.fromkeys(s["mask"], 1))),
        lambda run: run.model(1, attach_mask=True),
        "levels/level_1/model.pt",
    ),
}


def _thin(**entries: object) -> Callable[[Path], None]:
    """A thin-model file (``final_model.pt``) with ``entries`` in place of valid ones."""

    def spoil(run: Path) -> None:
        thin = {"format": THIN_FORMAT, "version": THIN_VERSION, "model": "lenet5"}
        thin |= {"input_shape": [1, 8, 8], "num_classes": 10, "state_dict": {}, "removed": {}}
        torch.save({**thin, **entries}, run / "final_model.pt")

    return spoil


def _load_thin(run: prune_cli.Run) -> object:
    return load_thin_model(run.root / "final_model.pt")


API_CASES |= {
    "thin input_shape a word": (_thin(input_shape="abc"), _load_thin, "final_model.pt"),
    "thin input_shape negative": (_thin(input_shape=[1, -8, 8]), _load_thin, "final_model.pt"),
    "thin num_classes a word": (_thin(num_classes="ten"), _load_thin, "final_model.pt"),
    "thin removed a number": (_thin(removed=5), _load_thin, "final_model.pt"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_the_api_raises_its_own_error_naming_the_file(stored_run, tmp_path, case):
    spoil, read, name = API_CASES[case]
    run = tmp_path / "run"
    shutil.copytree(stored_run, run)
    spoil(run)
    with pytest.raises(UserError) as error:
        read(prune_cli.load_run(run))
    message = str(error.value)
    assert str(run / name) in message and "\n" not in message, message
    if isinstance(error.value, RunFileError):
        assert error.value.path == run / name


@pytest.mark.parametrize("main", [export_cli.main, report_cli.main])
def test_help_is_plain_text(main, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "command:" in out


def test_evaluate_gives_the_accuracy_the_run_recorded(stored_run):
    run = prune_cli.load_run(stored_run)
    summary = json.loads(RunPaths(stored_run).summary.read_text())
    recorded = pd.read_csv(RunPaths(stored_run).per_class_recall)
    for entry in summary["levels"]:
        result = run.evaluate(level=entry["level"], split="test")
        # the same data, model and evaluation code in this process: equal, not close
        assert result.accuracy == entry["test_accuracy"]
        assert result.loss == entry["test_loss"]
        rows = recorded[(recorded.level == entry["level"]) & (recorded.stage == "trained")]
        # through a CSV (written and parsed to ~15 digits: pandas versions differ in the last)
        assert result.recall.recall.tolist() == pytest.approx(rows.recall.tolist(), rel=1e-12)
        assert result.recall.support.tolist() == rows.support.tolist()
    val = run.evaluate(split="val")  # the last level by default
    assert val.level == 1 and val.accuracy == summary["levels"][1]["val_accuracy"]
    with pytest.raises(UserError, match="unknown split"):
        run.evaluate(split="holdout")


def test_the_api_is_listed_by_dir():
    names = dir(prune_cli)
    assert {"load_run", "load_runs", "Run", "Runs", "__version__"} <= set(names)
