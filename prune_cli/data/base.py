"""Dataset interface and the in-memory implementation with batched, on-device augmentation.

Why in memory: the MNIST family, digits and CIFAR are at most 150 MB as uint8. Holding them on the
training device and cropping, flipping and normalising whole batches there replaces a per-sample
Python DataLoader, which is the bottleneck for small networks (see docs/BENCHMARKS.md).
Randomness (shuffling, crop offsets, flips) comes from a CPU ``torch.Generator`` that the caller
seeds per epoch, so a resumed run sees the same batches as an uninterrupted one, on any device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from prune_cli.spec import Batch, DataSpec, ImageData


def split_indices(n: int, holdout: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded (keep, holdout) index split; ``holdout`` is a fraction (< 1) or a count (>= 1)."""
    count = round(holdout * n) if holdout < 1 else int(holdout)
    if count >= n:
        raise ValueError(f"cannot hold out {count} of {n} examples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[count:].sort().values, perm[:count].sort().values


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

    def size(self, split: str) -> int:
        return int(self._y[split].numel())

    def _prepare(self, x: Tensor) -> Tensor:
        x = x.float()
        if self._x["train"].dtype == torch.uint8:
            x = x / 255.0
        return (x - self._mean) / self._std

    def _augment(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        n, _, h, w = x.shape
        if self.crop_padding:
            pad = self.crop_padding
            padded = F.pad(x, (pad, pad, pad, pad))  # zero padding after normalisation = mean
            dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=generator).to(x.device)
            dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=generator).to(x.device)
            rows = dy + torch.arange(h, device=x.device).view(1, h, 1)  # (N, H, 1)
            cols = dx + torch.arange(w, device=x.device).view(1, 1, w)  # (N, 1, W)
            batch = torch.arange(n, device=x.device).view(n, 1, 1)
            x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (N, C, H, W)
        if self.flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
            x = torch.where(flip, x.flip(3), x)
        return x.contiguous()

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        x_all, y_all = self._x[split], self._y[split]
        n = y_all.numel()
        order = (
            torch.randperm(n, generator=generator).to(self.device)
            if shuffle
            else torch.arange(n, device=self.device)
        )
        for b in range(self.num_batches(split, batch_size)):
            idx = order[b * batch_size : (b + 1) * batch_size]
            x = self._prepare(x_all[idx])
            if augment:
                x = self._augment(x, generator)
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
