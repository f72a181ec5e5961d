"""Data-parallel training across processes: ``torchrun --nproc-per-node N -m prune_cli.cli ...``.

torchrun (or SLURM through submitit, whose environment :func:`export_slurm` translates) starts N
copies of the same command; each reads its place from ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``. The copies train one model with :class:`~torch.nn.parallel.DistributedDataParallel`:

- every rank draws the same epoch permutation from the same seeded generator, and takes its
  contiguous slice of every *global* batch (``train.batch_size``) (:func:`shard_bounds`); its
  loss is scaled by ``n_rank * world / n_batch``, so that DDP's gradient average equals the
  gradient of the mean loss over the whole batch, as one process computes it;
- rank 0 alone owns the run directory (lock, checks, checkpoints, results) and decides
  everything outside the training steps: pruning, rewinding, the selected epoch of a level.
  It sends the resulting state (weights, masks, the method's state, the cursor) to the other
  ranks (:func:`broadcast_object`), which never read or write the run directory;
- evaluation runs on rank 0 only, over the whole split: its numbers are the run's numbers, and
  the other ranks go on to the next epoch and wait for rank 0 at its first gradient all-reduce.

A single process (no ``WORLD_SIZE``, or 1) is the same code with all of this switched off.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

#: environment variables of a torchrun worker
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes of a run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that owns the run directory."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


SINGLE = World()


def from_env(env: Mapping[str, str] | None = None) -> World:
    """The world torchrun describes in the environment; a single process without it."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return SINGLE
    world = World(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if not 0 <= world.rank < world.size or world.local_rank < 0:
        raise ValueError(f"inconsistent torchrun environment: {world}")
    return world


def export_slurm(env: Mapping[str, str] | None = None) -> bool:
    """In a task of a multi-task SLURM job (submitit's ``tasks_per_node``, or ``nodes`` > 1),
    set torchrun's variables from SLURM's with submitit's own helper: rank = ``SLURM_PROCID``,
    world = ``SLURM_NTASKS``, the rendezvous on the job's first node, a port from the job id.
    False (nothing set) outside one, or where torchrun's variables are set already."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env or "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", 1)) <= 1:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


_WORLD = SINGLE


def world() -> World:
    """The world :func:`setup` joined (a single process before, or without, it)."""
    return _WORLD


def setup(device: str = "auto", env: Mapping[str, str] | None = None) -> World:
    """Join the process group torchrun describes (gloo on the CPU, NCCL with CUDA GPUs, one GPU
    per local rank); a single process joins nothing. Idempotent."""
    global _WORLD
    w = from_env(env)
    if not w.parallel or dist.is_initialized():
        _WORLD = w
        return w
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        rank=w.rank,
        world_size=w.size,
        # rank 0 alone prunes, evaluates and saves while the others wait at their next
        # collective; a metric search or a pruning sweep can take longer than the default 30 min
        timeout=datetime.timedelta(hours=3),
    )
    _WORLD = w
    return w


def teardown() -> None:
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = SINGLE


def training_device(name: str, w: World) -> str:
    """``device`` for rank ``w``: each rank its own GPU (``cuda:LOCAL_RANK``)."""
    if w.parallel and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{w.local_rank}"
    return name


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of rank ``rank``'s contiguous part of a batch of ``n``; the parts differ by
    at most one example, larger first (as ``torch.tensor_split``)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _map_tensors(v, fn)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        mapped = [_map_tensors(v, fn) for v in obj]
        return type(obj)(mapped) if isinstance(obj, list) else tuple(mapped)
    return obj


def broadcast_object(obj: Any, device: torch.device) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` of the other ranks is ignored), its tensors on
    ``device``. Tensors travel through the CPU: pickled CUDA tensors would land on rank 0's GPU."""
    box = [_map_tensors(obj, lambda t: t.detach().cpu()) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return _map_tensors(box[0], lambda t: t.to(device))


def all_reduce_sum(values: list[Tensor]) -> list[Tensor]:
    """Element-wise sums over the ranks of same-shaped scalars, in one collective."""
    flat = torch.stack([v.double() for v in values])
    dist.all_reduce(flat)
    return list(flat.unbind())
