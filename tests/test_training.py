"""Learning-rate schedules, mask enforcement in the loop, and NaN detection."""

from __future__ import annotations

import math

import pytest
import torch

from prune_cli.data import DatasetConfig, build_dataset
from prune_cli.errors import ConfigError, RunFailed
from prune_cli.models import build_model
from prune_cli.pruning.mask import Masks, prunable_parameters
from prune_cli.training.config import RetrainConfig, TrainConfig
from prune_cli.training.loop import Trainer, evaluate
from prune_cli.training.optim import build_optimizer, build_scheduler, lr_factor


def test_cosine_with_warmup():
    f = lr_factor(TrainConfig(schedule="cosine", warmup_epochs=1), steps_per_epoch=10, epochs=3)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 20)))
    assert f(30) == pytest.approx(0.0, abs=1e-12)


def test_piecewise_and_retraining_settings():
    cfg = TrainConfig(lr=0.1, schedule="piecewise", milestones=[1, 3], lr_values=[0.01, 0.1, 1e-3])
    f = lr_factor(cfg, 10, 4)
    assert [f(0), f(10), f(29), f(30)] == pytest.approx([0.1, 1.0, 1.0, 0.01])
    tuned = TrainConfig(epochs=60, lr=0.1, retrain=RetrainConfig(epochs=25, lr=0.01))
    assert tuned.for_level(0).epochs == 60
    assert (tuned.for_level(2).epochs, tuned.for_level(2).lr) == (25, 0.01)
    with pytest.raises(ConfigError, match="lr_values"):
        TrainConfig(schedule="piecewise", milestones=[1], lr_values=[0.1])
    with pytest.raises(ConfigError, match=r"in train\.retrain"):
        TrainConfig(retrain=RetrainConfig(epochs=-2))


def test_multistep_and_constant():
    f = lr_factor(TrainConfig(schedule="multistep", milestones=[1, 2.5], gamma=0.1), 10, 3)
    assert [f(9), f(10), f(24), f(25)] == pytest.approx([1, 0.1, 0.1, 0.01])
    assert lr_factor(TrainConfig(schedule="constant"), 10, 3)(29) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": -1},
        {"batch_size": 0},
        {"lr": 0},
        {"optimizer": "lion"},
        {"schedule": "step"},
        {"label_smoothing": 1.0},
        {"grad_clip": 0.0},
        {"select": "best"},
    ],
)
def test_impossible_training_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


def make_trainer(lr: float = 0.05):
    torch.manual_seed(0)
    data = build_dataset(DatasetConfig(name="digits", limit_train=256), torch.device("cpu"))
    model = build_model("mlp", data.spec)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=lr)
    params = prunable_parameters(model)
    masks = Masks({k: torch.rand(p.shape) > 0.5 for k, p in params.items()})
    masks.apply_(params)
    opt = build_optimizer(model.parameters(), cfg, lr)
    sched = build_scheduler(opt, cfg, data.num_batches("train", 64), 1)
    trainer = Trainer(model, data, cfg, opt, sched, lambda: masks.apply_(params))
    return trainer, params, masks


def test_masked_weights_stay_zero_through_training():
    trainer, params, masks = make_trainer()
    stats = trainer.train_epoch(0, torch.Generator().manual_seed(0))
    assert 0 <= stats["accuracy"] <= 1 and stats["loss"] > 0
    for k, p in params.items():
        assert torch.count_nonzero(p[~masks[k]]) == 0
        assert torch.count_nonzero(p[masks[k]]) == int(masks[k].sum())


def test_evaluate_counts_every_example():
    trainer, _, _ = make_trainer()
    result = evaluate(trainer.model, trainer.data, "test", trainer.cfg)
    assert int(result.confusion.sum()) == trainer.data.size("test")
    assert result.accuracy == pytest.approx(
        float(result.confusion.diagonal().sum()) / trainer.data.size("test")
    )


def test_nan_loss_fails_the_run():
    trainer, _, _ = make_trainer(lr=1e30)
    with pytest.raises(RunFailed, match="loss became"):
        for epoch in range(3):
            trainer.train_epoch(epoch, torch.Generator().manual_seed(epoch))
