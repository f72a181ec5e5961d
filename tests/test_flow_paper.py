"""Issue 9, gradient-flow items: Lubana and Dick's settings (METHODS.md section 6 and the
authors' code): the training temperature, Fisher and GraSP as the authors compute them, pruning
the first convolution of VGG and MobileNet, and targets that the per-unit floors cannot reach."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_config, run_config
from torch import nn

from prune_cli.config import config_hash
from prune_cli.data import DatasetConfig, build_dataset
from prune_cli.errors import ConfigError
from prune_cli.models import build_model
from prune_cli.training import loop
from prune_cli.training.config import TrainConfig
from prune_cli.training.optim import build_optimizer, build_scheduler


# --- 1. train.temperature ---------------------------------------------------------------------
def test_training_loss_is_the_cross_entropy_of_logits_over_t():
    # two samples, three classes; logits z = x W^T, by hand
    model = nn.Linear(2, 3, bias=False)
    model.weight.data.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]]))
    x = torch.tensor([[2.0, 1.0], [0.5, -1.0]])
    y = torch.tensor([0, 2])
    z = [[2.0, 2.0, -1.0], [0.5, -2.0, -1.5]]

    def ce(t: float) -> float:  # mean of log sum exp(z / t) - z_y / t
        rows = [
            (math.log(sum(math.exp(v / t) for v in zs)) - zs[c] / t)
            for zs, c in zip(z, [0, 2], strict=True)
        ]
        return sum(rows) / 2

    for t in (1.0, 5.0):
        loss, right = loop.loss_and_correct(model, x, y, False, 0.0, t)
        assert float(loss.detach()) == pytest.approx(ce(t), rel=1e-6)
        # argmax is unchanged by a positive T: sample 0 ties 2 = 2 (argmax picks class 0),
        # sample 1's largest logit is class 0, not its label 2
        assert int(right) == 1
    assert ce(5.0) != pytest.approx(ce(1.0))  # the test would not see a missing division
    # the default is T = 1: the loss is plain cross-entropy, as before the setting existed
    assert float(loop.loss_and_correct(model, x, y, False, 0.0)[0].detach()) == pytest.approx(
        ce(1.0)
    )


def test_trainer_passes_the_temperature_and_null_means_one(monkeypatch):
    seen: list[float] = []

    def spy(model, x, y, bf16, label_smoothing, temperature=1.0):
        seen.append(temperature)
        return loss_and_correct(model, x, y, bf16, label_smoothing, temperature)

    loss_and_correct = loop.loss_and_correct
    monkeypatch.setattr(loop, "loss_and_correct", spy)
    data = build_dataset(DatasetConfig(name="digits", limit_train=64), torch.device("cpu"))
    for t, expected in ((5.0, 5.0), (None, 1.0)):
        seen.clear()
        model = build_model("mlp", data.spec)
        cfg = TrainConfig(epochs=1, batch_size=64, temperature=t)
        opt = build_optimizer(model.parameters(), cfg, cfg.lr)
        trainer = loop.Trainer(model, data, cfg, opt, build_scheduler(opt, cfg, 1, 1), None)
        trainer.train_epoch(0, torch.Generator().manual_seed(0))
        assert seen and set(seen) == {expected}


def test_temperature_setting_keeps_old_hashes_and_the_flow_experiments_use_t5():
    # null default: the hash drops it, so every existing run keeps its directory
    assert config_hash(compose_config()) == config_hash(compose_config(["train.temperature=null"]))
    assert config_hash(compose_config()) != config_hash(compose_config(["train.temperature=5"]))
    for name in ("flow_vgg13_cifar", "flow_mobilenet_v1_cifar", "flow_resnet56_cifar"):
        cfg = run_config([f"experiment={name}"])
        assert cfg.train.temperature == 5.0 and cfg.method.score_temperature == 5.0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="temperature"):
            TrainConfig(temperature=bad)
