"""Hyperparameter search with Hydra's Optuna sweeper: the objective a run returns
(``prune_cli/objective.py``), the ``hparams_search`` presets, and a three-trial search on digits
read back from Optuna's ``optimization_results.yaml`` and the trials' ``summary.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import compose_config, run_cli, run_config
from hydra import compose, initialize_config_dir

from prune_cli import objective
from prune_cli.cli import check_choices, precheck
from prune_cli.config import CONF_DIR, config_hash
from prune_cli.errors import ConfigError, RunFailed, UserError

#: level records as summary.json holds them, whose test accuracies rank the levels otherwise
#: than their validation accuracies do: a value read from the test split shows
LEVELS = [
    {"level": 0, "sparsity": 0.0, "val_accuracy": 0.90, "test_accuracy": 0.60},
    {"level": 1, "sparsity": 0.5, "val_accuracy": 0.895, "test_accuracy": 0.99},
    {"level": 2, "sparsity": 0.8, "val_accuracy": 0.88, "test_accuracy": 0.61},
    {"level": 3, "sparsity": 0.9, "val_accuracy": 0.70, "test_accuracy": 0.95},
]


def _with_test_as_val(levels: list[dict]) -> list[dict]:
    return [{**lv, "val_accuracy": lv["test_accuracy"]} for lv in levels]


def test_last_val_accuracy_is_the_last_levels_validation_accuracy() -> None:
    assert objective.value("last_val_accuracy", 1.0, LEVELS) == 0.70
    # the order of the records does not matter, the level number does
    assert objective.value("last_val_accuracy", 1.0, LEVELS[::-1]) == 0.70


def test_max_sparsity_within_counts_accuracy_points_below_dense() -> None:
    # dense 90.0%: within 1 point are 89.5% (50% sparse); within 2 points also 88.0% (80%)
    assert objective.value("max_sparsity_within", 1.0, LEVELS) == 0.5
    assert objective.value("max_sparsity_within", 2.0, LEVELS) == 0.8
    assert objective.value("max_sparsity_within", 0.0, LEVELS) == 0.0
    assert objective.value("max_sparsity_within", 25.0, LEVELS) == 0.9


def test_the_objective_never_reads_the_test_split(tmp_path: Path) -> None:
    """Test accuracies that would change either objective change neither."""
    for name, tolerance in (("last_val_accuracy", 1.0), ("max_sparsity_within", 1.0)):
        as_is = objective.value(name, tolerance, LEVELS)
        other_test = [{**lv, "test_accuracy": 1.0 - lv["test_accuracy"]} for lv in LEVELS]
        assert objective.value(name, tolerance, other_test) == as_is
        # and the test accuracies, read as if they were the validation's, would give another
        assert objective.value(name, tolerance, _with_test_as_val(LEVELS)) != as_is
    # the same through a run directory's summary.json
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed", "levels": LEVELS}))
    assert objective.measure("last_val_accuracy", 1.0, tmp_path) == 0.70


def test_a_level_without_validation_accuracy_never_counts() -> None:
    levels = [*LEVELS[:2], {"level": 2, "sparsity": 0.99, "val_accuracy": None}]
    assert objective.value("max_sparsity_within", 50.0, levels) == 0.5
    with pytest.raises(RunFailed, match="no validation accuracy"):
        objective.value("last_val_accuracy", 1.0, levels)


def test_max_sparsity_within_needs_a_dense_level_0() -> None:
    sparse_start = [{**LEVELS[0], "sparsity": 0.3}, *LEVELS[1:]]
    with pytest.raises(ConfigError, match="objective=last_val_accuracy"):
        objective.value("max_sparsity_within", 1.0, sparse_start)


def test_objective_settings_keep_the_config_hash() -> None:
    """A search reuses finished runs: choosing what a run returns is not part of its result."""
    plain = config_hash(run_config(["method=sap"]))
    chosen = run_config(["method=sap", "objective=max_sparsity_within", "objective_tolerance=2.5"])
    assert chosen.objective == "max_sparsity_within" and chosen.objective_tolerance == 2.5
    assert config_hash(chosen) == plain


def test_bad_objectives_are_refused_when_composed() -> None:
    with pytest.raises(ConfigError, match="last_val_accuracy, max_sparsity_within"):
        run_config(["objective=best_test_accuracy"])
    with pytest.raises(ConfigError, match="objective_tolerance"):
        run_config(["objective=max_sparsity_within", "objective_tolerance=-1"])
    with pytest.raises(ConfigError, match=r"dataset\.val_size=0"):
        run_config(["objective=last_val_accuracy", "dataset.val_size=0"])
    # without an objective, no validation split is still a valid run
    assert run_config(["dataset.val_size=0", "train.select=last"]).objective is None


def test_a_search_without_a_validation_split_is_refused_before_any_trial() -> None:
    overrides = ["hparams_search=sap_optuna_smoke", "dataset.val_size=0"]
    with pytest.raises(UserError, match="test split never feeds a search"):
        precheck(overrides, multirun=True)
    # a sweep over other values does not hide it: what every trial shares is checked
    with pytest.raises(UserError, match=r"dataset\.val_size=0"):
        precheck([*overrides, "seed=0,1"], multirun=True)
    assert precheck(["hparams_search=sap_optuna_smoke", "seed=0,1"], multirun=True) is None


def test_search_presets_and_their_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="sap_optuna, sap_optuna_smoke"):
        check_choices(["hparams_search=nope"])
    with pytest.raises(UserError, match="add -m"):
        objective.check_search(["hparams_search=sap_optuna"], multirun=False)
    objective.check_search(["hparams_search=sap_optuna"], multirun=True)  # installed: fine
    # without the optional extra: one line naming it (the real find_spec for anything else)
    real = objective.importlib.util.find_spec
    monkeypatch.setattr(
        objective.importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("hydra_plugins.hydra_optuna") else real(name, *a),
    )
    for overrides in (["hparams_search=sap_optuna"], ["hydra/sweeper=optuna"]):
        with pytest.raises(UserError, match=r"pip install 'prune-cli\[search\]'"):
            objective.check_search(overrides, multirun=True)

    def no_plugins(name: str, *args: object) -> object:  # not even a ``hydra_plugins`` package
        if name.startswith("hydra_plugins."):
            raise ModuleNotFoundError(name)
        return real(name, *args)

    monkeypatch.setattr(objective.importlib.util, "find_spec", no_plugins)
    with pytest.raises(UserError, match=r"pip install 'prune-cli\[search\]'"):
        objective.check_search(["hparams_search=sap_optuna"], multirun=True)


def test_sap_optuna_preset_searches_sap_for_sparsity() -> None:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=sap_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert "Optuna" in sweeper._target_ and sweeper.direction == "maximize"
    assert sweeper.sampler.seed == 0 and sweeper.n_trials > 3
    assert set(sweeper.params) == {"method.p", "method.q", "method.gamma"}
    run = run_config(["hparams_search=sap_optuna"])
    assert run.method.name == "sap" and run.objective == "max_sparsity_within"
    # every (p, q) the space can draw satisfies SAP's 0 < p < q
    high_p = float(str(sweeper.params["method.p"]).split(",")[1].rstrip(") "))
    assert high_p < 1.0 and "choice(1.0, 2.0)" in str(sweeper.params["method.q"])
    assert compose_config(["hparams_search=sap_optuna_smoke"]).objective == "last_val_accuracy"


@pytest.mark.slow
def test_a_three_trial_search_returns_the_best_validation_accuracy(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = run_cli(["-m", "hparams_search=sap_optuna_smoke", "progress=false"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (found,) = list((tmp_path / "outputs" / "multirun").glob("*/optimization_results.yaml"))
    sweep_dir = found.parent
    assert sweep_dir.name.startswith("sap_optuna_smoke-")  # named by the preset
    best = yaml.safe_load(found.read_text())
    trials = {}
    for summary_path in sweep_dir.glob("*/summary.json"):
        summary = json.loads(summary_path.read_text())
        assert summary["status"] == "completed" and summary["method"] == "sap"
        cfg = yaml.safe_load((summary_path.parent / "config.yaml").read_text())
        params = (cfg["method"]["p"], cfg["method"]["gamma"])
        last = max(summary["levels"], key=lambda lv: lv["level"])
        trials[params] = last["val_accuracy"]
    assert len(trials) == 3  # three trials, three different configs
    assert best["best_value"] == max(trials.values())
    best_params = (best["best_params"]["method.p"], best["best_params"]["method.gamma"])
    matching = [v for params, v in trials.items() if all(map(math.isclose, params, best_params))]
    assert matching == [best["best_value"]]


@pytest.mark.slow
def test_a_search_whose_trials_all_fail_ends_in_lines_not_a_traceback(
    tmp_path: Path, cli_in_process
) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    # lr=1e30: every trial's loss becomes NaN in its first epoch
    args = ["-m", "hparams_search=sap_optuna_smoke", "train.lr=1e30", "progress=false"]
    result = cli_in_process(args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "prune-run: no trial of the search completed" in result.stderr.splitlines()[-1]
    assert "3 job(s) of the sweep failed" in result.stderr
