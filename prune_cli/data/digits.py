"""scikit-learn's digits: 1,797 real 8x8 grey images of handwritten digits, bundled in the wheel.

The default dataset: it needs no download, so the demonstration runs anywhere. There is no
official test split: ``dataset.test_size`` of the images are held out with ``split_seed``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from prune_cli.data import DATASETS, DatasetConfig, check_val_size
from prune_cli.data.base import InMemoryData, carve_splits, split_indices
from prune_cli.spec import DataSpec


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8), labels) read straight from the CSV that scikit-learn ships.

    Importing ``sklearn.datasets`` costs 1-2 s (it pulls in most of scikit-learn) for a 1,797-row
    file; locating the package without importing it and reading the file takes milliseconds.
    ``load_digits`` reads the same file, so the arrays are identical (tested).
    """
    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", dtype=np.float64)
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # another layout: the slow, general way

    bunch = load_digits()
    return bunch.images, bunch.target


@DATASETS.register("digits")
def digits(cfg: DatasetConfig, device: torch.device) -> InMemoryData:
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
