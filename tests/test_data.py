"""Datasets: digits, and small files written in the real idx, CIFAR and ImageFolder formats."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prune_cli.cli import group_options
from prune_cli.data import DATASETS, DatasetConfig, build_dataset
from prune_cli.data.base import InMemoryData
from prune_cli.errors import DatasetNotFound
from prune_cli.spec import DataSpec

CPU = torch.device("cpu")


def test_digits_splits_are_disjoint_seeded_and_complete():
    data = build_dataset(DatasetConfig(name="digits", val_size=0.1, test_size=0.2), CPU)
    assert data.spec == DataSpec(1, 10, 8)
    sizes = {s: data.size(s) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == round(0.2 * 1797)
    assert sizes["val"] == round(0.1 * (1797 - sizes["test"]))
    rows = {s: {tuple(x.flatten().tolist()) for x, _ in data.batches(s, 10_000)} for s in sizes}
    # digits has a few duplicate images; allow those, but the splits are essentially disjoint
    assert len(rows["train"] & rows["test"]) < 5
    again = build_dataset(DatasetConfig(name="digits"), CPU)
    x1, _ = next(data.batches("val", 50))
    x2, _ = next(again.batches("val", 50))
    assert torch.equal(x1, x2)


def test_validation_size_as_a_count_and_limit_train():
    data = build_dataset(DatasetConfig(name="digits", val_size=100, limit_train=300), CPU)
    assert data.size("val") == 100
    assert data.size("train") == 300


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def make_idx_dataset(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), gz)
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(n_train) % 10, gz)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, gz)


@pytest.mark.parametrize(
    ("name", "folder", "gz"), [("mnist", "MNIST", True), ("fashion_mnist", "FashionMNIST", False)]
)
def test_idx_datasets_in_torchvision_layout(tmp_path, name, folder, gz):
    make_idx_dataset(tmp_path / folder / "raw", gz=gz)
    data = build_dataset(DatasetConfig(name=name, root=str(tmp_path), val_size=10), CPU)
    assert data.spec == DataSpec(1, 10, 28)
    assert (data.size("train"), data.size("val"), data.size("test")) == (50, 10, 20)
    x, y = next(data.batches("test", 20))
    assert x.shape == (20, 1, 28, 28) and y.tolist() == [i % 10 for i in range(20)]
    if name == "fashion_mnist":
        assert data.class_names[9] == "Ankle boot"


def test_missing_dataset_names_where_it_looked(tmp_path):
    with pytest.raises(DatasetNotFound, match=str(tmp_path / "MNIST" / "raw")):
        build_dataset(DatasetConfig(name="mnist", root=str(tmp_path)), CPU)
    with pytest.raises(DatasetNotFound, match="download=true"):
        build_dataset(DatasetConfig(name="cifar10", root=str(tmp_path)), CPU)
    with pytest.raises(DatasetNotFound, match=r"image-net\.org"):
        build_dataset(DatasetConfig(name="imagenet", root=str(tmp_path)), CPU)


def write_cifar(root: Path, hundred: bool, per_file: int = 12) -> None:
    rng = np.random.default_rng(1)
    if hundred:
        base = root / "cifar-100-python"
        files, key, classes = ["train", "test"], b"fine_labels", 100
        meta = ("meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    else:
        base = root / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        key, classes = b"labels", 10
        meta = ("batches.meta", {b"label_names": [f"k{i}".encode() for i in range(10)]})
    base.mkdir(parents=True)
    for f in files:
        batch = {
            b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            key: list(rng.integers(0, classes, per_file)),
        }
        with open(base / f, "wb") as fh:
            pickle.dump(batch, fh)
    with open(base / meta[0], "wb") as fh:
        pickle.dump(meta[1], fh)


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickles(tmp_path, hundred):
    write_cifar(tmp_path, hundred)
    name = "cifar100" if hundred else "cifar10"
    data = build_dataset(DatasetConfig(name=name, root=str(tmp_path), val_size=4), CPU)
    train_files = 1 if hundred else 5
    assert data.size("train") + data.size("val") == 12 * train_files
    assert data.size("test") == 12
    assert data.spec == DataSpec(3, 100 if hundred else 10, 32)
    assert data.class_names[1] == ("c1" if hundred else "k1")
    x, _ = next(
        data.batches(
            "train", 8, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0)
        )
    )
    assert x.shape == (8, 3, 32, 32)


def test_crop_and_flip_produce_windows_of_the_padded_image():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(6)
    splits = {s: (images, labels) for s in ("train", "val", "test")}
    data = InMemoryData(
        splits,
        DataSpec(3, 6, 8),
        list("abcdef"),
        (0.0,) * 3,
        (1.0,) * 3,
        CPU,
        crop_padding=2,
        flip=True,
    )
    gen = torch.Generator().manual_seed(5)
    ((x, y),) = list(data.batches("train", 6, augment=True, generator=gen))
    padded = torch.nn.functional.pad(images.float() / 255.0, (2, 2, 2, 2))
    for img, label in zip(x, y, strict=True):
        src = padded[label]
        windows = [src[:, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        windows += [w.flip(2) for w in windows]
        assert any(torch.allclose(img, w) for w in windows)
    # the same generator seed gives the same batch
    ((x2, _),) = list(
        data.batches("train", 6, augment=True, generator=torch.Generator().manual_seed(5))
    )
    assert torch.equal(x, x2)


def test_imagenet_folders(tmp_path):
    rng = np.random.default_rng(2)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("n01", "n02"):
            d = tmp_path / "imagenet" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    d / f"{i}.png"
                )
    cfg = DatasetConfig(
        name="imagenet", root=str(tmp_path), val_size=2, image_size=32, num_workers=0
    )
    data = build_dataset(cfg, CPU)
    assert data.spec == DataSpec(3, 2, 32)
    assert (data.size("train"), data.size("val"), data.size("test")) == (10, 2, 4)
    x, y = next(
        data.batches(
            "train", 4, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0)
        )
    )
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.long
    x, _ = next(data.batches("test", 4))
    assert x.shape == (4, 3, 32, 32)


def test_every_dataset_has_a_config_and_every_config_a_dataset():
    assert group_options("dataset") == DATASETS.names()
