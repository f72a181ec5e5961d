"""The training-callback protocol, shared by the training loop and by pruning methods.

It sits in the foundations so that pruning methods (gradual magnitude pruning, Dynamic Network
Surgery, attention phases) can hook into training without importing the training package.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Callback:
    """Hooks around the closed training loop. All are optional; state is saved for resumption.

    ``step`` is the index of the optimizer step within the level (0-based, counted across epochs),
    so a resumed run continues a schedule exactly where it stopped.
    """

    #: True when ``on_step_end`` and ``on_epoch_end`` only keep host-side books (a progress bar):
    #: the step's device work may then be replayed from a CUDA graph (``train.cuda_graphs``)
    step_hooks_on_host: bool = False

    def on_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Once, when the Trainer is built: the level's optimizer (to reset its state, say)."""

    def on_level_start(self, model: nn.Module, steps_per_epoch: int, epochs: int) -> None:
        """Before the first epoch of a level (also when a level is resumed)."""

    def on_after_backward(self, step: int, model: nn.Module) -> None:
        """After ``loss.backward()``, before the optimizer step (edit gradients here)."""

    def on_step_end(self, step: int, model: nn.Module) -> None:
        """After the optimizer step and mask enforcement."""

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        """After each epoch's training, before validation."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
