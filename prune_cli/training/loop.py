"""The training loop: one epoch of steps and one evaluation, short and closed.

Behaviour that varies (masks that change, progress bars, gradient edits) comes through
:class:`~prune_cli.callbacks.Callback` hooks. Masks are enforced after each optimizer step by
one fused multiply (``enforce_masks``, built by the experiment from the run's masks).
Statistics stay on the device during an epoch (no per-step host sync); a loss that became NaN
or infinite is caught once per epoch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prune_cli.callbacks import Callback
from prune_cli.errors import RunFailed
from prune_cli.metrics import confusion_matrix
from prune_cli.spec import ImageData
from prune_cli.training.config import TrainConfig


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    confusion: Tensor  # (C, C) on the CPU, rows = true class


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    ) -> None:
        self.model = model
        self.data = data
        self.cfg = cfg
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.enforce_masks = enforce_masks  # zeroes pruned weights after each step
        self.callbacks = list(callbacks)
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.steps_per_epoch = data.num_batches("train", cfg.batch_size)

    def _input(self, x: Tensor) -> Tensor:
        if self.cuda and self.cfg.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def train_epoch(self, epoch: int, generator: torch.Generator) -> dict[str, float]:
        """One pass over the training split; returns mean loss and accuracy."""
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        step = epoch * self.steps_per_epoch
        batches = self.data.batches(
            "train", self.cfg.batch_size, shuffle=True, augment=True, generator=generator
        )
        for x, y in batches:
            with _autocast(self.device, self.cfg):
                logits = self.model(self._input(x))
                loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
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
            loss_sum += loss.detach() * y.numel()
            correct += (logits.argmax(dim=1) == y).sum()
            seen += y.numel()
            step += 1
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, self.model)
        mean_loss = float(loss_sum) / max(1, seen)
        if not torch.isfinite(torch.tensor(mean_loss)):
            raise RunFailed(f"training loss became {mean_loss} in epoch {epoch + 1}")
        return {"loss": mean_loss, "accuracy": int(correct) / max(1, seen)}

    def evaluate(self, split: str) -> EvalResult:
        return evaluate(self.model, self.data, split, self.cfg)


def _autocast(device: torch.device, cfg: TrainConfig) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and cfg.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, split: str, cfg: TrainConfig) -> EvalResult:
    """Loss, accuracy and confusion matrix of ``model`` on a split (eval mode, no gradients)."""
    model.eval()
    device = next(model.parameters()).device
    num_classes = data.spec.num_classes
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    for x, y in data.batches(split, cfg.eval_batch_size):
        if device.type == "cuda" and cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        confusion += confusion_matrix(logits.argmax(dim=1), y, num_classes)
    n = int(confusion.sum())
    return EvalResult(
        loss=float(loss_sum) / max(1, n),
        accuracy=float(confusion.diagonal().sum()) / max(1, n),
        confusion=confusion.cpu(),
    )
