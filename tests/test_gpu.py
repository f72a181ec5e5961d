"""The CUDA path: on-device data, bf16 autocast, channels-last, masks and a whole run.

Skipped without a CUDA GPU (CI and the development machines have none); run on a GPU machine
with ``pytest -m gpu``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import run_config

from prune_cli.data import DatasetConfig, build_dataset
from prune_cli.experiment import Experiment
from prune_cli.models import build_model
from prune_cli.pruning.mask import Masks, prunable_parameters
from prune_cli.training.config import TrainConfig
from prune_cli.training.loop import Trainer, evaluate
from prune_cli.training.optim import build_optimizer, build_scheduler

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_training_step_on_cuda_keeps_masks_and_learns():
    device = torch.device("cuda")
    data = build_dataset(DatasetConfig(name="digits"), device)
    model = build_model("resnet20", data.spec).to(device).to(memory_format=torch.channels_last)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, warmup_epochs=1)
    params = prunable_parameters(model)
    masks = Masks({k: torch.rand(p.shape, device=device) > 0.5 for k, p in params.items()})
    masks.apply_(params)
    opt = build_optimizer(model.parameters(), cfg, cfg.lr)
    sched = build_scheduler(opt, cfg, data.num_batches("train", 64), 3)
    trainer = Trainer(model, data, cfg, opt, sched, lambda: masks.apply_(params))
    for epoch in range(3):
        trainer.train_epoch(epoch, torch.Generator().manual_seed(epoch))
    for k, p in params.items():
        assert p.is_cuda and torch.count_nonzero(p[~masks[k]]) == 0
    assert evaluate(model, data, "test", cfg).accuracy > 0.5


def test_a_run_on_cuda(tmp_path):
    summary = Experiment(
        run_config(
            ["model=resnet20", "train.epochs=3", "method.levels=2", "progress=false", "device=cuda"]
        ),
        tmp_path,
    ).run()
    assert summary["status"] == "completed" and summary["device"].startswith("cuda")
    assert summary["levels"][-1]["sparsity"] > 0.5
