"""scikit-learn's digits: 1,797 real 8x8 grey images of handwritten digits, bundled in the wheel.

The default dataset: it needs no download, so the demonstration runs anywhere. There is no
official test split: ``dataset.test_size`` of the images are held out with ``split_seed``.
"""

from __future__ import annotations

import torch

from prune_cli.data import DATASETS, DatasetConfig, check_val_size
from prune_cli.data.base import InMemoryData, carve_splits, split_indices
from prune_cli.spec import DataSpec


@DATASETS.register("digits")
def digits(cfg: DatasetConfig, device: torch.device) -> InMemoryData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0,1]
    y = torch.tensor(bunch.target, dtype=torch.long)
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
