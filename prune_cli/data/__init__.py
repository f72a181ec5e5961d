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
from typing import Any

import torch
from omegaconf import MISSING

from prune_cli.errors import ConfigError, DatasetNotFound
from prune_cli.registry import Registry, import_submodules
from prune_cli.spec import ImageData


@dataclass
class DatasetConfig:
    """The settings every dataset reads. Each dataset extends this with the settings it reads
    itself (its dataclass, registered with its builder: :func:`register_dataset`), so a setting that
    does not apply to a dataset is neither shown for it nor accepted (``dataset.image_size``
    with digits fails when the config is composed)."""

    name: str = MISSING
    #: validation split carved from the training set: a fraction (< 1) or a count (>= 1)
    val_size: float = 0.1
    #: seed of the train/val (and test, where a dataset has no test split) split; fixed across
    #: runs so methods compare fairly
    split_seed: int = 0
    #: keep only this many training examples (quick runs); null keeps all
    limit_train: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.val_size):
            raise ConfigError(f"dataset.val_size must be a finite number, got {self.val_size}")
        if self.val_size < 0:
            raise ConfigError(f"dataset.val_size must be >= 0, got {self.val_size}")
        if self.limit_train is not None and self.limit_train < 1:
            raise ConfigError(f"dataset.limit_train must be >= 1, got {self.limit_train}")


@dataclass
class FilesConfig(DatasetConfig):
    """A dataset read from files under ``root`` (every dataset but the bundled digits)."""

    #: where the files are (or are downloaded to); not in the config hash
    root: str = "data"


def check_test_size(value: float) -> None:
    """``dataset.test_size``, for datasets without a test split of their own."""
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ConfigError(f"dataset.test_size must be in (0, 1), got {value}")


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


DatasetBuilder = Callable[[Any, torch.device], ImageData]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")
#: each dataset's settings dataclass, registered with its builder by :func:`register_dataset`
DATASET_CONFIGS: Registry[type[DatasetConfig]] = Registry("dataset")
#: ``dataset.data_id`` of the datasets whose name does not identify their data: name -> function
#: of ``dataset.root``, registered beside the dataset (``@DATA_IDS.register("folder")``)
DATA_IDS: Registry[Callable[[str], str | None]] = Registry("dataset identity")


def register_dataset(
    name: str, config: type[DatasetConfig]
) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register a dataset's builder under ``name`` with the dataclass of its settings."""

    def decorate(builder: DatasetBuilder) -> DatasetBuilder:
        DATASET_CONFIGS.register(name)(config)
        return DATASETS.register(name)(builder)

    return decorate


def dataset_config(name: str, **settings: Any) -> DatasetConfig:
    """The settings of dataset ``name`` (its own dataclass), for use from Python."""
    return DATASET_CONFIGS.get(name)(name=name, **settings)


def data_identity(name: str, root: str) -> str | None:
    """``dataset.data_id`` (the ``prune_data_id`` resolver): None for datasets that their name
    identifies (digits, CIFAR, ImageNet...)."""
    return DATA_IDS.get(name)(root) if name in DATA_IDS else None


def build_dataset(cfg: DatasetConfig, device: torch.device) -> ImageData:
    expected = DATASET_CONFIGS.get(cfg.name)
    if not isinstance(cfg, expected):
        raise ConfigError(
            f"{cfg.name} takes its settings as {expected.__name__}, got {type(cfg).__name__}; "
            f"build them with dataset_config({cfg.name!r}, ...)"
        )
    return DATASETS.get(cfg.name)(cfg, device)


import_submodules(__name__)
