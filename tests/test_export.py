"""prune-export: a level's network with its masked weights zeroed, a structured run's thinner
network, as a torch.export program and as ONNX run by onnxruntime (skipped without the
``export`` extra, which ``make test`` installs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import run_config

from prune_cli import export_cli
from prune_cli.experiment import Experiment
from prune_cli.export import ExportError, export_level
from prune_cli.io import load_json, load_torch
from prune_cli.paths import RunPaths

QUICK = ["train.epochs=1", "progress=false"]


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-5 on digits, one-shot magnitude pruning to 90% (convolutions and linear layers)."""
    run = tmp_path_factory.mktemp("export") / "run"
    Experiment(run_config([*QUICK, "method.levels=1"]), run).run()
    return run


def masked_weights(run: Path, level: int) -> dict[str, torch.Tensor]:
    """The level's prunable weights with their masks applied: what the export must hold."""
    state = load_torch(RunPaths(run).level_model(level))
    return {k: state["model"][k] * m for k, m in state["mask"].items()}


def test_torch_export_holds_the_masked_network(pruned_run, tmp_path):
    done = export_level(pruned_run, 1, "torch_export", tmp_path / "m.pt2")
    assert (done.level, done.network, done.max_difference) == (1, "masked", 0.0)
    program = torch.export.load(str(done.path))
    exported = program.state_dict
    expected = masked_weights(pruned_run, 1)
    for name, weight in expected.items():
        assert torch.equal(exported[name], weight), name
    zeros = sum(int((w == 0).sum()) for w in expected.values())
    total = sum(w.numel() for w in expected.values())
    assert zeros / total == pytest.approx(0.9, abs=1e-3)
    out = program.module()(torch.randn(5, 1, 8, 8))  # any batch size: the batch is dynamic
    assert out.shape == (5, 10)


def test_onnx_export_runs_in_onnxruntime_with_the_zeros_in_place(pruned_run, tmp_path):
    onnx = pytest.importorskip("onnx", reason="the export extra: pip install 'prune-cli[export]'")
    pytest.importorskip("onnxscript", reason="the export extra")
    done = export_level(pruned_run, None, "onnx", tmp_path / "m.onnx")  # None: the last level
    assert done.level == 1
    graph = onnx.load(str(done.path))
    onnx.checker.check_model(graph)
    initialisers = [onnx.numpy_helper.to_array(t) for t in graph.graph.initializer]
    zeros = sum(int((a == 0).sum()) for a in initialisers)
    expected = masked_weights(pruned_run, 1)
    assert zeros >= sum(int((w == 0).sum()) for w in expected.values())
    if importlib.util.find_spec("onnxruntime") is None:
        assert done.max_difference is None  # the graph is checked above; nothing to run it
        return
    import onnxruntime

    assert done.max_difference is not None and done.max_difference < 1e-4
    session = onnxruntime.InferenceSession(str(done.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": torch.randn(7, 1, 8, 8).numpy()})
    assert logits.shape == (7, 10)


def test_a_structured_run_exports_its_thinner_network(tmp_path):
    run = tmp_path / "filter"
    summary = Experiment(
        run_config([*QUICK, "method=filter", "method.rounds=1", "model=cnn"]), run
    ).run()
    done = export_level(run, None, "torch_export")
    assert done.path == RunPaths(run).level_export(0, "torch_export")
    assert done.network == "thin"
    assert done.params == summary["method_info"]["params_after"] < summary["params_total"]
    program = torch.export.load(str(done.path)).module()
    assert program(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_errors_are_one_line_and_exit_2(pruned_run, tmp_path, capsys, monkeypatch):
    cases = [
        ([str(tmp_path)], "not a prune-run run directory"),
        ([str(pruned_run), "--level", "4"], "no finished level 4 (finished: 0, 1)"),
    ]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxscript" else real_find_spec(name, *a),
    )
    cases.append(([str(pruned_run), "--format", "onnx"], "pip install 'prune-cli[export]'"))
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exit_:
            export_cli.main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and expected in err and err.count("\n") == 1, err
    with pytest.raises(ExportError, match="unknown format"):
        export_level(pruned_run, 1, "tflite")


def test_the_command_writes_into_the_run_and_says_what_it_wrote(pruned_run, capsys):
    export_cli.main([str(pruned_run), "--level", "0", "--format", "torch_export"])
    out = capsys.readouterr().out
    path = RunPaths(pruned_run).level_export(0, "torch_export")
    assert path.is_file() and str(path) in out and "masked network" in out
    assert load_json(RunPaths(pruned_run).summary)["status"] == "completed"
