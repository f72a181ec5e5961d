"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format (the python pickles of
Krizhevsky's site): ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` and
``<root>/cifar-100-python/{train,test,meta}``. The pickles are read directly (torchvision's
loader would reject anything but the full files by checksum); torchvision downloads them when
``dataset.download=true``. Augmentation: 4-pixel zero-padded random crop and horizontal flip.

The official format is a pickle, and ``pickle.load`` runs whatever a crafted file asks for. So
the files are read by ``SafeUnpickler``, which resolves only the few globals a CIFAR batch needs
(numpy's array and scalar reconstructors, ``numpy.dtype``, ``_codecs.encode`` for latin-1 bytes)
and refuses every other one, before anything is called. A file that is truncated, garbage, or
not a CIFAR batch (no ``data``, images and labels of different counts, labels out of range) is a
one-line ``DatasetCorrupt`` naming the file.
"""

from __future__ import annotations

import builtins
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prune_cli.data import DatasetCorrupt, FilesConfig, check_val_size, register_dataset
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


#: what to do about a broken file (torchvision re-downloads only when a file is missing)
REDOWNLOAD = "delete it and run again with dataset.download=true, or copy an intact file there"


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of bytes use it, limited to latin-1: a codec
    name from the file must not pick an arbitrary (for example compressing) codec."""
    # compared as text, not through codecs.lookup, which would import a codec module by a name
    # read from the file
    spelled = str(encoding).lower().replace("-", "").replace("_", "")
    if not isinstance(text, str) or spelled not in ("latin1", "iso88591", "l1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin-1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals a CIFAR pickle may name, keyed by (module, name) as written in the file.

    numpy's private reconstructors are taken from what numpy itself pickles (their module moved
    from ``numpy.core`` to ``numpy._core`` in numpy 2), so both spellings resolve without
    importing a module by a name read from the file.
    """
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
    scalar = np.int64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    # plain containers are pickled with opcodes; these names appear only in unusual writers
    # (``__builtin__`` is Python 2's spelling)
    for name in ("dict", "list", "str", "bytes", "int"):
        allowed[("builtins", name)] = allowed[("__builtin__", name)] = getattr(builtins, name)
    return allowed


ALLOWED_GLOBALS = _allowed_globals()


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside ``ALLOWED_GLOBALS``."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``ALLOWED_GLOBALS``: a pickle that names anything else
    (``os.system``, ``builtins.eval``, a class with a ``__reduce__``) fails before any call."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


def safe_unpickle(path: Path) -> Any:
    """Load a CIFAR python-format pickle without running code from it; one-line errors."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetCorrupt(
            f"{path} cannot be read ({type(exc).__name__}: {exc.strerror or exc}); {REDOWNLOAD}"
        ) from None
    try:
        # encoding="bytes": the official files are Python 2 pickles whose str keys become bytes
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RefusedGlobal as exc:
        raise DatasetCorrupt(
            f"{path} is not a CIFAR batch: it names {exc}, which a CIFAR pickle never needs, so "
            "it was not loaded (it may be crafted to run code); delete it and get CIFAR from its "
            "official source (dataset.download=true)"
        ) from None
    except pickle.UnpicklingError as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DatasetCorrupt(f"{path} is not a readable pickle ({detail}); {REDOWNLOAD}") from None
    except EOFError:
        raise DatasetCorrupt(f"{path} is truncated; {REDOWNLOAD}") from None
    except Exception as exc:  # garbage bytes fail in many ways (ValueError, KeyError, ...)
        raise DatasetCorrupt(
            f"{path} is not a readable pickle ({type(exc).__name__}); {REDOWNLOAD}"
        ) from None


def _by_bytes(batch: Any, path: Path) -> dict[bytes, Any]:
    """The batch dict with bytes keys (Python 3 writers use str keys; accept both)."""
    if not isinstance(batch, dict):
        raise DatasetCorrupt(
            f"{path} holds a {type(batch).__name__}, not a CIFAR batch (a dict); {REDOWNLOAD}"
        )
    return {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}


def _read(
    files: list[Path], label_key: bytes, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for f in files:
        batch = _by_bytes(safe_unpickle(f), f)
        missing = [k.decode() for k in (b"data", label_key) if k not in batch]
        if missing:
            raise DatasetCorrupt(f"{f} lacks {' and '.join(missing)}; {REDOWNLOAD}")
        try:
            x = np.asarray(batch[b"data"])
            y = np.asarray(batch[label_key])
        except Exception as exc:  # ragged lists and the like
            raise DatasetCorrupt(
                f"{f} holds malformed arrays ({type(exc).__name__}); {REDOWNLOAD}"
            ) from None
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
            raise DatasetCorrupt(
                f"{f} holds data of shape {x.shape} and type {x.dtype}, expected uint8 rows of "
                f"3072 pixels; {REDOWNLOAD}"
            )
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DatasetCorrupt(f"{f} holds labels that are not a list of integers; {REDOWNLOAD}")
        if len(x) != len(y):
            raise DatasetCorrupt(f"{f} holds {len(x)} images but {len(y)} labels; {REDOWNLOAD}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DatasetCorrupt(
                f"{f} holds label {int(y.max()) if y.max() >= num_classes else int(y.min())}, "
                f"expected 0..{num_classes - 1}; {REDOWNLOAD}"
            )
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y.astype(np.int64))
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    if len(y_all) == 0:
        raise DatasetCorrupt(f"{', '.join(map(str, files))} hold no examples; {REDOWNLOAD}")
    return torch.from_numpy(x_all), torch.from_numpy(y_all)


def _class_names(meta_path: Path, names_key: bytes, num_classes: int) -> list[str]:
    """Class names from the meta file; numbers when it is missing."""
    if not meta_path.is_file():
        return [str(i) for i in range(num_classes)]
    names = _by_bytes(safe_unpickle(meta_path), meta_path).get(names_key)
    if not isinstance(names, list) or len(names) != num_classes:
        raise DatasetCorrupt(
            f"{meta_path} lacks a list of {num_classes} {names_key.decode()}; {REDOWNLOAD}"
        )
    return [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]


@dataclass
class CifarConfig(FilesConfig):
    """CIFAR's settings."""

    #: 5,000 of the 50,000 training images validate, the usual split for CIFAR
    val_size: float = 5000
    #: download the python version when it is missing and a network is there
    download: bool = False
    #: the standard augmentation (4-pixel padded crop and horizontal flip) on training batches
    augment: bool = True


def _load(name: str, cfg: CifarConfig, device: torch.device) -> InMemoryData:
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
    num_classes = 10 if name == "cifar10" else 100
    train = _read([base / f for f in train_files], label_key, num_classes)
    test = _read([base / f for f in test_files], label_key, num_classes)
    class_names = _class_names(base / meta, names_key, num_classes)
    check_val_size(name, cfg, len(train[1]))
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


@register_dataset("cifar10", CifarConfig)
def cifar10(cfg: CifarConfig, device: torch.device) -> InMemoryData:
    return _load("cifar10", cfg, device)


@register_dataset("cifar100", CifarConfig)
def cifar100(cfg: CifarConfig, device: torch.device) -> InMemoryData:
    return _load("cifar100", cfg, device)
