"""Level files hashed when written (issue 23): a file damaged before the run completes is never
recorded as intact; the run, its resume, ``prune-run`` (show) and ``prune-report`` name it."""

from __future__ import annotations

import json

import pytest
from conftest import run_config

from prune_cli.errors import UserError
from prune_cli.experiment import Experiment
from prune_cli.paths import RunPaths
from prune_cli.reporting.collect import collect
from prune_cli.store import file_digest
from prune_cli.training.loop import Trainer

QUICK = ["model=mlp", "train.epochs=1", "method.levels=2", "progress=false"]


def flip_a_byte(path):
    """Damage a file in place without changing its size (only its digest tells)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def on_epoch(monkeypatch, at: int, action) -> None:
    """Run ``action`` before the ``at``-th trained epoch (counting from 1)."""
    original, calls = Trainer.train_epoch, {"n": 0}

    def patched(self, epoch, generator):
        calls["n"] += 1
        if calls["n"] == at:
            action()
        return original(self, epoch, generator)

    monkeypatch.setattr(Trainer, "train_epoch", patched)


def test_a_level_file_damaged_before_completion_is_never_recorded(tmp_path, monkeypatch):
    run = tmp_path / "run"
    mask0 = RunPaths(run).level_mask(0)
    written = {}

    def damage() -> None:  # in level 2: nothing reads level 0's files again
        written["digest"] = file_digest(mask0)
        flip_a_byte(mask0)

    on_epoch(monkeypatch, 3, damage)
    with pytest.raises(UserError, match=r"levels/level_0/mask\.pt has changed since"):
        Experiment(run_config(QUICK), run).run()
    summary = json.loads(RunPaths(run).summary.read_text())
    assert summary["status"] == "damaged" and "levels/level_0/mask.pt" in summary["reason"]
    assert summary["files"]["levels/level_0/mask.pt"] == written["digest"]  # as written
    (listed,) = collect([run]).runs.to_dict("records")
    assert listed["status"] == "damaged" and "level_0/mask.pt" in listed["reason"]
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"levels/level_0/mask\.pt has changed since"):
        Experiment(run_config(QUICK), run).run()  # shown again: still named


def test_a_resume_checks_the_finished_levels(tmp_path, monkeypatch):
    run = tmp_path / "run"
    paths = RunPaths(run)

    def crash() -> None:
        raise KeyboardInterrupt

    on_epoch(monkeypatch, 3, crash)  # in level 2, after levels 0 and 1 were saved
    with pytest.raises(KeyboardInterrupt):
        Experiment(run_config(QUICK), run).run()
    running = json.loads(paths.summary.read_text())
    assert sorted(running["files"]) == sorted(
        f"levels/level_{k}/{n}.pt" for k in (0, 1) for n in ("model", "mask")
    )
    monkeypatch.undo()
    flip_a_byte(paths.level_model(1))
    with pytest.raises(UserError, match=r"levels/level_1/model\.pt has changed since"):
        Experiment(run_config(QUICK), run).run()
