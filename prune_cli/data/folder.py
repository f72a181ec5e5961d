"""Image folders of your own, at any image size: ``dataset=folder dataset.root=PATH``.

Two layouts, class per subfolder (any image format PIL reads; images become RGB):

- ``PATH/train/<class>/<image>`` and ``PATH/test/<class>/<image>`` (or ``val/`` for the test
  split, as ImageNet ships it): the test folder is the test split;
- ``PATH/<class>/<image>``: ``dataset.test_size`` of the images are held out as the test split,
  seeded by ``dataset.split_seed`` (as for digits).

Either way the validation split that chooses checkpoints is ``dataset.val_size`` of the training
images. Images are resized to ``dataset.image_size`` (set it to your images' size: 32 for
CIFAR-like images; 224 by default); under 64 pixels they are resized, centre-cropped and trained
with a padded crop and flip, from 64 up with ImageNet's random resized crops. Normalised with
ImageNet's mean and std, which pretrained weights expect. The folders stream through a
DataLoader with ``dataset.num_workers`` workers, so a folder of any number of images works.

The same checks as ImageNet's, each a one-line error: a missing folder, fewer than two classes,
test classes other than the training ones, a class without images, a file that is not an image.

The run's hash covers the data through ``dataset.data_id``: a digest of the files' paths
(relative to the root) and sizes, so folders of different files do not share a run directory,
and the same folder moved elsewhere keeps its runs. (Files rewritten in place with the same
names and sizes are not noticed: that would take reading every image.)
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING

from prune_cli.data import DATA_IDS, check_test_size, data_identity, register_dataset
from prune_cli.data.imagenet import ImageNetConfig, StreamingImageData
from prune_cli.errors import ConfigError, DatasetNotFound

#: folders that hold the test split beside train/, in order of preference
TEST_FOLDERS = ("test", "val")


def _layout(root: Path) -> tuple[Path, Path | None]:
    """(training folder, test folder or None) of ``root``."""
    if (root / "train").is_dir():
        for name in TEST_FOLDERS:
            if (root / name).is_dir():
                return root / "train", root / name
        raise DatasetNotFound(
            f"folder: {root} has train/ but no test/ (or val/) beside it; add one with the same "
            "class folders, or put the class folders directly in the root to hold out "
            "dataset.test_size of the images"
        )
    return root, None


def _walk(root: str) -> Iterator[tuple[str, list[str]]]:
    """(folder, its files) under ``root`` in sorted order, hidden files and folders left out."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, sorted(f for f in filenames if not f.startswith("."))


@functools.lru_cache(maxsize=8)
def _digest(root: str, directories: tuple[tuple[str, int], ...]) -> str:
    """SHA-256 of the relative paths and sizes of the files under ``root``; cached by the
    folders' modification times, which change when a file is added, removed or renamed (the
    digest is asked for several times while a config is composed)."""
    del directories  # the cache key
    digest = hashlib.sha256()
    for dirpath, filenames in _walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                size = os.path.getsize(path)
            except OSError as exc:  # a dangling link, or a file gone or unreadable meanwhile
                raise DatasetNotFound(
                    f"folder: {path} cannot be read ({exc.strerror}; a link to a missing file?); "
                    "remove it or restore the file it names"
                ) from None
            digest.update(f"{os.path.relpath(path, root)}\t{size}\n".encode())
    return digest.hexdigest()


@DATA_IDS.register("folder")
def folder_identity(root: str) -> str | None:
    """``dataset.data_id`` of a folder dataset: ``files:<sha256>`` (None where there is no
    folder: building the dataset then says so)."""
    base = Path(root).expanduser()
    if not base.is_dir():
        return None
    resolved = str(base.resolve())
    folders = tuple((d, os.stat(d).st_mtime_ns) for d, _ in _walk(resolved))
    return f"files:{_digest(resolved, folders)}"


@dataclass
class FolderConfig(ImageNetConfig):
    """A folder dataset's settings: ImageNet's, a test split where there is no test folder, and
    the identity of its files."""

    #: a fraction of the training images, not ImageNet's count: folders come in any size
    val_size: float = 0.1
    #: DataLoader workers (fewer than ImageNet's: folders are usually small)
    num_workers: int = 4
    #: test split held out of the images where the root has no test folder (a fraction)
    test_size: float = 0.2
    #: what identifies the data in the config hash (``dataset.root`` is not in it: where files
    #: are does not change results): a digest of the files' names and sizes, computed from the
    #: root, not a setting
    data_id: str | None = "${prune_data_id:${.name},${.root}}"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_test_size(self.test_size)
        if self.name == MISSING:
            return  # the schema's default instance: keep the interpolation for Hydra
        identity = data_identity(self.name, self.root)
        if self.data_id is None or self.data_id.startswith("${"):
            self.data_id = identity  # built in Python, not composed by Hydra
        elif self.data_id != identity:
            raise ConfigError(
                "dataset.data_id is computed from the dataset's files and cannot be set; set "
                "dataset.root instead"
            )


@register_dataset("folder", FolderConfig)
def folder(cfg: FolderConfig, device: torch.device) -> StreamingImageData:
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DatasetNotFound(
            f"folder: {root} is not a folder; set dataset.root to a folder of class folders "
            "(PATH/<class>/<image>) or of train/ and test/ class folders"
        )
    train, test = _layout(root)
    held_out = cfg.test_size if test is None else test
    return StreamingImageData("folder", train, held_out, cfg, device, small=cfg.image_size < 64)
