"""Shared fixtures: composing configs like the CLI does, and running the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from prune_cli.config import (
    CONF_DIR,
    RunConfig,
    register_configs,
    register_resolvers,
    to_run_config,
)

register_configs()
register_resolvers()
#: torch's threads in a fresh process (``run_cli``'s), before this one limits its own
PROCESS_THREADS = torch.get_num_threads()
torch.set_num_threads(min(2, PROCESS_THREADS))

from prune_cli.pruning.method import PruneContext  # noqa: E402 (after the registrations)

#: settings that make a CLI run take seconds on the CPU
FAST = ["train.epochs=2", "progress=false", "model=mlp"]


def compose_config(overrides: list[str] | None = None):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides or [])


def run_config(overrides: list[str] | None = None) -> RunConfig:
    return to_run_config(compose_config(overrides))


#: how the ``prune-run`` console script starts (pyproject.toml's ``prune_cli.entry:prune_run``):
#: ``main`` imported from the package, so that launchers pickle the task by reference, as they
#: do for users (``-m`` would make it ``__main__``)
CONSOLE_SCRIPT = [sys.executable, "-c", "from prune_cli.entry import prune_run; prune_run()"]


def run_cli(
    args: list[str], cwd: Path, timeout: int = 300, console_script: bool = False
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    entry = CONSOLE_SCRIPT if console_script else [sys.executable, "-m", "prune_cli.cli"]
    return subprocess.run(
        [*entry, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def cli_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """``prune-run ARGS`` run in this process: what ``run_cli`` returns, without the 1.5-2 s a
    fresh interpreter spends importing torch and Hydra. For bad input, and for the short runs
    and sweeps (basic launcher) a test makes after its first command, which stays a real
    process. It runs on the threads a fresh process has, so that its results equal bit for bit
    those of a run in a subprocess it resumes or is compared with (float sums follow the thread
    count). The signal handlers, environment, logging, torch's threads and the sweep state a
    command leaves in ``cli`` and ``sweep`` (once per process there) are put back."""
    import logging
    import signal

    from prune_cli import cli, sweep

    def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        root = logging.getLogger()
        kept = (list(root.handlers), root.level)
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["prune-run", *args])
        monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
        monkeypatch.setenv(cli.SWEEP_OWNER_ENV, "")
        monkeypatch.setattr(cli, "FAILED_JOBS", [])
        monkeypatch.setattr(cli, "_SWEEP_LOCKED", False)
        monkeypatch.setattr(sweep, "_sweep_dir", None)
        monkeypatch.setattr(sweep, "_current_job", None)
        threads = torch.get_num_threads()
        torch.set_num_threads(PROCESS_THREADS)
        capsys.readouterr()
        code: int | str | None = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            root.handlers[:], root.level = kept
            torch.set_num_threads(threads)
        out = capsys.readouterr()
        status = code if isinstance(code, int) else (0 if code is None else 1)
        return subprocess.CompletedProcess(args, status, out.out, out.err)

    return run


@pytest.fixture
def tiny_run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state: no test depends on the order of others."""
    torch.manual_seed(0)


def prune_context(
    batches, num_classes: int = 3, artifacts: Path | None = None, evaluate=None
) -> PruneContext:
    """A CPU pruning context over fixed ``batches`` (the first n of them when n are asked)."""
    return PruneContext(
        level=1,
        seed=0,
        device=torch.device("cpu"),
        batches=lambda n: iter(batches[:n]),
        loss_fn=nn.functional.cross_entropy,
        weight_decay=0.0,
        num_classes=num_classes,
        load_state=lambda name: {},
        artifact_path=Path if artifacts is None else artifacts.joinpath,
        evaluate=evaluate,
    )


def conv_bn_net(*widths: int, side: int = 8, classes: int = 3) -> nn.Module:
    """3x3 convolution + BatchNorm + ReLU per width on 1-channel side x side inputs, then a
    linear classifier: the small filter-pruning network of the tests."""
    layers: list[nn.Module] = []
    channels = 1
    for width in widths:
        layers += [nn.Conv2d(channels, width, 3), nn.BatchNorm2d(width), nn.ReLU()]
        channels, side = width, side - 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * side * side, classes))


def time_each_network(monkeypatch: pytest.MonkeyPatch, fake) -> None:
    """Time the latency step's networks by ``fake(model, batch, repeats) -> ms`` each, the thin
    network of a pair first (``latency_step.time_pair``'s order), so that nothing is timed."""
    from prune_cli.pruning import latency_step

    def pair(thin: nn.Module, dense: nn.Module, batch: torch.Tensor, repeats: int):
        return fake(thin, batch, repeats), fake(dense, batch, repeats)

    monkeypatch.setattr(latency_step, "time_pair", pair)


def record_figures(monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """The report's figures recorded instead of drawn: each study's runs, for the tables of
    cases that test which runs a report counts. Drawing them with matplotlib is most of a
    report's second; one case of each table still draws them."""
    from prune_cli.reporting import report

    drawn: list[set[str]] = []

    def record(c, dataset: str, model: str, root: Path, formats=()) -> list[str]:
        study = c.levels[(c.levels.dataset == dataset) & (c.levels.model == model)]
        drawn.append(set(study.run))
        return []

    monkeypatch.setattr(report, "study_plots", record)
    return drawn
