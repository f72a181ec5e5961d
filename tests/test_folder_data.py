"""dataset=folder: image folders of any size in either layout, the ImageNet loader's one-line
errors, and a data identity that keeps different folders out of each other's run directory."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, compose_config, run_config
from PIL import Image

from prune_cli.config import config_hash
from prune_cli.data import DatasetConfig, build_dataset, data_identity, dataset_config
from prune_cli.errors import UserError
from prune_cli.experiment import Experiment
from prune_cli.spec import DataSpec

CPU = torch.device("cpu")


def write_images(folder: Path, classes: dict[str, int], seed: int = 0) -> None:
    """``classes[name]`` PNGs of varying sizes (20 to 40 pixels, grey or colour) per class."""
    rng = np.random.default_rng(seed)
    for cls, n in classes.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = rng.integers(20, 41, 2)
            shape = (h, w) if i % 3 == 0 else (h, w, 3)  # grey images become RGB
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / cls / f"{i}.png")


def folder_config(root: Path, **extra: object) -> DatasetConfig:
    settings = {"val_size": 3, "test_size": 0.2, "image_size": 16, "num_workers": 0, **extra}
    return dataset_config(name="folder", root=str(root), **settings)


def test_one_folder_of_class_folders_holds_out_a_seeded_test_split(tmp_path):
    write_images(tmp_path / "pets", {"cat": 10, "dog": 10, "eel": 10})
    data = build_dataset(folder_config(tmp_path / "pets"), CPU)
    assert data.spec == DataSpec(3, 3, 16) and data.class_names == ["cat", "dog", "eel"]
    assert (data.size("train"), data.size("val"), data.size("test")) == (21, 3, 6)
    x, y = next(data.batches("train", 8, shuffle=True, augment=True, generator=torch.Generator()))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.long
    test = torch.cat([x for x, _ in data.batches("test", 4)])
    again = build_dataset(folder_config(tmp_path / "pets"), CPU)
    assert torch.equal(test, torch.cat([x for x, _ in again.batches("test", 4)]))


def test_batches_are_normalised_on_the_device_as_torchvision_would(tmp_path):
    """Workers ship uint8 images; the device normalises them: the same values as
    ToTensor + Normalize in the workers (the usual pipeline), to float rounding."""
    from torchvision import transforms

    from prune_cli.data.imagenet import MEAN, STD, image_folder, transforms_for

    write_images(tmp_path / "pets", {"cat": 4, "dog": 4})
    data = build_dataset(folder_config(tmp_path / "pets", val_size=0), CPU)
    _, eval_tf = transforms_for(16, small=True)
    raw = image_folder("folder", tmp_path / "pets", eval_tf)
    x = torch.stack([raw[i][0] for i in range(len(raw))])
    assert x.dtype == torch.uint8  # what crosses from the workers to the device
    usual = transforms.Normalize(MEAN, STD)(x.float() / 255)
    torch.testing.assert_close(data.normalise(x), usual, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("test_folder", ["test", "val"])
def test_train_and_test_folders(tmp_path, test_folder):
    write_images(tmp_path / "d" / "train", {"a": 6, "b": 6})
    write_images(tmp_path / "d" / test_folder, {"a": 2, "b": 3}, seed=1)
    data = build_dataset(folder_config(tmp_path / "d", image_size=96), CPU)
    assert (data.size("train"), data.size("val"), data.size("test")) == (9, 3, 5)
    x, _ = next(data.batches("train", 4, augment=True, generator=torch.Generator()))
    assert x.shape == (4, 3, 96, 96)  # upscaled: any image size goes


def _missing(root: Path) -> str:
    return "is not a folder"


def _no_test_folder(root: Path) -> str:
    write_images(root / "train", {"a": 2, "b": 2})
    return "no test/ (or val/)"


def _one_class(root: Path) -> str:
    write_images(root, {"a": 4})
    return "needs at least 2"


def _other_test_classes(root: Path) -> str:
    write_images(root / "train", {"a": 2, "b": 2})
    write_images(root / "test", {"a": 1, "c": 1})
    return "differ (1 only in train/ (first: b); 1 only in test/ (first: c))"


def _empty_class(root: Path) -> str:
    write_images(root, {"a": 4, "b": 0})
    return "at least one image"


@pytest.mark.parametrize(
    "make", [_missing, _no_test_folder, _one_class, _other_test_classes, _empty_class]
)
def test_bad_folders_are_one_line_errors(tmp_path, make):
    root = tmp_path / "data"
    expected = make(root)
    with pytest.raises(UserError) as caught:
        build_dataset(folder_config(root), CPU)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


@contextlib.contextmanager
def no_worker_left() -> Iterator[None]:
    """The loader's workers have stopped once the block ends, with the garbage collector off
    meanwhile: left to a collection, their shutdown waited 5 s (torch's status interval) at some
    later moment of the process."""
    gc.collect()
    gc.disable()
    before = set(multiprocessing.active_children())
    try:
        yield
        assert set(multiprocessing.active_children()) <= before
    finally:
        gc.enable()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_that_is_not_an_image_is_named_in_one_line(tmp_path, workers):
    write_images(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG but not really")
    data = build_dataset(folder_config(tmp_path, val_size=0, num_workers=workers), CPU)
    with no_worker_left(), pytest.raises(UserError) as caught:
        for _ in data.batches("train", 16):
            pass
    message = str(caught.value)
    assert "broken.png is not a readable image" in message and "\n" not in message


def test_any_error_in_a_worker_stops_the_workers_with_it(tmp_path, monkeypatch):
    """A bug (not a corrupt file) raised in a worker keeps its traceback, and the workers stop
    with it, not in some later garbage collection."""
    from prune_cli.data import imagenet

    write_images(tmp_path, {"a": 3, "b": 3})
    data = build_dataset(folder_config(tmp_path, val_size=0, num_workers=1), CPU)

    def bug(self, path: str):
        raise RuntimeError("a transform's bug")

    monkeypatch.setattr(imagenet._Loader, "__call__", bug)  # the worker is forked after this
    with no_worker_left(), pytest.raises(RuntimeError, match="a transform's bug"):
        for _ in data.batches("train", 16):
            pass


def test_the_data_identity_follows_the_files_not_the_path(tmp_path):
    write_images(tmp_path / "a", {"x": 3, "y": 3})
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    write_images(tmp_path / "other", {"x": 3, "y": 2})

    def hash_of(folder: str) -> str:
        return config_hash(compose_config(["dataset=folder", f"dataset.root={tmp_path / folder}"]))

    assert hash_of("a") == hash_of("moved")  # where the files are does not change results
    assert hash_of("a") != hash_of("other")  # other files must not share a run directory
    before = data_identity("folder", str(tmp_path / "a"))
    write_images(tmp_path / "a", {"z": 1})
    assert data_identity("folder", str(tmp_path / "a")) != before
    assert data_identity("digits", "data") is None  # its name identifies it: hashes unchanged


def test_a_run_on_a_folder(tmp_path):
    write_images(tmp_path / "data", {"a": 12, "b": 12})
    cfg = run_config(
        [
            *FAST,
            "dataset=folder",
            f"dataset.root={tmp_path / 'data'}",
            "dataset.image_size=12",
            "dataset.num_workers=0",
            "dataset.val_size=4",
            "train.epochs=1",
            "method.levels=1",
        ]
    )
    summary = Experiment(cfg, tmp_path / "run").run()
    assert summary["status"] == "completed" and summary["dataset"] == "folder"
    assert summary["levels"][1]["sparsity"] == pytest.approx(0.9, abs=1e-3)
