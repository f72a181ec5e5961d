"""Rank 0 decides, the other ranks follow: the hand-over of a data-parallel run's state.

In a data-parallel run (:mod:`prune_cli.distributed`) rank 0 alone owns the run directory and
decides everything outside the training steps: it sets the run up (or resumes it), prunes,
rewinds and selects each level's epoch. The other ranks build the same data, method and model,
then take what rank 0 decided at three points, which :class:`Ranks` names:

- the start (:meth:`Ranks.start` on rank 0, :meth:`Ranks.receive` on the others): the state
  to start from and, of a resumed run, the checkpoint that training continues from, without
  what is rank 0's alone (:data:`RANK0_ONLY`); or, when rank 0 stops before training (it showed
  a finished run, or its set-up failed), word to stop (:meth:`Ranks.stop`);
- after pruning and after each level's training (:meth:`Ranks.sync`): weights, masks, the
  method's state and the cursor;
- inside a level's training, where a method's callbacks choose from a measurement that differs
  between ranks (:meth:`Ranks.agree`: the latency a pruning step timed), rank 0's value.

A single process is the same code with every call a no-op. This module sits beside the
experiment loop (it knows masks and checkpoints); :mod:`prune_cli.distributed` below it knows
only processes and tensors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from prune_cli import distributed
from prune_cli.checkpoint import Checkpoint, Cursor
from prune_cli.distributed import World
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import PruningMethod

#: checkpoint entries rank 0 keeps to itself when it hands a resumed run over: the results and
#: the selected epoch's weights are its alone (it evaluates and selects), and the weights, masks
#: and method state travel in the shared state anyway
RANK0_ONLY = ("records", "best_state", "model", "masks", "method")


class SharedState(Protocol):
    """What every rank holds alike (the experiment's ``RunState`` is one)."""

    device: torch.device
    model: nn.Module
    masks: Masks
    method: PruningMethod
    cursor: Cursor


def _shared(state: SharedState) -> dict[str, Any]:
    return {
        "cursor": state.cursor.to_dict(),
        "model": state.model.state_dict(),
        "masks": state.masks.state_dict(),
        "method": state.method.state_dict(),
    }


def _apply(state: SharedState, shared: dict[str, Any]) -> None:
    state.cursor.restore(Cursor.from_dict(shared["cursor"]))
    state.model.load_state_dict(shared["model"])
    state.masks = Masks(shared["masks"])
    state.method.load_state_dict(shared["method"])


def _without_rank0_only(checkpoint: Checkpoint) -> Checkpoint:
    empty = {name: None if name == "best_state" else {} for name in RANK0_ONLY}
    return dataclasses.replace(checkpoint, **empty)


@dataclass
class Handed:
    """What a rank other than 0 received at the start: rank 0's state, and the checkpoint its
    training continues from (None for a fresh run)."""

    shared: dict[str, Any]
    resume: Checkpoint | None

    def apply(self, state: SharedState) -> Checkpoint | None:
        """Give ``state`` rank 0's; returns the checkpoint to resume training from."""
        _apply(state, self.shared)
        return self.resume


class Ranks:
    """The hand-over between rank 0 and the other ranks of one run (see the module's
    docstring); every rank holds one."""

    def __init__(self, world: World) -> None:
        self.world = world
        #: whether rank 0 has started the other ranks, or told them to stop
        self._handed_over = False

    @property
    def main(self) -> bool:
        return self.world.main

    def start(self, state: SharedState, resume: Checkpoint | None) -> None:
        """Rank 0, set up: the other ranks start from ``state`` (and ``resume``'s training)."""
        if not self.world.parallel:
            return
        handed = None if resume is None else _without_rank0_only(resume).to_dict()
        # as dicts: broadcast_object moves the tensors of dicts and lists, not of dataclasses
        self._hand_over({"state": _shared(state), "resume": handed}, state.device)

    def stop(self) -> None:
        """Rank 0, done: if it never started the other ranks (it showed a finished run, or its
        set-up failed), they stop too instead of waiting for it."""
        if self.world.parallel and not self._handed_over:
            self._hand_over(None, torch.device("cpu"))

    def receive(self, device: torch.device) -> Handed | None:
        """A rank other than 0: wait for rank 0's start; None when rank 0 stopped instead."""
        handed = distributed.broadcast_object(None, device)
        if handed is None:
            return None
        resume = handed["resume"]
        return Handed(handed["state"], None if resume is None else Checkpoint.from_dict(resume))

    def sync(self, state: SharedState) -> None:
        """Every rank takes rank 0's weights, masks, method state and cursor."""
        if not self.world.parallel:
            return
        shared = distributed.broadcast_object(
            _shared(state) if self.world.main else None, state.device
        )
        if not self.world.main:
            _apply(state, shared)

    def agree(self, obj: Any, device: torch.device) -> Any:
        """Rank 0's ``obj`` on every rank; ``obj`` itself in one process. A collective: every
        rank calls it at the same point, as the training callbacks run on every rank (a
        latency-budgeted step's measured latency, which each rank times for itself)."""
        if not self.world.parallel:
            return obj
        return distributed.broadcast_object(obj, device)

    def _hand_over(self, handed: dict[str, Any] | None, device: torch.device) -> None:
        self._handed_over = True
        distributed.broadcast_object(handed, device)
