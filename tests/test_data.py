"""Datasets: digits, and small files written in the real idx, CIFAR and ImageFolder formats."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prune_cli.config import group_options
from prune_cli.data import DATASETS, DatasetConfig, build_dataset, dataset_config
from prune_cli.data.base import InMemoryData
from prune_cli.data.cifar import SafeUnpickler, safe_unpickle
from prune_cli.errors import DatasetNotFound, UserError
from prune_cli.spec import DataSpec

CPU = torch.device("cpu")


def test_digits_splits_are_disjoint_seeded_and_complete():
    data = build_dataset(dataset_config(name="digits", val_size=0.1, test_size=0.2), CPU)
    assert data.spec == DataSpec(1, 10, 8)
    sizes = {s: data.size(s) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == round(0.2 * 1797)
    assert sizes["val"] == round(0.1 * (1797 - sizes["test"]))
    rows = {s: {tuple(x.flatten().tolist()) for x, _ in data.batches(s, 10_000)} for s in sizes}
    # digits has a few duplicate images; allow those, but the splits are essentially disjoint
    assert len(rows["train"] & rows["test"]) < 5
    again = build_dataset(dataset_config(name="digits"), CPU)
    x1, _ = next(data.batches("val", 50))
    x2, _ = next(again.batches("val", 50))
    assert torch.equal(x1, x2)


def test_validation_size_as_a_count_and_limit_train():
    data = build_dataset(dataset_config(name="digits", val_size=100, limit_train=300), CPU)
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
    data = build_dataset(dataset_config(name=name, root=str(tmp_path), val_size=10), CPU)
    assert data.spec == DataSpec(1, 10, 28)
    assert (data.size("train"), data.size("val"), data.size("test")) == (50, 10, 20)
    x, y = next(data.batches("test", 20))
    assert x.shape == (20, 1, 28, 28) and y.tolist() == [i % 10 for i in range(20)]
    if name == "fashion_mnist":
        assert data.class_names[9] == "Ankle boot"


def test_missing_dataset_names_where_it_looked(tmp_path):
    with pytest.raises(DatasetNotFound, match=str(tmp_path / "MNIST" / "raw")):
        build_dataset(dataset_config(name="mnist", root=str(tmp_path)), CPU)
    with pytest.raises(DatasetNotFound, match="download=true"):
        build_dataset(dataset_config(name="cifar10", root=str(tmp_path)), CPU)
    with pytest.raises(DatasetNotFound, match=r"image-net\.org"):
        build_dataset(dataset_config(name="imagenet", root=str(tmp_path)), CPU)


def write_cifar(root: Path, hundred: bool, per_file: int = 12, protocol: int = 4) -> None:
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
            pickle.dump(batch, fh, protocol=protocol)
    with open(base / meta[0], "wb") as fh:
        pickle.dump(meta[1], fh, protocol=protocol)


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickles(tmp_path, hundred):
    write_cifar(tmp_path, hundred)
    name = "cifar100" if hundred else "cifar10"
    data = build_dataset(dataset_config(name=name, root=str(tmp_path), val_size=4), CPU)
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


def write_image_folders(root: Path, layout: dict[str, dict[str, int]]) -> None:
    """Write ``layout[split][class]`` small PNG images to root/imagenet/<split>/<class>/."""
    rng = np.random.default_rng(2)
    for split, classes in layout.items():
        (root / "imagenet" / split).mkdir(parents=True, exist_ok=True)
        for cls, n in classes.items():
            d = root / "imagenet" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    d / f"{i}.png"
                )


def test_imagenet_folders(tmp_path):
    write_image_folders(tmp_path, {"train": {"n01": 6, "n02": 6}, "val": {"n01": 2, "n02": 2}})
    cfg = dataset_config(
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


# --- bad inputs: every one is a one-line UserError, never a traceback ---------------------------


def _cut(path: Path, keep: float) -> None:
    """Truncate a file to ``keep`` of its bytes (an interrupted download)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _raw(root: Path) -> Path:
    make_idx_dataset(root / "MNIST" / "raw", n_train=30, n_test=10, gz=False)
    return root / "MNIST" / "raw"


def _idx_truncated(root: Path) -> tuple[DatasetConfig, str]:
    _cut(_raw(root) / "train-images-idx3-ubyte", 0.5)
    return dataset_config(name="mnist", root=str(root)), "train-images-idx3-ubyte is truncated"


def _idx_truncated_gzip(root: Path) -> tuple[DatasetConfig, str]:
    make_idx_dataset(root / "MNIST" / "raw", n_train=30, n_test=10, gz=True)
    _cut(root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz", 0.6)  # the gzip stream ends early
    return dataset_config(name="mnist", root=str(root)), "t10k-images-idx3-ubyte.gz cannot be read"


def _idx_garbage(root: Path) -> tuple[DatasetConfig, str]:
    path = _raw(root) / "train-labels-idx1-ubyte"
    path.write_bytes(np.random.default_rng(3).integers(1, 256, 500, dtype=np.uint8).tobytes())
    return dataset_config(name="mnist", root=str(root)), "train-labels-idx1-ubyte is not an idx"


def _idx_not_gzip(root: Path) -> tuple[DatasetConfig, str]:
    raw = _raw(root)
    (raw / "train-labels-idx1-ubyte").unlink()
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"<html>404 Not Found</html>")
    return dataset_config(name="mnist", root=str(root)), "train-labels-idx1-ubyte.gz cannot be read"


def _idx_short_header(root: Path) -> tuple[DatasetConfig, str]:
    (_raw(root) / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0]))
    return dataset_config(name="mnist", root=str(root)), "shorter than its header"


def _idx_too_long(root: Path) -> tuple[DatasetConfig, str]:
    path = _raw(root) / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00" * 7)
    return dataset_config(name="mnist", root=str(root)), "longer than its header says"


def _idx_wrong_rank(root: Path) -> tuple[DatasetConfig, str]:
    raw = _raw(root)
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros((30, 2, 2)), gz=False)
    return dataset_config(name="mnist", root=str(root)), "has 3 dimensions, expected 1"


def _idx_count_mismatch(root: Path) -> tuple[DatasetConfig, str]:
    raw = _raw(root)
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(29) % 10, gz=False)
    return dataset_config(name="mnist", root=str(root)), "holds 30 images but"


def _idx_bad_label(root: Path) -> tuple[DatasetConfig, str]:
    raw = _raw(root)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(10, 12), gz=False)
    return dataset_config(name="mnist", root=str(root)), "holds label 12, expected 0..9"


def _cifar(root: Path, hundred: bool = False) -> Path:
    write_cifar(root, hundred, per_file=6)
    return root / ("cifar-100-python" if hundred else "cifar-10-batches-py")


def _dump(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj))


def _cifar_truncated(root: Path) -> tuple[DatasetConfig, str]:
    _cut(_cifar(root) / "data_batch_3", 0.5)
    return dataset_config(name="cifar10", root=str(root)), "data_batch_3 is"


def _cifar_garbage(root: Path) -> tuple[DatasetConfig, str]:
    path = _cifar(root, hundred=True) / "train"
    path.write_bytes(np.random.default_rng(4).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return dataset_config(name="cifar100", root=str(root)), "train is not a readable pickle"


def _cifar_empty_file(root: Path) -> tuple[DatasetConfig, str]:
    (_cifar(root) / "test_batch").write_bytes(b"")
    return dataset_config(name="cifar10", root=str(root)), "test_batch is truncated"


def _cifar_not_a_dict(root: Path) -> tuple[DatasetConfig, str]:
    _dump(_cifar(root) / "data_batch_1", [1, 2, 3])
    return dataset_config(name="cifar10", root=str(root)), "holds a list, not a CIFAR batch"


def _cifar_no_labels(root: Path) -> tuple[DatasetConfig, str]:
    _dump(_cifar(root) / "data_batch_2", {b"data": np.zeros((6, 3072), np.uint8)})
    return dataset_config(name="cifar10", root=str(root)), "data_batch_2 lacks labels"


def _cifar_count_mismatch(root: Path) -> tuple[DatasetConfig, str]:
    batch = {b"data": np.zeros((6, 3072), np.uint8), b"labels": [0] * 5}
    _dump(_cifar(root) / "data_batch_4", batch)
    return dataset_config(name="cifar10", root=str(root)), "holds 6 images but 5 labels"


def _cifar_bad_shape(root: Path) -> tuple[DatasetConfig, str]:
    batch = {b"data": np.zeros((6, 3000), np.uint8), b"labels": [0] * 6}
    _dump(_cifar(root) / "data_batch_5", batch)
    return dataset_config(name="cifar10", root=str(root)), "expected uint8 rows of 3072 pixels"


def _cifar_bad_label(root: Path) -> tuple[DatasetConfig, str]:
    batch = {b"data": np.zeros((6, 3072), np.uint8), b"fine_labels": [0, 1, 2, 3, 4, 100]}
    _dump(_cifar(root, hundred=True) / "test", batch)
    return dataset_config(name="cifar100", root=str(root)), "holds label 100, expected 0..99"


def _cifar_bad_meta(root: Path) -> tuple[DatasetConfig, str]:
    _cut(_cifar(root) / "batches.meta", 0.3)
    return dataset_config(name="cifar10", root=str(root)), "batches.meta is"


def _imagenet(root: Path, train: dict[str, int], val: dict[str, int]) -> DatasetConfig:
    write_image_folders(root, {"train": train, "val": val})
    return dataset_config(name="imagenet", root=str(root), image_size=16, num_workers=0)


def _imagenet_one_class(root: Path) -> tuple[DatasetConfig, str]:
    return _imagenet(root, {"n01": 3}, {"n01": 1}), "needs at least 2"


def _imagenet_empty_val(root: Path) -> tuple[DatasetConfig, str]:
    return _imagenet(root, {"n01": 3, "n02": 3}, {}), "val holds no class folders"


def _imagenet_other_val_classes(root: Path) -> tuple[DatasetConfig, str]:
    cfg = _imagenet(root, {"n01": 3, "n02": 3}, {"n01": 1, "n03": 1})
    return cfg, "1 only in train/ (first: n02); 1 only in val/ (first: n03)"


def _imagenet_empty_class(root: Path) -> tuple[DatasetConfig, str]:
    return _imagenet(root, {"n01": 3, "n02": 0}, {"n01": 1, "n02": 1}), "at least one image"


def _val_size_mnist(root: Path) -> tuple[DatasetConfig, str]:
    _raw(root)
    return dataset_config(name="mnist", root=str(root), val_size=30), "holds out 30 of the 30"


def _val_size_fraction_cifar(root: Path) -> tuple[DatasetConfig, str]:
    _cifar(root)  # 30 training examples; 0.99 of them rounds to all 30
    return dataset_config(name="cifar10", root=str(root), val_size=0.99), "holds out 30 of the 30"


def _val_size_digits(root: Path) -> tuple[DatasetConfig, str]:
    return dataset_config(name="digits", val_size=5000), "holds out 5000 of the 1438"


def _val_size_imagenet(root: Path) -> tuple[DatasetConfig, str]:
    cfg = _imagenet(root, {"n01": 2, "n02": 2}, {"n01": 1, "n02": 1})
    cfg.val_size = 4
    return cfg, "holds out 4 of the 4"


BAD_INPUTS = {
    f.__name__.lstrip("_"): f
    for f in (
        _idx_truncated,
        _idx_truncated_gzip,
        _idx_garbage,
        _idx_not_gzip,
        _idx_short_header,
        _idx_too_long,
        _idx_wrong_rank,
        _idx_count_mismatch,
        _idx_bad_label,
        _cifar_truncated,
        _cifar_garbage,
        _cifar_empty_file,
        _cifar_not_a_dict,
        _cifar_no_labels,
        _cifar_count_mismatch,
        _cifar_bad_shape,
        _cifar_bad_label,
        _cifar_bad_meta,
        _imagenet_one_class,
        _imagenet_empty_val,
        _imagenet_other_val_classes,
        _imagenet_empty_class,
        _val_size_mnist,
        _val_size_fraction_cifar,
        _val_size_digits,
        _val_size_imagenet,
    )
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_data_is_a_one_line_user_error(tmp_path, case):
    cfg, expected = BAD_INPUTS[case](tmp_path)
    with pytest.raises(UserError) as info:
        build_dataset(cfg, CPU)
    message = str(info.value)
    assert "\n" not in message and expected in message, message
    # a file's defect names the file and says what to do; a bad setting names the setting
    assert any(hint in message for hint in ("delete", "dataset.val_size", "folder", "image")), (
        message
    )


def _malicious(marker: Path) -> bytes:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    return pickle.dumps({b"data": Payload(), b"labels": [0]})


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    control = tmp_path / "control"
    pickle.loads(_malicious(control))  # the payload does run under plain pickle
    assert control.exists()
    marker = tmp_path / "marker"
    base = _cifar(tmp_path)
    (base / "data_batch_1").write_bytes(_malicious(marker))
    with pytest.raises(UserError, match=r"data_batch_1 is not a CIFAR batch: it names (posix|os)"):
        build_dataset(dataset_config(name="cifar10", root=str(tmp_path)), CPU)
    assert not marker.exists()
    # other ways in are refused too: eval / exec, and a global hidden in the meta file
    for module, name in (("builtins", "eval"), ("builtins", "exec"), ("subprocess", "Popen")):
        with pytest.raises(pickle.UnpicklingError):
            SafeUnpickler(io.BytesIO(f"c{module}\n{name}\n.".encode())).load()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickles_of_every_protocol_load_safely(tmp_path, protocol):
    write_cifar(tmp_path, hundred=False, per_file=4, protocol=protocol)
    base = tmp_path / "cifar-10-batches-py"
    if protocol == 2:  # the official files were written by numpy 1.x: numpy.core, not numpy._core
        path = base / "test_batch"
        path.write_bytes(path.read_bytes().replace(b"cnumpy._core.", b"cnumpy.core."))
    expected = pickle.loads((base / "test_batch").read_bytes())
    data = build_dataset(dataset_config(name="cifar10", root=str(tmp_path), val_size=2), CPU)
    assert data.size("test") == 4 and data.class_names[2] == "k2"
    loaded = safe_unpickle(base / "test_batch")
    assert np.array_equal(loaded[b"data"], expected[b"data"])
    assert [int(v) for v in loaded[b"labels"]] == [int(v) for v in expected[b"labels"]]


def test_cifar_pickles_with_str_keys_load(tmp_path):
    write_cifar(tmp_path, hundred=True, per_file=4)
    base = tmp_path / "cifar-100-python"
    for f in ("train", "test", "meta"):
        batch = pickle.loads((base / f).read_bytes())
        _dump(base / f, {k.decode(): v for k, v in batch.items()})
    data = build_dataset(dataset_config(name="cifar100", root=str(tmp_path), val_size=1), CPU)
    assert data.size("train") == 3 and data.class_names[5] == "c5"


def test_digits_ship_with_the_package_and_equal_scikit_learns():
    """The shipped arrays are scikit-learn's ``load_digits`` exactly (skipped without it)."""
    from prune_cli.data.digits import _digits_arrays

    images, labels = _digits_arrays()
    assert images.shape == (1797, 8, 8) and images.min() == 0 and images.max() == 16
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    bunch = sklearn_datasets.load_digits()
    assert images.dtype == bunch.images.dtype and labels.dtype == bunch.target.dtype
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)
