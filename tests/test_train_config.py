"""Non-finite training settings (``train.lr=nan``, ``inf``) are one-line config errors."""

from __future__ import annotations

import math

import pytest
from conftest import run_config

from prune_cli.errors import ConfigError
from prune_cli.training.config import RetrainConfig, TrainConfig

FLOATS = ("lr", "momentum", "weight_decay", "gamma", "warmup_epochs", "label_smoothing")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("key", [*FLOATS, "grad_clip"])
def test_non_finite_float_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"train.{key} must be a finite number") as info:
        TrainConfig(**{key: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "milestones", "lr_values"),
    [("milestones", [math.nan], [0.1, 0.01]), ("lr_values", [1.0], [0.1, math.inf])],
)
def test_non_finite_list_entries_are_refused(key, milestones, lr_values):
    with pytest.raises(ConfigError, match=f"train.{key} must be finite numbers"):
        TrainConfig(schedule="piecewise", milestones=milestones, lr_values=lr_values)


def test_non_finite_retrain_setting_is_refused():
    with pytest.raises(ConfigError, match=r"train.lr must be a finite number.*in train.retrain"):
        TrainConfig(retrain=RetrainConfig(lr=math.inf))


@pytest.mark.parametrize(
    "override",
    ["train.lr=nan", "train.momentum=inf", "train.weight_decay=-inf", "train.label_smoothing=nan"],
)
def test_non_finite_overrides_fail_when_the_config_is_composed(override):
    with pytest.raises(ConfigError, match="must be a finite number"):
        run_config([override])
