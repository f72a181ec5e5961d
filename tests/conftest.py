"""Shared fixtures: composing configs like the CLI does, and running the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from prune_cli.config import (
    CONF_DIR,
    RunConfig,
    register_configs,
    register_resolvers,
    to_run_config,
)

register_configs()
register_resolvers()
torch.set_num_threads(min(2, torch.get_num_threads()))

#: settings that make a CLI run take seconds on the CPU
FAST = ["train.epochs=2", "progress=false", "model=mlp"]


def compose_config(overrides: list[str] | None = None):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides or [])


def run_config(overrides: list[str] | None = None) -> RunConfig:
    return to_run_config(compose_config(overrides))


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "prune_cli.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def tiny_run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state: no test depends on the order of others."""
    torch.manual_seed(0)
