"""Dataset registry and the dataset settings.

``build_dataset(cfg, device)`` is the one factory. Datasets that fit in memory (digits, the MNIST
family, CIFAR) are held as tensors on the training device and augmented there in batches;
ImageNet and image folders (``folder``) stream through a DataLoader with workers. Both offer the
same ``batches`` interface.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import MISSING

from prune_cli.errors import ConfigError, DatasetNotFound
from prune_cli.registry import Registry, import_submodules
from prune_cli.spec import ImageData


@dataclass
class DatasetConfig:
    name: str = MISSING
    #: where the files are (or are downloaded to)
    root: str = "data"
    #: download when the files are missing and a network is there
    download: bool = False
    #: validation split carved from the training set: a fraction (< 1) or a count (>= 1)
    val_size: float = 0.1
    #: test split for datasets without one (digits): a fraction of all examples
    test_size: float = 0.2
    #: seed of the train/val (and digits' test) split; fixed across runs so methods compare fairly
    split_seed: int = 0
    #: standard augmentation of the dataset (CIFAR: padded crop and flip) on training batches
    augment: bool = True
    #: keep only this many training examples (quick runs); null keeps all
    limit_train: int | None = None
    #: ImageNet and folder only: training and evaluation image size, and DataLoader workers
    image_size: int = 224
    num_workers: int = 8
    #: what identifies the data in the config hash where the name does not (``dataset.root``
    #: is left out of the hash: where files are does not change results): for ``folder``, a
    #: digest of its files' names and sizes. Computed from name and root; not a setting
    data_id: str | None = "${prune_data_id:${.name},${.root}}"

    def __post_init__(self) -> None:
        self._check_data_id()
        for key in ("val_size", "test_size"):
            value = getattr(self, key)
            if not math.isfinite(value):
                raise ConfigError(f"dataset.{key} must be a finite number, got {value}")
        if self.val_size < 0:
            raise ConfigError(f"dataset.val_size must be >= 0, got {self.val_size}")
        if not 0.0 < self.test_size < 1.0:
            raise ConfigError(f"dataset.test_size must be in (0, 1), got {self.test_size}")
        if self.limit_train is not None and self.limit_train < 1:
            raise ConfigError(f"dataset.limit_train must be >= 1, got {self.limit_train}")

    def _check_data_id(self) -> None:
        if self.name == MISSING:
            return  # RunConfig's default instance: keep the interpolation for Hydra to resolve
        identity = data_identity(self.name, self.root)
        if self.data_id is None or self.data_id.startswith("${"):
            self.data_id = identity  # built in Python, not composed by Hydra
        elif self.data_id != identity:
            raise ConfigError(
                "dataset.data_id is computed from the dataset's files and cannot be set; set "
                "dataset.root instead"
            )


class DatasetCorrupt(DatasetNotFound):
    """A dataset file that is there but unreadable (truncated, garbage, inconsistent).

    A ``DatasetNotFound`` because the remedy is the same (get the files again), so a caller that
    handles missing files handles broken ones too.
    """


def holdout_count(holdout: float, n: int) -> int:
    """How many of ``n`` examples ``holdout`` (a fraction < 1 or a count >= 1) holds out.

    The same rule as ``base.split_indices``, which carves the split: checking here first turns
    its ValueError into a one-line error that names the setting.
    """
    return round(holdout * n) if holdout < 1 else int(holdout)


def check_val_size(name: str, cfg: DatasetConfig, n_train: int) -> None:
    """Refuse a ``dataset.val_size`` that would leave no training example."""
    count = holdout_count(cfg.val_size, n_train)
    if count >= n_train:
        raise ConfigError(
            f"{name}: dataset.val_size={cfg.val_size} holds out {count} of the {n_train} training "
            f"examples, leaving none to train on; set it to a count below {n_train} or a smaller "
            "fraction"
        )


DatasetBuilder = Callable[[DatasetConfig, torch.device], ImageData]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")
#: ``dataset.data_id`` of the datasets whose name does not identify their data: name -> function
#: of ``dataset.root``, registered beside the dataset (``@DATA_IDS.register("folder")``)
DATA_IDS: Registry[Callable[[str], str | None]] = Registry("dataset identity")


def data_identity(name: str, root: str) -> str | None:
    """``dataset.data_id`` (the ``prune_data_id`` resolver): None for datasets that their name
    identifies (digits, CIFAR, ImageNet...)."""
    return DATA_IDS.get(name)(root) if name in DATA_IDS else None


def build_dataset(cfg: DatasetConfig, device: torch.device) -> ImageData:
    return DATASETS.get(cfg.name)(cfg, device)


import_submodules(__name__)
