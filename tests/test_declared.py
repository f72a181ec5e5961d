"""The report side reads files only: methods declare what they add, runs carry the declaration.

prune-report must work where torch cannot be imported; what a method adds to the report (its
columns, tables, figure lines, what its target counts) comes from the run's ``summary.json``,
so a method the report side has never heard of reports like a built-in one, and runs written
before summaries carried the declaration are read with the declarations of that time.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from prune_cli.config import RunConfig
from prune_cli.paths import RunPaths
from prune_cli.pruning import results as declared
from prune_cli.pruning.results import Cell, Column, Marker, Results, Table
from prune_cli.reporting.collect import collect
from prune_cli.reporting.report import write_report

PACKAGE = Path(__file__).resolve().parents[1] / "prune_cli"


def write_run(
    root: Path,
    method: str,
    seed: int,
    sparsities: list[float],
    settings: dict[str, Any] | None = None,
    **summary: Any,
) -> Path:
    """A completed run as prune-run writes it (summary, config), without its CSVs."""
    root.mkdir(parents=True)
    levels = [
        {"level": k, "sparsity": s, "test_accuracy": 0.9 - 0.01 * k - 0.001 * seed}
        for k, s in enumerate(sparsities)
    ]
    config = {
        "method": {"name": method, **(settings or {})},
        "model": {"name": "mlp"},
        "dataset": {"name": "digits"},
        "seed": seed,
    }
    paths = RunPaths(root)
    paths.config.write_text(yaml.safe_dump(config))
    base = {"status": "completed", "method": method, "model": "mlp", "dataset": "digits"}
    paths.summary.write_text(json.dumps({**base, "seed": seed, "levels": levels, **summary}))
    return root


#: a method prune-report has never heard of: one score column, a table of its own, a line
WANDA_LIKE = Results(
    columns=(Column("input_norm", "mean_input_norm", heading="mean input norm"),),
    tables=(
        Table(
            name="input_norms",
            title="Input norms",
            note="Mean over seeds.",
            when="mean_input_norm",
            cells=(Cell("mean_input_norm", "norm"),),
        ),
    ),
    markers=(Marker("mean_input_norm", "norm line"),),
    files=("norms.csv",),
)


def test_a_method_unknown_to_the_report_side_brings_its_columns_and_table(tmp_path):
    for seed, norm in ((0, 1.0), (1, 3.0)):
        write_run(
            tmp_path / "runs" / f"w{seed}",
            "wanda_like",
            seed,
            [0.0, 0.5],
            {"sparsity": 0.5},
            method_info={"input_norm": norm},
            results=WANDA_LIKE.to_dict(),
            target={"unit": "weights", "ratio": 2.0},
        )
    c = collect([tmp_path / "runs"])
    assert list(c.runs.status) == ["completed"] * 2
    assert c.declared == Results(
        columns=WANDA_LIKE.columns, tables=WANDA_LIKE.tables, markers=WANDA_LIKE.markers
    )
    final = c.levels[c.levels.level == 1]
    assert sorted(final.mean_input_norm) == [1.0, 3.0]
    assert c.levels[c.levels.level == 0].mean_input_norm.isna().all()  # "last" level only
    assert set(c.levels.target) == {2.0}
    write_report(c, tmp_path / "report", ("png",))
    assert "mean input norm" in (tmp_path / "report" / "accuracy.md").read_text()
    table = pd.read_csv(tmp_path / "report" / "input_norms.csv")
    assert list(table.norm) == ["2.000 ± 1.414 †"] and list(table.n) == [2]
    assert "## Input norms" in (tmp_path / "report" / "index.md").read_text()


def test_legacy_runs_are_read_with_the_declarations_of_their_time(tmp_path):
    """Runs without ``results`` in their summary: a filter run's target counts filters (it is
    no weight ratio t = 2), its thin network's figures sit beside its last level; a limit run
    is its own family, not a dense baseline; an analysed run carries the prediction on every
    level row."""
    write_run(
        tmp_path / "filter",
        "filter",
        0,
        [0.0, 0.3],
        {"sparsity": 0.5},
        method_info={"macs_after": 1e6, "latency_thin_ms": 2.0, "latency_dense_ms": 4.0},
    )
    write_run(tmp_path / "limit", "limit", 0, [0.0], method_info={"predicted_limit": 0.8})
    write_run(
        tmp_path / "magnitude",
        "magnitude",
        0,
        [0.0, 0.9],
        {"sparsity": 0.9, "levels": 1},
        analysis={"limit": {"predicted_limit": 0.7}},
    )
    c = collect([tmp_path])
    runs = c.runs.set_index("method")
    assert runs.loc["filter", "target_unit"] == "filters"
    assert pd.isna(runs.loc["filter", "target"])
    assert runs.loc["magnitude", "target"] == pytest.approx(10)
    assert runs.loc["limit", "label"] == "limit"  # not "dense"
    levels = c.levels.set_index(["method", "level"])
    assert levels.loc[("filter", 1), "macs_thin"] == 1e6
    assert pd.isna(levels.loc[("filter", 0), "macs_thin"])
    assert list(levels.loc["magnitude", "analysis_predicted_limit"]) == [0.7, 0.7]
    write_report(c, tmp_path / "report", ("png",))
    accuracy = (tmp_path / "report" / "accuracy.md").read_text()
    assert "thin network MACs" in accuracy and "4 -> 2" in accuracy
    assert "predicted limit, remaining %" in accuracy and "30" in accuracy
    assert (tmp_path / "report" / "limit.csv").exists()


def test_a_declaration_that_is_not_one_makes_the_run_unreadable_not_the_report(tmp_path):
    write_run(tmp_path / "bad", "x", 0, [0.0, 0.5], results={"columns": [{"nope": 1}]})
    write_run(tmp_path / "good", "magnitude", 0, [0.0, 0.5], {"sparsity": 0.5})
    c = collect([tmp_path])
    status = c.runs.set_index("method").status
    assert status["x"] == "unreadable" and status["magnitude"] == "completed"
    assert "results is not a declaration" in c.runs.set_index("method").reason["x"]


def test_the_legacy_declarations_are_the_registered_methods_own():
    """legacy_results.json holds what each method declared when summaries began to carry it:
    for the methods and analyses it names, the registry's declarations today."""
    from prune_cli.analysis import ANALYSES
    from prune_cli.pruning.method import METHODS
    from prune_cli.pruning.methods import __name__ as _registers  # noqa: F401

    # the limit has declared each estimator's prediction since (issue 25): its legacy form
    # stays as the old runs were written, each of its columns still declared today
    grown = {"limit"}

    def same(old: Results, now: Results, name: str) -> None:
        assert set(old.columns) <= set(now.columns) if name in grown else old == now, name

    legacy = json.loads(declared.LEGACY.read_text())
    assert legacy["methods"] and set(legacy["methods"]) <= set(METHODS)
    for name, stored in legacy["methods"].items():
        same(Results.from_dict(stored), METHODS.get(name).results, name)
    assert set(legacy["analyses"]) <= set(ANALYSES)
    for name, stored in legacy["analyses"].items():
        same(Results.from_dict(stored), ANALYSES.get(name).results, name)


def test_a_round_trip_of_every_registered_declaration():
    from prune_cli.pruning.method import METHODS
    from prune_cli.pruning.methods import __name__ as _registers  # noqa: F401

    for name in METHODS:
        results = METHODS.get(name).results
        assert Results.from_dict(json.loads(json.dumps(results.to_dict()))) == results


def _strings(path: Path) -> set[str]:
    """The string literals of a module's code (not its docstrings)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def test_outside_pruning_no_module_names_a_method_or_its_summary_keys():
    """The loop, the store, the report side and the exporters go by the declarations: no method
    name, no key a method declares, no file a method writes is spelled outside
    ``prune_cli/pruning/`` and the analyses that own them."""
    from prune_cli.analysis import ANALYSES
    from prune_cli.pruning.method import METHODS
    from prune_cli.pruning.methods import __name__ as _registers  # noqa: F401

    spelled: set[str] = set(METHODS)
    declarations = [METHODS.get(n).results for n in METHODS]
    for results in [*declarations, *(ANALYSES.get(n).results for n in ANALYSES)]:
        spelled |= {c.key for c in results.columns} | {c.column for c in results.columns}
        spelled |= {n.key for n in results.networks} | set(results.files)
    # a run setting of the same name (``objective``, the value a hyperparameter search reads,
    # beside Crossword's ``objective`` column) is the runner's own word, not the method's
    spelled -= {f.name for f in dataclasses.fields(RunConfig)}
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "pruning" or relative.name == "analysis.py":
            continue
        named = _strings(path) & spelled
        if named:
            found[str(relative)] = sorted(named)
    assert found == {}


def test_prune_report_runs_where_torch_cannot_be_imported(tmp_path):
    write_run(
        tmp_path / "runs" / "filter",
        "filter",
        0,
        [0.0, 0.3],
        {"sparsity": 0.5},
        method_info={"macs_after": 1e6},
    )
    write_run(tmp_path / "runs" / "magnitude", "magnitude", 0, [0.0, 0.9], {"sparsity": 0.9})
    script = textwrap.dedent(
        f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is not installed here")

        sys.meta_path.insert(0, NoTorch())
        from prune_cli.report_cli import main

        main([{str(tmp_path / "runs")!r}, "-o", {str(tmp_path / "report")!r}, "--formats", "png"])
        print("torch loaded:", any(m == "torch" or m.startswith("torch.") for m in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "2 completed of 2 runs" in done.stdout
    assert "torch loaded: False" in done.stdout
    assert (tmp_path / "report" / "index.md").exists()


# --- a method brought in from outside, end to end --------------------------------------------
def _trial_method():
    """A method defined outside the package, as a user would: magnitude pruning that reports
    the mean |w| it kept (a summary column) and writes the kept weights' norms (a file)."""
    from dataclasses import dataclass

    import torch

    from prune_cli.pruning.methods.magnitude import MagnitudeConfig, MagnitudePruning

    @dataclass
    class TrialConfig(MagnitudeConfig):
        name: str = "trial_norms"

    class TrialNorms(MagnitudePruning):
        Config = TrialConfig
        results = Results(
            columns=(Column("mean_abs_weight", "trial_mean_abs_weight", heading="mean |w|"),),
            files=("trial_norms.csv",),
        )

        def finalize(self, model, masks, ctx):
            params = self.prunable(model)
            kept = torch.cat([p.detach().abs()[p != 0] for p in params.values()])
            lines = [f"{k},{float(p.detach().abs().sum())}" for k, p in params.items()]
            ctx.artifact_path("trial_norms.csv").write_text("\n".join(["name,l1", *lines]))
            return {"mean_abs_weight": float(kept.mean())}

    return TrialConfig, TrialNorms


@pytest.mark.slow
def test_a_method_from_outside_reports_its_column_and_overwrite_clears_its_file(
    tmp_path, monkeypatch
):
    import dataclasses

    from conftest import run_config

    from prune_cli.experiment import Experiment
    from prune_cli.pruning.method import METHODS

    config_class, method = _trial_method()
    monkeypatch.setitem(METHODS._entries, "trial_norms", method)
    base = run_config(["model=mlp", "train.epochs=1", "method.levels=1", "progress=false"])
    cfg = dataclasses.replace(base, method=config_class(sparsity=0.5, levels=1))
    run = tmp_path / "run"
    summary = Experiment(cfg, run).run()
    assert summary["results"] == method.results.to_dict()
    assert summary["target"] == {"unit": "weights", "ratio": 2.0}
    assert (run / "trial_norms.csv").exists()
    # the report side reads the column from the run: it never imports the method
    monkeypatch.delitem(METHODS._entries, "trial_norms")
    c = collect([run])
    mean = summary["method_info"]["mean_abs_weight"]
    assert c.levels.set_index("level").loc[1, "trial_mean_abs_weight"] == pytest.approx(mean)
    write_report(c, tmp_path / "report", ("png",))
    assert "mean |w|" in (tmp_path / "report" / "accuracy.md").read_text()
    # overwrite=true clears the method's own file before the new run starts
    monkeypatch.setitem(METHODS._entries, "trial_norms", method)
    seen = []
    original = method.finalize

    def finalize(self, model, masks, ctx):
        seen.append((run / "trial_norms.csv").exists())
        return original(self, model, masks, ctx)

    monkeypatch.setattr(method, "finalize", finalize)
    Experiment(dataclasses.replace(cfg, overwrite=True), run).run()
    assert seen == [False]


def test_overwrite_clears_the_files_an_old_run_declared_and_nothing_outside(tmp_path):
    from prune_cli.store import RunStore

    run = tmp_path / "run"
    outside = tmp_path / "victim.txt"
    write_run(
        run, "sapp", 0, [0.9], results=Results(files=("folded.pt", "../victim.txt")).to_dict()
    )
    (run / "folded.pt").write_text("x")
    outside.write_text("keep")
    legacy = tmp_path / "legacy"  # no declaration: its method's of that time
    write_run(legacy, "sapp", 0, [0.9])
    (legacy / "folded_model.pt").write_text("x")
    for root in (run, legacy):
        RunStore(root, yaml.safe_load(RunPaths(root).config.read_text())).clear()
    assert not (run / "folded.pt").exists() and not (legacy / "folded_model.pt").exists()
    assert outside.read_text() == "keep"
