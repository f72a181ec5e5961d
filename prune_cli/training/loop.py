"""The training loop: one epoch of steps and one evaluation, short and closed.

Behaviour that varies (masks that change, progress bars, gradient edits) comes through
:class:`~prune_cli.callbacks.Callback` hooks. Masks are enforced after each optimizer step by
one fused multiply (``enforce_masks``, built by the experiment from the run's masks).

What keeps a GPU busy (see docs/BENCHMARKS.md): no host sync inside an epoch, so the CPU queues
the kernels of later steps while the GPU runs earlier ones. Loss and accuracy are summed on the
device and read once at the end of the epoch, where a loss that became NaN or infinite is
caught; the data's random numbers arrive once per epoch; inputs come in the model's memory
format (channels-last on CUDA), so no layout copy is made per step. On CUDA, cuDNN picks its
fastest kernels (``train.cudnn_benchmark``); ``train.compile`` compiles the forward pass and
the loss with ``torch.compile`` (the backward pass follows through AOTAutograd). A compiled
step reads the parameters as inputs at every call, so it sees the weights that ``enforce_masks``
zeroed in place after the previous step. ``train.cuda_graphs`` captures the whole step, optimizer
and masks included, as one CUDA graph (:mod:`prune_cli.training.graph`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prune_cli.callbacks import Callback
from prune_cli.distributed import SINGLE, World, all_reduce_sum
from prune_cli.errors import ConfigError, RunFailed
from prune_cli.metrics import confusion_matrix
from prune_cli.spec import ImageData
from prune_cli.training.config import TrainConfig
from prune_cli.training.graph import StepGraph, graph_blocker

log = logging.getLogger("prune_cli.training")


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    confusion: Tensor  # (C, C) on the CPU, rows = true class


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup_device(device: torch.device, cfg: TrainConfig) -> None:
    """Process-wide settings for training on ``device``: on CUDA, let cuDNN time its algorithms
    once per input shape and keep the fastest (the shapes of a run repeat at every step)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark is not False


def memory_format(device: torch.device, cfg: TrainConfig) -> torch.memory_format:
    """The layout of 4-d inputs (and of the model's weights): channels-last on CUDA when set."""
    if device.type == "cuda" and cfg.channels_last:
        return torch.channels_last
    return torch.contiguous_format


def as_input(x: Tensor, fmt: torch.memory_format) -> Tensor:
    """``x`` in layout ``fmt`` (4-d images only); no copy when it is laid out so already."""
    return x.contiguous(memory_format=fmt) if x.dim() == 4 else x


class Trainer:
    """Trains ``model`` on ``data`` with a given optimizer and scheduler; one level at a time."""

    def __init__(
        self,
        model: nn.Module,
        data: ImageData,
        cfg: TrainConfig,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        enforce_masks: Callable[[], None] | None,
        callbacks: Sequence[Callback] = (),
        world: World = SINGLE,
    ) -> None:
        self.model = model
        self.data = data
        self.cfg = cfg
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.enforce_masks = enforce_masks  # zeroes pruned weights after each step
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.on_optimizer(optimizer)
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.memory_format = memory_format(self.device, cfg)
        self.steps_per_epoch = data.num_batches("train", cfg.batch_size)
        setup_device(self.device, cfg)
        #: data parallel: ``net`` (DDP) runs the training steps, ``model`` is the same weights
        self.world = world
        self.net = ddp(model, data, cfg.batch_size, world) if world.parallel else model
        self._bf16 = self.cuda and cfg.bf16
        self._forward = compiled(cfg.compile_mode or "default") if cfg.compile else loss_and_correct
        #: CUDA graphs (``reduce-overhead``): each step is a new generation of graph replays
        self._mark_step = bool(cfg.compile) and cfg.compile_mode == "reduce-overhead"
        self._graph: StepGraph | None = None
        if cfg.cuda_graphs and self.cuda and world.parallel:
            log.warning("train.cuda_graphs: not with data-parallel ranks; the steps run eagerly")
        elif cfg.cuda_graphs and self.cuda:
            blocker = graph_blocker(self.callbacks, optimizer)
            if blocker is None:
                self._graph = StepGraph(model, optimizer, self._step_body)
            else:
                log.warning("train.cuda_graphs: %s, so the steps run eagerly", blocker)

    def _step_body(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """A step's device work after ``zero_grad``: what :class:`StepGraph` captures."""
        loss, right = self._forward(
            self.model, x, y, self._bf16, self.cfg.label_smoothing, self.cfg.temperature or 1.0
        )
        loss.backward()
        if self.cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        if self.enforce_masks is not None:
            self.enforce_masks()
        return loss.detach(), right

    def _backward(self, loss: Tensor, n: int, batch: int) -> None:
        """``loss.backward()``; with data-parallel ranks, this rank's mean loss over its ``n``
        examples of global batch ``batch`` is weighed by ``n * world / batch size``: DDP averages
        the ranks' gradients, which then are those of the mean loss over the whole batch."""
        if not self.world.parallel:
            loss.backward()
            return
        size = min(self.cfg.batch_size, self.data.size("train") - batch * self.cfg.batch_size)
        (loss * (n * self.world.size / size)).backward()

    def train_epoch(self, epoch: int, generator: torch.Generator) -> dict[str, float]:
        """One pass over the training split; returns mean loss and accuracy."""
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        step = epoch * self.steps_per_epoch
        shard = (self.world.rank, self.world.size) if self.world.parallel else None
        batches = self.data.batches(
            "train",
            self.cfg.batch_size,
            shuffle=True,
            augment=True,
            generator=generator,
            shard=shard,
        )
        graph = self._graph
        if graph is not None:
            graph.begin_epoch()
        for x, y in batches:
            x = as_input(x, self.memory_format)  # before ``fits``: the graph's layout
            if graph is not None and graph.fits(x, y):
                graph.step(x, y)
                self.scheduler.step()
                for cb in self.callbacks:  # host-side bookkeeping only (graph_blocker)
                    cb.on_step_end(step, self.model)
                step += 1
                continue
            if self._mark_step:
                torch.compiler.cudagraph_mark_step_begin()
            loss, right = self._forward(
                self.net, x, y, self._bf16, self.cfg.label_smoothing, self.cfg.temperature or 1.0
            )
            self.optimizer.zero_grad(set_to_none=True)
            self._backward(loss, y.numel(), step - epoch * self.steps_per_epoch)
            for cb in self.callbacks:
                cb.on_after_backward(step, self.model)
            if self.cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.enforce_masks is not None:
                self.enforce_masks()
            for cb in self.callbacks:
                cb.on_step_end(step, self.model)
            # read before the next step: a compiled step with CUDA graphs reuses its outputs
            loss_sum += loss.detach() * y.numel()
            correct += right
            seen += y.numel()
            step += 1
        if graph is not None:
            graph.end_epoch()
            loss_sum, correct = loss_sum + graph.loss_sum, correct + graph.correct
            seen += graph.seen
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, self.model)
        sums = [loss_sum.double(), correct.double(), torch.tensor(seen, device=self.device)]
        if self.world.parallel:  # the whole batch's sums, as one process has them
            sums = all_reduce_sum(sums)
        # the epoch's one host sync: the sums in one transfer
        total_loss, total_correct, seen = torch.stack([v.double() for v in sums]).tolist()
        mean_loss = total_loss / max(1, seen)
        if not math.isfinite(mean_loss):
            raise RunFailed(f"training loss became {mean_loss} in epoch {epoch + 1}")
        return {"loss": mean_loss, "accuracy": int(total_correct) / max(1, seen)}

    def evaluate(self, split: str) -> EvalResult:
        return evaluate(self.model, self.data, split, self.cfg)


def ddp(model: nn.Module, data: ImageData, batch_size: int, world: World) -> nn.Module:
    """``model`` in DistributedDataParallel; refused when a batch is too small to give every rank
    an example (each rank's part of a global batch of ``batch_size``)."""
    from torch.nn.parallel import DistributedDataParallel

    n, steps = data.size("train"), data.num_batches("train", batch_size)
    smallest = min(batch_size, n - (steps - 1) * batch_size) if steps else 0
    if smallest < world.size:
        raise ConfigError(
            f"train.batch_size={batch_size} leaves a batch of {smallest} examples for "
            f"{world.size} data-parallel ranks; choose a batch size that leaves each rank one"
        )
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _autocast(device: torch.device, cfg: TrainConfig) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and cfg.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def loss_and_correct(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    bf16: bool,
    label_smoothing: float,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Mean loss (cross-entropy of logits / ``temperature``) and the number of correct
    predictions of one batch: what ``train.compile`` compiles (forward and loss; AOTAutograd
    compiles the backward pass with it). A positive temperature leaves the argmax unchanged."""
    # no cast cache: a CUDA graph capture may not hold cached casts (and one forward pass
    # casts each weight once anyway)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        if bf16
        else contextlib.nullcontext()
    )
    with autocast:
        logits = model(x)
        scaled = logits if temperature == 1.0 else logits / temperature
        loss = F.cross_entropy(scaled, y, label_smoothing=label_smoothing)
    return loss, (logits.argmax(dim=1) == y).sum()


_COMPILED: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {}


def compiled(mode: str) -> Callable[..., tuple[Tensor, Tensor]]:
    """``loss_and_correct`` compiled with ``mode``, one wrapper per mode and process: the
    experiment builds a Trainer per level, and dynamo's cache entries (guarded on the model
    and the shapes) are then reused across levels instead of compiled again per Trainer."""
    if mode not in _COMPILED:
        # static shapes: an epoch has at most two batch sizes (full and last), each compiled
        # once; dynamic shapes would make every kernel slower for the sake of the last batch
        _COMPILED[mode] = torch.compile(loss_and_correct, mode=mode, dynamic=False)
    return _COMPILED[mode]


def evaluate(model: nn.Module, data: ImageData, split: str, cfg: TrainConfig) -> EvalResult:
    """Loss, accuracy and confusion matrix of ``model`` on a split (eval mode, no gradients).

    Under ``torch.inference_mode``; the sums stay on the device (the confusion matrix by
    ``bincount``) and come to the host once, at the end.
    """
    loss_sum, confusion = _evaluate_sums(model, data, split, cfg)
    # made outside inference mode: a normal tensor (inference tensors refuse in-place updates)
    confusion = confusion.cpu().clone()
    n = int(confusion.sum())
    return EvalResult(
        loss=float(loss_sum) / max(1, n),
        accuracy=float(confusion.diagonal().sum()) / max(1, n),
        confusion=confusion,
    )


@torch.inference_mode()
def _evaluate_sums(
    model: nn.Module, data: ImageData, split: str, cfg: TrainConfig
) -> tuple[Tensor, Tensor]:
    model.eval()
    device = next(model.parameters()).device
    fmt = memory_format(device, cfg)
    num_classes = data.spec.num_classes
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    for x, y in data.batches(split, cfg.eval_batch_size):
        with _autocast(device, cfg):
            logits = model(as_input(x, fmt))
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        confusion += confusion_matrix(logits.argmax(dim=1), y, num_classes)
    return loss_sum, confusion
