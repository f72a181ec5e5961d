"""Learning-rate schedules, mask enforcement in the loop, and NaN detection."""

from __future__ import annotations

import math

import pytest
import torch

from prune_cli.data import build_dataset, dataset_config
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
    data = build_dataset(dataset_config(name="digits", limit_train=256), torch.device("cpu"))
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


def test_compile_mode_must_be_known():
    assert TrainConfig(compile=True, compile_mode="reduce-overhead").compile_mode
    with pytest.raises(ConfigError, match="compile_mode"):
        TrainConfig(compile_mode="fast")


def test_cuda_graphs_refuse_a_second_graph_layer():
    assert TrainConfig(cuda_graphs=True, compile=True).cuda_graphs
    with pytest.raises(ConfigError, match="cuda_graphs"):
        TrainConfig(cuda_graphs=True, compile=True, compile_mode="reduce-overhead")


def test_what_keeps_a_step_out_of_a_cuda_graph():
    """Callbacks acting inside or after the step, or a foreign optimizer, block the capture;
    progress bars (host-side books) do not; the graphed step is only used on CUDA."""
    from prune_cli.callbacks import Callback
    from prune_cli.recording.console import ProgressBars, make_progress
    from prune_cli.training.graph import graph_blocker

    class EditsGrads(Callback):
        def on_after_backward(self, step, model):
            pass

    class ChangesMasks(Callback):
        def on_step_end(self, step, model):
            pass

    class EpochOnly(Callback):
        def on_epoch_end(self, epoch, model):
            pass

    p = [torch.nn.Parameter(torch.zeros(2))]
    sgd, adam = torch.optim.SGD(p, lr=0.1), torch.optim.Adam(p)
    assert "not the fused" in graph_blocker([], sgd)  # its kernels need a host learning rate
    for opt in (sgd, adam):
        opt.param_groups[0]["fused"] = True  # as build_optimizer makes them on CUDA
    bars = ProgressBars(make_progress(False), 0, 0)
    assert graph_blocker([bars], sgd) is None
    assert graph_blocker([], adam) is None
    assert "EditsGrads" in graph_blocker([EditsGrads()], sgd)
    assert "ChangesMasks acts after every step" in graph_blocker([bars, ChangesMasks()], sgd)
    assert "EpochOnly acts after every epoch" in graph_blocker([EpochOnly()], sgd)
    assert "RMSprop" in graph_blocker([], torch.optim.RMSprop(p))
    trainer, _, _ = make_trainer()
    trainer_cfg = TrainConfig(cuda_graphs=True, batch_size=64)
    on_cpu = Trainer(
        trainer.model, trainer.data, trainer_cfg, trainer.optimizer, trainer.scheduler, None
    )
    assert on_cpu._graph is None  # CPU: eager steps, the setting is a no-op


def test_evaluation_returns_a_normal_tensor_and_needs_no_gradients():
    trainer, _, _ = make_trainer()
    result = evaluate(trainer.model, trainer.data, "val", trainer.cfg)
    assert not result.confusion.is_inference()
    result.confusion += 1  # callers may update it in place
    assert all(p.grad is None for p in trainer.model.parameters())


def test_the_optimizer_is_the_default_one_on_the_cpu():
    """The fused kernels are for CUDA; the CPU keeps the implementation results were pinned
    with."""
    trainer, _, _ = make_trainer()
    assert not trainer.optimizer.defaults.get("fused")


def test_compiled_training_sees_the_masked_weights(monkeypatch):
    """``train.compile``: the compiled step reads the weights at every call, so the zeros that
    ``enforce_masks`` writes in place after a step are what the next step computes with; and it
    trains like the eager step. (``aot_eager``: dynamo and AOTAutograd as in the real backend,
    without the minutes Inductor needs to generate C++ on a CPU.)"""
    from prune_cli.training import loop

    monkeypatch.setitem(
        loop._COMPILED,
        "default",
        torch.compile(loop.loss_and_correct, backend="aot_eager", dynamic=False),
    )
    eager, eager_params, _ = make_trainer()
    eager_stats = eager.train_epoch(0, torch.Generator().manual_seed(0))
    trainer, params, masks = make_trainer()
    trainer = Trainer(
        trainer.model,
        trainer.data,
        TrainConfig(epochs=1, batch_size=64, lr=0.05, compile=True),
        trainer.optimizer,
        trainer.scheduler,
        lambda: masks.apply_(params),
    )
    stats = trainer.train_epoch(0, torch.Generator().manual_seed(0))
    assert stats["loss"] == pytest.approx(eager_stats["loss"], rel=1e-4)
    for k, p in params.items():
        assert torch.count_nonzero(p[~masks[k]]) == 0
        assert torch.allclose(p, eager_params[k], atol=1e-5)
    # prune more in place; the compiled forward must compute with the new zeros
    masks.update({k: masks[k] & (torch.rand(p.shape) > 0.5) for k, p in params.items()})
    masks.apply_(params)
    x, y = next(trainer.data.batches("train", 64))
    trainer.model.train()
    loss, _ = trainer._forward(trainer.model, x, y, False, 0.0)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(trainer.model(x), y)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_a_warmup_longer_than_half_the_training_is_capped():
    """train.epochs=2 with 2 warm-up epochs must still decay, not end at the peak rate."""
    from prune_cli.training.optim import lr_factor, warmup_epochs

    cfg = TrainConfig(epochs=2, warmup_epochs=2.0, schedule="cosine")
    assert warmup_epochs(cfg, 2) == 1.0
    factor = lr_factor(cfg, 10, 2)
    assert factor(9) == 1.0  # the peak at the end of the capped warm-up
    assert factor(19) < 0.05  # then cosine decay to (almost) zero by the last step
    assert warmup_epochs(TrainConfig(epochs=15, warmup_epochs=2.0), 15) == 2.0
