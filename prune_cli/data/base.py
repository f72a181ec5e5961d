"""Dataset interface and the in-memory implementation with batched, on-device augmentation.

Why in memory: the MNIST family, digits and CIFAR are at most 150 MB as uint8. Holding them on the
training device and cropping, flipping and normalising whole batches there replaces a per-sample
Python DataLoader, which is the bottleneck for small networks (see docs/BENCHMARKS.md).

Randomness (shuffling, crop offsets, flips) comes from a CPU ``torch.Generator`` that the caller
seeds per epoch, so a resumed run sees the same batches as an uninterrupted one, on any device.
All of an epoch's random numbers are drawn when the epoch starts, in the order a batch-by-batch
draw would take them (so the batches are the same as ever), and reach the device in one
non-blocking copy from pinned memory: a blocking copy per step would make the CPU wait for the
GPU at every step, so that it could never queue the next steps' kernels ahead of time.

On CUDA, batches come out in the channels-last memory format that training uses there (the crop
is a gather over (N, H, W, C) anyway), so no layout copy is needed before the model.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from prune_cli.distributed import shard_bounds
from prune_cli.spec import Batch, DataSpec, ImageData


def split_indices(n: int, holdout: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded (keep, holdout) index split; ``holdout`` is a fraction (< 1) or a count (>= 1)."""
    count = round(holdout * n) if holdout < 1 else int(holdout)
    if count >= n:
        raise ValueError(f"cannot hold out {count} of {n} examples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[count:].sort().values, perm[:count].sort().values


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """Copy a CPU tensor to ``device``; to CUDA through pinned memory, without blocking the host
    (the caching host allocator keeps the pinned buffer alive until the copy has run)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class InMemoryData(ImageData):
    """Splits held as tensors on the device: uint8 (or float) images (N, C, H, W), long labels."""

    def __init__(
        self,
        splits: dict[str, tuple[Tensor, Tensor]],
        spec: DataSpec,
        class_names: list[str],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        crop_padding: int = 0,
        flip: bool = False,
    ) -> None:
        self.spec = spec
        self.class_names = class_names
        self.device = device
        self._x = {k: v[0].to(device) for k, v in splits.items()}
        self._y = {k: v[1].to(device=device, dtype=torch.long) for k, v in splits.items()}
        shape = (1, -1, 1, 1)
        self._mean = torch.tensor(mean, device=device).view(shape)
        self._std = torch.tensor(std, device=device).view(shape)
        self.crop_padding = crop_padding
        self.flip = flip
        #: layout of the batches: channels-last on CUDA (what training uses there); on the CPU
        #: the default layout, whose convolution kernels the CPU results were pinned with
        self.memory_format = (
            torch.channels_last if device.type == "cuda" else torch.contiguous_format
        )

    def size(self, split: str) -> int:
        return int(self._y[split].numel())

    def _prepare(self, x: Tensor) -> Tensor:
        # one kernel converts dtype and layout; the arithmetic below keeps the layout
        x = x.to(dtype=torch.float32, memory_format=self.memory_format)
        if self._x["train"].dtype == torch.uint8:
            x = x / 255.0
        return (x - self._mean) / self._std

    def _draw(self, sizes: list[int], generator: torch.Generator | None) -> Tensor | None:
        """(3, sum(sizes)) long: crop row offsets, column offsets and flips (0/1) of the epoch.

        Drawn batch by batch in the order the augmentation has always drawn them (per batch:
        rows, columns, flips), so that a given generator state gives the same batches as before.
        """
        pad = self.crop_padding
        if not (pad or self.flip):
            return None
        columns = []
        for n in sizes:
            zeros = torch.zeros(n, dtype=torch.long)
            dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator) if pad else zeros
            dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator) if pad else zeros
            flip = (torch.rand(n, generator=generator) < 0.5).long() if self.flip else zeros
            columns.append(torch.stack([dy, dx, flip]))
        return torch.cat(columns, dim=1)

    def _augment(self, x: Tensor, draws: Tensor) -> Tensor:
        """Padded random crop and horizontal flip as one gather; ``draws`` is (3, N)."""
        n, _, h, w = x.shape
        pad = self.crop_padding
        padded = F.pad(x, (pad, pad, pad, pad)) if pad else x  # zero after normalising = mean
        dy, dx, flip = (d.view(n, 1, 1) for d in draws)
        rows = dy + torch.arange(h, device=x.device).view(1, h, 1)  # (N, H, 1)
        j = torch.arange(w, device=x.device).view(1, 1, w)
        # a flipped crop reads column w - 1 - j of the crop where the plain one reads column j
        cols = dx + torch.where(flip.bool(), w - 1 - j, j)  # (N, 1, W)
        batch = torch.arange(n, device=x.device).view(n, 1, 1)
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (N, C, H, W)
        return x.contiguous(memory_format=self.memory_format)

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[Batch]:
        x_all, y_all = self._x[split], self._y[split]
        n = y_all.numel()
        count = self.num_batches(split, batch_size)
        if shuffle:
            order = to_device(torch.randperm(n, generator=generator), self.device)
        else:
            order = torch.arange(n, device=self.device)
        sizes = [min(batch_size, n - b * batch_size) for b in range(count)]
        draws = self._draw(sizes, generator) if augment else None
        if draws is not None:
            draws = to_device(draws, self.device)
        start = 0
        for b, size in enumerate(sizes):
            # a rank's part of the batch: every rank drew the same order and draws above
            lo, hi = (0, size) if shard is None else shard_bounds(size, *shard)
            idx = order[b * batch_size + lo : b * batch_size + hi]
            x = self._prepare(x_all[idx])
            if draws is not None:
                x = self._augment(x, draws[:, start + lo : start + hi])
            start += size
            yield x, y_all[idx]


def carve_splits(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    cfg_val_size: float,
    seed: int,
    limit_train: int | None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Train/val/test from a train and a test set: val is a seeded part of the training set."""
    x, y = train
    if cfg_val_size > 0:
        keep, val = split_indices(len(y), cfg_val_size, seed)
    else:
        keep, val = torch.arange(len(y)), torch.arange(0)
    if limit_train is not None:
        keep = keep[:limit_train]
    return {"train": (x[keep], y[keep]), "val": (x[val], y[val]), "test": test}
