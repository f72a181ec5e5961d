"""The whole training step captured as one CUDA graph (``train.cuda_graphs``).

Why: eager ResNet-56 training on an H100 is limited by the CPU issuing kernels (5.2 ms of
kernels per step at batch 128 take several times as long to issue, docs/BENCHMARKS.md).
``torch.compile`` with ``reduce-overhead`` graphs the forward and backward passes only; the
optimizer step and the mask multiply are still issued kernel by kernel. Here one graph holds
forward, loss, backward, gradient clipping, the optimizer step, the mask multiply and the
epoch's running sums, and a step is one copy of the batch into static buffers and one replay.

How (the pattern of PyTorch's "whole network capture"):

- the first ``WARMUP_STEPS`` full-size steps of a Trainer run eagerly on a side stream: they are
  real training steps, and they make the lazy work (cuDNN's algorithm search, the optimizer's
  state, cuBLAS workspaces) happen before the capture;
- the next full-size step captures the graph (capturing runs nothing) and replays it;
- a batch of another size (the last of an epoch) runs eagerly, outside the graph;
- the learning rate lives in one device tensor per parameter group while an epoch runs, so that
  the scheduler's host-side update (``fill_``) reaches the captured optimizer kernels; between
  epochs the groups hold plain floats again, so checkpoints look as they always did.

What may not be captured, and then runs eagerly with one warning: callbacks that act inside the
step (``on_after_backward``) or after it (``on_step_end``, ``on_epoch_end``) unless the callback
says it only keeps host-side books (``Callback.step_hooks_on_host``): they may replace masks or
reset the optimizer, and a graph would keep using the old tensors; an optimizer other than
torch's fused SGD or Adam (the fused CUDA kernels read the learning rate from a tensor).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from prune_cli.callbacks import Callback

log = logging.getLogger("prune_cli.training")

#: eager steps before the capture (the lazy work of the first steps must not be captured)
WARMUP_STEPS = 3


def graph_blocker(callbacks: Sequence[Callback], optimizer: torch.optim.Optimizer) -> str | None:
    """Why the step cannot be captured as a graph, or None when it can."""
    for cb in callbacks:
        name = type(cb).__name__
        if type(cb).on_after_backward is not Callback.on_after_backward:
            return f"{name} edits gradients inside the step"
        for hook, when in (("on_step_end", "every step"), ("on_epoch_end", "every epoch")):
            # a hook after the step may replace masks, which the graph would keep multiplying
            overridden = getattr(type(cb), hook) is not getattr(Callback, hook)
            if overridden and not cb.step_hooks_on_host:
                return f"{name} acts after {when}"
    if type(optimizer) not in (torch.optim.SGD, torch.optim.Adam):
        return f"the optimizer {type(optimizer).__name__} is not torch's SGD or Adam"
    if not all(group.get("fused") for group in optimizer.param_groups):
        # only the fused kernels read the learning rate from a device tensor; the others turn
        # it into a host number, which a capture cannot do
        return "the optimizer is not the fused CUDA one"
    return None


class StepGraph:
    """Replays one captured training step; owns the static inputs and the epoch's sums."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        body: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    ) -> None:
        """``body(x, y)`` does one step's device work and returns (detached loss, correct)."""
        self.model = model
        self.optimizer = optimizer
        self.body = body
        device = next(model.parameters()).device
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._x: Tensor | None = None
        self._y: Tensor | None = None
        self._warm = 0
        self._stream = torch.cuda.Stream(device)
        # one tensor per group for the whole Trainer: the captured kernels read these addresses
        self._lr = [
            torch.tensor(float(g["lr"]), device=device, dtype=torch.float32)
            for g in optimizer.param_groups
        ]
        for group in optimizer.param_groups:
            if isinstance(optimizer, torch.optim.Adam):
                group["capturable"] = True  # the step count stays on the device

    # --- the epoch ----------------------------------------------------------------------------
    def begin_epoch(self) -> None:
        """Hand the groups their learning-rate tensors (set to the scheduler's current value)."""
        for group, lr in zip(self.optimizer.param_groups, self._lr, strict=True):
            lr.fill_(float(group["lr"]))
            group["lr"] = lr
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0

    def end_epoch(self) -> None:
        """Plain floats in the groups again (one small transfer per group, once per epoch)."""
        for group, lr in zip(self.optimizer.param_groups, self._lr, strict=True):
            group["lr"] = float(lr)

    def fits(self, x: Tensor, y: Tensor) -> bool:
        """Whether the batch has the captured shape (or is the first full one)."""
        if self._x is None:
            return True
        return (
            x.shape == self._x.shape and x.stride() == self._x.stride() and y.shape == self._y.shape
        )

    # --- a step -------------------------------------------------------------------------------
    def step(self, x: Tensor, y: Tensor) -> None:
        if self._x is None:
            self._x, self._y = torch.empty_like(x), torch.empty_like(y)
        self._x.copy_(x, non_blocking=True)
        self._y.copy_(y, non_blocking=True)
        if self._warm < WARMUP_STEPS:
            self._eager_on_side_stream()
            self._warm += 1
        else:
            if self._graph is None:
                self._capture()
            assert self._graph is not None
            self._graph.replay()
        self.seen += y.numel()

    def _accumulate(self) -> None:
        loss, right = self.body(self._x, self._y)
        self.loss_sum += loss * self._y.numel()
        self.correct += right

    def _eager_on_side_stream(self) -> None:
        current = torch.cuda.current_stream()
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            self.optimizer.zero_grad(set_to_none=True)
            self._accumulate()
        current.wait_stream(self._stream)

    def _capture(self) -> None:
        torch.cuda.synchronize()
        # gradients are allocated inside the capture, from the graph's pool: every replay writes
        # them at the same addresses, so no zero_grad is needed (nor captured)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._accumulate()
        self._graph = graph
