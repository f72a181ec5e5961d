"""What the layers share about data: the ``DataSpec`` and the ``ImageData`` interface.

Datasets produce a ``DataSpec``; model builders take one. The training loop and the experiment
use datasets through ``ImageData`` alone. None of those packages imports another.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DataSpec:
    channels: int
    num_classes: int
    image_size: int  # height = width, in pixels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


Batch = tuple[Tensor, Tensor]


class ImageData(ABC):
    """Train / val / test splits of an image classification dataset."""

    spec: DataSpec
    class_names: list[str]

    @abstractmethod
    def size(self, split: str) -> int: ...

    @abstractmethod
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
        """Batches of (images (B, C, H, W) float normalised, labels (B,) long) on the device.

        ``shard=(rank, world)``: of each batch, only rank ``rank``'s contiguous part
        (``distributed.shard_bounds``), with the order and random draws of the whole batch.
        """

    def num_batches(self, split: str, batch_size: int) -> int:
        n = self.size(split)
        full, rest = divmod(n, batch_size)
        # A final training batch of one example is dropped: BatchNorm cannot train on it.
        return full + (1 if rest > 1 or (rest == 1 and split != "train") else 0)
