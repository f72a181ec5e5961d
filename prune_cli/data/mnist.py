"""MNIST and Fashion-MNIST from the standard idx files (LeCun's format, optionally gzipped).

Looked for, in order: ``<root>/<MNIST|FashionMNIST>/raw/`` (torchvision's layout),
``<root>/<name>/``, and for Fashion-MNIST the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``). Missing files are downloaded by torchvision when
``dataset.download=true`` and a network is there.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from prune_cli.data import DATASETS, DatasetConfig
from prune_cli.data.base import InMemoryData, carve_splits
from prune_cli.errors import DatasetNotFound
from prune_cli.spec import DataSpec

FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (magic: two zero bytes, a type code, the number of dimensions)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return array.reshape(shape)


def _find(dirs: list[Path]) -> dict[str, Path] | None:
    for d in dirs:
        found = {}
        for key, stem in FILES.items():
            for candidate in (d / stem, d / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(FILES):
            return found
    return None


def _load(
    name: str,
    folder: str,
    cfg: DatasetConfig,
    device: torch.device,
    class_names: list[str],
    extra_dirs: list[Path],
    hint: str,
) -> InMemoryData:
    root = Path(cfg.root)
    dirs = [root / folder / "raw", root / name, *extra_dirs]
    files = _find(dirs)
    if files is None and cfg.download:
        import torchvision

        try:
            getattr(torchvision.datasets, folder)(str(root), download=True)
        except Exception as exc:  # no network, mirror down: say so in one line below
            raise DatasetNotFound(
                f"{name}: files not found in {', '.join(map(str, dirs))} and the download failed "
                f"({type(exc).__name__}); {hint}"
            ) from exc
        files = _find(dirs)
    if files is None:
        raise DatasetNotFound(f"{name}: idx files not found in {', '.join(map(str, dirs))}; {hint}")
    arrays = {k: torch.from_numpy(read_idx(p).copy()) for k, p in files.items()}
    train = (arrays["train_x"].unsqueeze(1), arrays["train_y"].long())
    test = (arrays["test_x"].unsqueeze(1), arrays["test_y"].long())
    splits = carve_splits(train, test, cfg.val_size, cfg.split_seed, cfg.limit_train)
    x = splits["train"][0].float() / 255.0
    size = int(train[0].shape[-1])
    return InMemoryData(
        splits, DataSpec(1, 10, size), class_names, (float(x.mean()),), (float(x.std()),), device
    )


@DATASETS.register("mnist")
def mnist(cfg: DatasetConfig, device: torch.device) -> InMemoryData:
    return _load(
        "mnist",
        "MNIST",
        cfg,
        device,
        [str(i) for i in range(10)],
        [],
        "put the four idx files there or pass dataset.download=true with a network",
    )


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg: DatasetConfig, device: torch.device) -> InMemoryData:
    return _load(
        "fashion_mnist",
        "FashionMNIST",
        cfg,
        device,
        FASHION_CLASSES,
        [DEBIAN_FASHION],
        "install it with 'apt-get install dataset-fashion-mnist' or pass "
        "dataset.download=true with a network",
    )
