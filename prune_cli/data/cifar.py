"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format (the python pickles of
Krizhevsky's site): ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` and
``<root>/cifar-100-python/{train,test,meta}``. The pickles are read directly (torchvision's
loader would reject anything but the full files by checksum); torchvision downloads them when
``dataset.download=true``. Augmentation: 4-pixel zero-padded random crop and horizontal flip.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from prune_cli.data import DATASETS, DatasetConfig
from prune_cli.data.base import InMemoryData, carve_splits
from prune_cli.errors import DatasetNotFound
from prune_cli.spec import DataSpec

MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
LAYOUT = {
    # name: (folder, train files, test files, label key, meta file, class-name key, tv class)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
        "batches.meta",
        b"label_names",
        "CIFAR10",
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        ["test"],
        b"fine_labels",
        "meta",
        b"fine_label_names",
        "CIFAR100",
    ),
}


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="bytes")


def _read(files: list[Path], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for f in files:
        batch = _unpickle(f)
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _load(name: str, cfg: DatasetConfig, device: torch.device) -> InMemoryData:
    folder, train_files, test_files, label_key, meta, names_key, tv_class = LAYOUT[name]
    base = Path(cfg.root) / folder
    needed = [base / f for f in train_files + test_files]
    if not all(p.is_file() for p in needed) and cfg.download:
        import torchvision

        try:
            getattr(torchvision.datasets, tv_class)(cfg.root, download=True)
        except Exception as exc:
            raise DatasetNotFound(
                f"{name}: {base} is incomplete and the download failed ({type(exc).__name__}); "
                f"copy the python version of {name} there"
            ) from exc
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise DatasetNotFound(
            f"{name}: {base} lacks {', '.join(missing)}; pass dataset.download=true with a "
            "network, or set dataset.root to the folder that holds " + folder
        )
    train = _read([base / f for f in train_files], label_key)
    test = _read([base / f for f in test_files], label_key)
    num_classes = 10 if name == "cifar10" else 100
    meta_path = base / meta
    if meta_path.is_file():
        class_names = [n.decode() for n in _unpickle(meta_path)[names_key]]
    else:
        class_names = [str(i) for i in range(num_classes)]
    splits = carve_splits(train, test, cfg.val_size, cfg.split_seed, cfg.limit_train)
    aug = cfg.augment
    return InMemoryData(
        splits,
        DataSpec(3, num_classes, 32),
        class_names,
        MEAN[name],
        STD[name],
        device,
        crop_padding=4 if aug else 0,
        flip=aug,
    )


@DATASETS.register("cifar10")
def cifar10(cfg: DatasetConfig, device: torch.device) -> InMemoryData:
    return _load("cifar10", cfg, device)


@DATASETS.register("cifar100")
def cifar100(cfg: DatasetConfig, device: torch.device) -> InMemoryData:
    return _load("cifar100", cfg, device)
