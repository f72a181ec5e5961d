"""What a plain ``prune-run`` pays for besides its training (issue 26): one composition of the
config, and one warning per capped warm-up, not one per level."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra._internal.hydra import Hydra

#: a run of seconds in this process: two levels of three epochs each, on part of digits
TWO_LEVELS = [
    "model=mlp",
    "train.epochs=3",
    "method.levels=2",
    "dataset.limit_train=256",
    "progress=false",
]
WARNING = "is more than half of"


def run_dir(root: Path) -> Path:
    (found,) = (root / "outputs" / "runs").iterdir()
    return found


@pytest.fixture
def composes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The overrides of every composition Hydra makes, in this process, from here on."""
    calls: list[list[str]] = []
    compose = Hydra.compose_config

    def counted(self: Hydra, config_name: str | None, overrides: list[str], *args, **kwargs):
        calls.append(list(overrides))
        return compose(self, config_name, overrides, *args, **kwargs)

    monkeypatch.setattr(Hydra, "compose_config", counted)
    return calls


def test_a_plain_run_composes_once_and_writes_what_hydras_own_run_writes(
    tmp_path, composes, cli_in_process
):
    one, own = tmp_path / "one", tmp_path / "own"
    one.mkdir()
    own.mkdir()
    args = ["model=mlp", "train.epochs=1", "method.levels=1", "dataset.limit_train=256"]
    result = cli_in_process([*args, "progress=false"], cwd=one)
    assert result.returncode == 0, result.stderr
    # the pre-check's composition is the job's: @hydra.main would compose twice more
    assert len(composes) == 1
    # naming hydra.mode takes Hydra's own way (``@hydra.main``), which composes three times
    composes.clear()
    result = cli_in_process([*args, "progress=false", "hydra.mode=RUN"], cwd=own)
    assert result.returncode == 0, result.stderr
    assert len(composes) == 3
    # the same run directory and the same record of Hydra's job, but for where each ran
    assert run_dir(one).name == run_dir(own).name
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        mine = (run_dir(one) / ".hydra" / name).read_text().replace(str(one), "ROOT")
        hydras = (run_dir(own) / ".hydra" / name).read_text().replace(str(own), "ROOT")
        assert mine == hydras, name
    assert "- hydra.mode=RUN" in (run_dir(one) / ".hydra" / "hydra.yaml").read_text()


def test_a_hydra_without_the_internals_takes_hydras_own_way(
    tmp_path, composes, cli_in_process, monkeypatch
):
    """Another Hydra release may move the private API a single composition uses: the run
    then goes through ``@hydra.main`` (three compositions) and still completes."""
    import sys

    from prune_cli.cli import SingleRun

    assert SingleRun.supported()
    monkeypatch.setitem(sys.modules, "hydra._internal.callbacks", None)  # import fails
    assert not SingleRun.supported()
    args = ["model=mlp", "train.epochs=1", "method.levels=1", "dataset.limit_train=256"]
    result = cli_in_process([*args, "progress=false"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(composes) == 3
    assert (run_dir(tmp_path) / "summary.json").exists()


@pytest.mark.parametrize(
    ("retrain", "cases"),
    [
        # every level trains 3 epochs with 2 of warm-up: one case, one line (it was 3 lines)
        ([], ["3 epochs"]),
        # the fine-tuning's 2 epochs are a case of their own: one line each
        (["train.retrain.epochs=2"], ["3 epochs", "2 epochs"]),
    ],
)
def test_a_capped_warmup_is_said_once_per_run_and_case(tmp_path, cli_in_process, retrain, cases):
    result = cli_in_process([*TWO_LEVELS, "train.warmup_epochs=2.0", *retrain], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    said = [ln for ln in (result.stdout + result.stderr).splitlines() if WARNING in ln]
    assert len(said) == len(cases), said
    for case, line in zip(cases, said, strict=True):
        assert f"train.warmup_epochs=2.0 {WARNING} {case}" in line
    # the logs hold each line once too: the run's own, and the shared dense level's (whose
    # training, the first with the dense schedule, says it there)
    logs = sorted((tmp_path / "outputs").rglob("run.log"))
    logged = [ln for log in logs for ln in log.read_text().splitlines() if WARNING in ln]
    assert len(logged) == len(cases), logged
    assert '"status": "completed"' in (run_dir(tmp_path) / "summary.json").read_text()


def test_a_run_after_another_in_one_process_collects_before_it_freezes(monkeypatch):
    """gc.freeze keeps what exists out of the collector's passes: the garbage an earlier run of
    the process left (its model, optimizer) would be kept for the whole next run."""
    import gc

    from prune_cli import experiment

    collected: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or 0)
    monkeypatch.setattr(experiment, "_ran_before", False)
    with experiment.start_up_frozen(), experiment.start_up_frozen():  # a nested shared dense run
        assert gc.get_freeze_count() > 0
    assert collected == [] and gc.get_freeze_count() == 0  # a first run: nothing to collect
    with experiment.start_up_frozen():
        pass
    assert collected == [1]
