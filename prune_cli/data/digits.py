"""The digits: 1,797 real 8x8 grey images of handwritten digits, shipped in the package.

The default dataset: it needs no download, so the demonstration runs anywhere. There is no
official test split: ``dataset.test_size`` of the images are held out with ``split_seed``.

The data are the test set of the UCI "Optical Recognition of Handwritten Digits" set
(E. Alpaydin and C. Kaynak, 1998; https://archive.ics.uci.edu/dataset/80, licensed CC BY 4.0),
the same 1,797 images, in the same order, as scikit-learn's ``load_digits``: 32x32 bitmaps of 43
writers counted in 4x4 blocks, so each pixel is 0..16. ``digits.npz`` holds them as uint8
(``images`` (1797, 8, 8), ``labels`` (1797,)), 45 kB compressed; ``digits.txt`` beside it gives
the source and licence. Shipping them (rather than reading scikit-learn's copy) takes
scikit-learn out of the dependencies; a test checks the arrays equal ``load_digits``'.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from prune_cli.data import (
    DatasetConfig,
    DatasetCorrupt,
    check_test_size,
    check_val_size,
    register_dataset,
)
from prune_cli.data.base import InMemoryData, carve_splits, split_indices
from prune_cli.spec import DataSpec

SHAPE = (1797, 8, 8)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 in 0..16, labels (1797,) int64), as ``load_digits`` has them."""
    path = resources.files(__package__) / "digits.npz"
    try:
        with resources.as_file(path) as file, np.load(file, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetCorrupt(
            f"digits: {path} is missing or unreadable ({type(exc).__name__}); reinstall prune-cli"
        ) from None
    if images.shape != SHAPE or labels.shape != SHAPE[:1]:
        raise DatasetCorrupt(f"digits: {path} holds arrays of other shapes; reinstall prune-cli")
    return images.astype(np.float64), labels.astype(np.int64)


@dataclass
class DigitsConfig(DatasetConfig):
    """Digits' settings: bundled, so no ``root``; no test split of its own, so ``test_size``."""

    #: test split held out of all the images (a fraction), seeded by ``split_seed``
    test_size: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_test_size(self.test_size)


@register_dataset("digits", DigitsConfig)
def digits(cfg: DigitsConfig, device: torch.device) -> InMemoryData:
    images, labels = _digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0,1]
    y = torch.tensor(labels, dtype=torch.long)
    rest, test = split_indices(len(y), cfg.test_size, cfg.split_seed)
    check_val_size("digits", cfg, len(rest))
    splits = carve_splits(
        (x[rest], y[rest]), (x[test], y[test]), cfg.val_size, cfg.split_seed + 1, cfg.limit_train
    )
    mean = float(x[rest].mean())
    std = float(x[rest].std())
    return InMemoryData(
        splits, DataSpec(1, 10, 8), [str(i) for i in range(10)], (mean,), (std,), device
    )
