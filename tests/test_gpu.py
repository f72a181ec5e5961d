"""The CUDA path: on-device data, bf16 autocast, channels-last, masks and a whole run.

Skipped without a CUDA GPU (CI and the development machines have none); run on a GPU machine
with ``pytest -m gpu``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import run_config

from prune_cli.data import build_dataset, dataset_config
from prune_cli.experiment import Experiment
from prune_cli.models import build_model
from prune_cli.pruning.mask import Masks, prunable_parameters
from prune_cli.spec import DataSpec
from prune_cli.training.config import TrainConfig
from prune_cli.training.loop import Trainer, evaluate
from prune_cli.training.optim import build_optimizer, build_scheduler

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_training_step_on_cuda_keeps_masks_and_learns():
    device = torch.device("cuda")
    data = build_dataset(dataset_config(name="digits"), device)
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


@pytest.mark.parametrize("speed", [[], ["train.cuda_graphs=true", "train.compile=true"]])
def test_a_run_on_cuda(tmp_path, speed):
    summary = Experiment(
        run_config(
            [
                "model=resnet20",
                "train.epochs=3",
                "method.levels=2",
                "progress=false",
                "device=cuda",
                *speed,
            ]
        ),
        tmp_path,
    ).run()
    assert summary["status"] == "completed" and summary["device"].startswith("cuda")
    assert summary["levels"][-1]["sparsity"] > 0.5


def cuda_trainer(compile_mode: str | None = None, model_name: str = "resnet20"):
    device = torch.device("cuda")
    data = build_dataset(dataset_config(name="digits"), device)
    torch.manual_seed(0)
    model = build_model(model_name, data.spec).to(device).to(memory_format=torch.channels_last)
    cfg = TrainConfig(
        epochs=2,
        batch_size=64,
        lr=0.05,
        compile=compile_mode is not None,
        compile_mode=compile_mode,
    )
    params = prunable_parameters(model)
    masks = Masks({k: torch.rand(p.shape, device=device) > 0.5 for k, p in params.items()})
    masks.apply_(params)
    opt = build_optimizer(model.parameters(), cfg, cfg.lr)
    sched = build_scheduler(opt, cfg, data.num_batches("train", 64), 2)
    return Trainer(model, data, cfg, opt, sched, lambda: masks.apply_(params)), params, masks


def test_an_epoch_syncs_with_the_host_only_at_its_end():
    """No per-step host sync: the CPU can queue steps ahead of the GPU."""
    trainer, _, _ = cuda_trainer()
    trainer.train_epoch(0, torch.Generator().manual_seed(0))  # caches, cuDNN's search
    assert trainer.steps_per_epoch > 10
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning) as record:
            trainer.train_epoch(1, torch.Generator().manual_seed(1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in record if "synchroniz" in str(w.message)]
    assert len(syncs) <= 2, [str(w.message) for w in syncs]


def test_masks_and_inputs_keep_the_channels_last_layout():
    trainer, params, masks = cuda_trainer()
    masks.update({k: (torch.rand(p.shape) > 0.7).to(p.device) for k, p in params.items()})
    masks.apply_(params)
    for k, p in params.items():
        assert masks._float[k].stride() == p.stride()
    x, _ = next(trainer.data.batches("train", 64, augment=True, generator=torch.Generator()))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cudnn.benchmark


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_on_cuda_keeps_masks_and_learns(mode):
    trainer, params, masks = cuda_trainer(mode, "lenet5")  # a small model compiles fast
    first = trainer.train_epoch(0, torch.Generator().manual_seed(0))
    second = trainer.train_epoch(1, torch.Generator().manual_seed(1))
    assert second["loss"] < first["loss"]
    for k, p in params.items():
        assert torch.count_nonzero(p[~masks[k]]) == 0


def test_latency_on_cuda_is_graphed_and_leaves_the_model_alone():
    from prune_cli.pruning.structured import latency_ms

    model = build_model("resnet20", DataSpec(3, 10, 32)).cuda().train()
    x = torch.randn(64, 3, 32, 32, device="cuda")
    graphed = latency_ms(model, x, repeats=5)
    eager = latency_ms(model, x, repeats=5, graphs=False)
    assert graphed > 0 and eager > 0
    assert model.training and next(model.parameters()).is_contiguous()


def graphed_pair(optimizer: str = "sgd", grad_clip: float | None = None):
    """Two identical CUDA trainers on digits, eager and with the whole step as a CUDA graph."""
    device = torch.device("cuda")
    data = build_dataset(dataset_config(name="digits"), device)
    out = []
    for graphs in (False, True):
        torch.manual_seed(0)
        model = build_model("lenet5", data.spec).to(device).to(memory_format=torch.channels_last)
        cfg = TrainConfig(
            epochs=2,
            batch_size=64,
            lr=0.05 if optimizer == "sgd" else 1e-3,
            optimizer=optimizer,
            bf16=False,
            warmup_epochs=1,
            grad_clip=grad_clip,
            cudnn_benchmark=False,
            cuda_graphs=graphs,
        )
        params = prunable_parameters(model)
        gen = torch.Generator(device="cuda").manual_seed(1)
        masks = Masks(
            {k: torch.rand(p.shape, device=device, generator=gen) > 0.5 for k, p in params.items()}
        )
        masks.apply_(params)
        opt = build_optimizer(model.parameters(), cfg, cfg.lr)
        sched = build_scheduler(opt, cfg, data.num_batches("train", 64), 2)
        trainer = Trainer(model, data, cfg, opt, sched, lambda m=masks, p=params: m.apply_(p))
        out.append((trainer, params, masks))
    return out


@pytest.mark.parametrize(("optimizer", "clip"), [("sgd", None), ("adam", 1.0)])
def test_the_graphed_step_trains_as_the_eager_one(optimizer, clip):
    """Same losses, learning rates and weights, masks kept, and the step really replayed."""
    torch.backends.cudnn.deterministic = True
    try:
        (eager, _, _), (graphed, params, masks) = graphed_pair(optimizer, clip)
        for epoch in range(2):
            a = eager.train_epoch(epoch, torch.Generator().manual_seed(epoch))
            b = graphed.train_epoch(epoch, torch.Generator().manual_seed(epoch))
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
            assert b["accuracy"] == pytest.approx(a["accuracy"], abs=0.01)
            lr_a, lr_b = (
                eager.optimizer.param_groups[0]["lr"],
                graphed.optimizer.param_groups[0]["lr"],
            )
            assert isinstance(lr_b, float) and lr_b == pytest.approx(lr_a)
        assert graphed._graph is not None and graphed._graph._graph is not None
        for (k, p), q in zip(
            params.items(), prunable_parameters(eager.model).values(), strict=True
        ):
            assert torch.count_nonzero(p[~masks[k]]) == 0
            torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
    finally:
        torch.backends.cudnn.deterministic = False


def test_a_callback_inside_the_step_keeps_it_eager(caplog):
    from prune_cli.callbacks import Callback

    class Clip(Callback):
        def on_after_backward(self, step, model):
            pass

    (_, _, _), (graphed, _, _) = graphed_pair()
    t = Trainer(
        graphed.model,
        graphed.data,
        graphed.cfg,
        graphed.optimizer,
        graphed.scheduler,
        None,
        [Clip()],
    )
    assert t._graph is None and "Clip edits gradients" in caplog.text
    t.train_epoch(0, torch.Generator().manual_seed(0))
