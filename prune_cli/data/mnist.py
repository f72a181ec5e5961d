"""MNIST and Fashion-MNIST from the standard idx files (LeCun's format, optionally gzipped).

Looked for, in order: ``<root>/<MNIST|FashionMNIST>/raw/`` (torchvision's layout),
``<root>/<name>/``, and for Fashion-MNIST the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``). Missing files are downloaded by torchvision when
``dataset.download=true`` and a network is there.

A file that is there but broken (truncated, not an idx file, images and labels of different
counts, labels outside 0..9) is a ``DatasetCorrupt`` error naming the file, never a traceback: the
header is checked against the payload before anything is reshaped.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prune_cli.data import DatasetCorrupt, FilesConfig, check_val_size, register_dataset
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


#: what to do about a broken file (torchvision downloads only the files that are missing)
REDOWNLOAD = "delete it and run again with dataset.download=true, or copy an intact file there"


def _broken(path: Path, what: str) -> DatasetCorrupt:
    return DatasetCorrupt(f"{path} {what}; {REDOWNLOAD}")


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """Read an idx file of unsigned bytes (magic: two zero bytes, type code 0x08, the number of
    dimensions; then one big-endian uint32 per dimension and the data).

    ``ndim``, when given, is the number of dimensions the caller needs (3 for images, 1 for
    labels). Any defect is a one-line ``DatasetCorrupt`` naming the file.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; EOF: cut gzip
        raise _broken(path, f"cannot be read ({type(exc).__name__}: {_first_line(exc)})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise _broken(path, "is not an idx file of unsigned bytes (bad magic number)")
    dims = data[3]
    if dims == 0 or (ndim is not None and dims != ndim):
        expected = f"{ndim}" if ndim is not None else "at least 1"
        raise _broken(path, f"has {dims} dimensions, expected {expected}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise _broken(path, f"is truncated ({len(data)} bytes, shorter than its header)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    expected_bytes = math.prod(shape)
    found = len(data) - header
    if found != expected_bytes:
        state = "truncated" if found < expected_bytes else "longer than its header says"
        raise _broken(
            path,
            f"is {state} (header: shape {'x'.join(map(str, shape))} = {expected_bytes} bytes of "
            f"data, found {found})",
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no detail"


def _read_split(name: str, images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, H, W) uint8, labels (N,) long) of one split, checked for consistency."""
    x = read_idx(images, ndim=3)
    y = read_idx(labels, ndim=1)
    if len(x) != len(y):
        raise DatasetCorrupt(
            f"{name}: {images} holds {len(x)} images but {labels} holds {len(y)} labels; "
            "delete both and run again with dataset.download=true, or copy intact files there"
        )
    if len(y) == 0:
        raise _broken(labels, "holds no examples")
    if x.shape[1] != x.shape[2]:
        raise _broken(images, f"holds {x.shape[1]}x{x.shape[2]} images, expected square ones")
    if int(y.max()) > 9:
        raise _broken(labels, f"holds label {int(y.max())}, expected 0..9")
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


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


@dataclass
class MnistConfig(FilesConfig):
    """The MNIST family's settings (no augmentation: none is standard for them)."""

    #: 5,000 of the 60,000 training images validate, the usual split for these sets
    val_size: float = 5000
    #: download the idx files when they are missing and a network is there
    download: bool = False


def _load(
    name: str,
    folder: str,
    cfg: MnistConfig,
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
    train = _read_split(name, files["train_x"], files["train_y"])
    test = _read_split(name, files["test_x"], files["test_y"])
    if train[0].shape[-1] != test[0].shape[-1]:
        raise DatasetCorrupt(
            f"{name}: {files['train_x']} holds {train[0].shape[-1]}-pixel images but "
            f"{files['test_x']} {test[0].shape[-1]}-pixel ones; delete the one that is not "
            "from this dataset and run again with dataset.download=true"
        )
    check_val_size(name, cfg, len(train[1]))
    splits = carve_splits(train, test, cfg.val_size, cfg.split_seed, cfg.limit_train)
    x = splits["train"][0].float() / 255.0
    size = int(train[0].shape[-1])
    return InMemoryData(
        splits, DataSpec(1, 10, size), class_names, (float(x.mean()),), (float(x.std()),), device
    )


@register_dataset("mnist", MnistConfig)
def mnist(cfg: MnistConfig, device: torch.device) -> InMemoryData:
    return _load(
        "mnist",
        "MNIST",
        cfg,
        device,
        [str(i) for i in range(10)],
        [],
        "put the four idx files there or pass dataset.download=true with a network",
    )


@register_dataset("fashion_mnist", MnistConfig)
def fashion_mnist(cfg: MnistConfig, device: torch.device) -> InMemoryData:
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
