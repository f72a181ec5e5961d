"""ImageNet (ILSVRC-2012) from train/val image folders, streamed through a DataLoader.

Layout: ``<root>/imagenet/{train,val}/<class>/<image>`` or ``<root>/{train,val}/...`` (the val
images sorted into class folders, as torchvision's ImageFolder expects). The official val set is
the test split; the validation split that chooses checkpoints is carved from train.
Transforms: random resized crop and flip for training; resize to 8/7 of the crop and centre crop
for evaluation; ImageNet mean and std.

The folders are checked before any image is read: train/ needs at least two classes (one class
would report 100% accuracy), val/ the same classes as train/ (ImageFolder numbers classes by
their sorted names, so another set of folders would silently mislabel the test split), and every
class at least one image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Subset

from prune_cli.data import DATASETS, DatasetConfig, DatasetCorrupt, check_val_size
from prune_cli.data.base import split_indices
from prune_cli.errors import DatasetNotFound
from prune_cli.spec import Batch, DataSpec, ImageData

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def class_folders(split: Path) -> list[str]:
    """The class folders of a split, found and sorted exactly as ImageFolder finds them."""
    return sorted(d.name for d in split.iterdir() if d.is_dir())


def check_folders(base: Path) -> None:
    """One-line errors for folder layouts that ImageFolder would reject with a traceback, or
    accept and then report nonsense for."""
    train = class_folders(base / "train")
    val = class_folders(base / "val")
    if len(train) < 2:
        raise DatasetCorrupt(
            f"imagenet: {base / 'train'} holds {len(train)} class folder(s); a classifier needs "
            "at least 2: put one folder of images per class there"
        )
    if not val:
        raise DatasetCorrupt(
            f"imagenet: {base / 'val'} holds no class folders; sort the validation images into "
            "one folder per class, named as in train/"
        )
    if val != train:
        only_train = sorted(set(train) - set(val))
        only_val = sorted(set(val) - set(train))
        parts = [
            f"{len(names)} only in {where} (first: {names[0]})"
            for names, where in ((only_train, "train/"), (only_val, "val/"))
            if names
        ]
        raise DatasetCorrupt(
            f"imagenet: the class folders of {base / 'train'} and {base / 'val'} differ "
            f"({'; '.join(parts)}); both need the same class folders"
        )


def image_folder(path: Path, transform: Callable) -> ImageFolder:
    """torchvision's ImageFolder, whose FileNotFoundError (a class folder without images) becomes
    a one-line error."""
    from torchvision import datasets

    try:
        return datasets.ImageFolder(str(path), transform)
    except FileNotFoundError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else "no images"
        raise DatasetCorrupt(
            f"imagenet: {path}: {detail}; every class folder needs at least one image"
        ) from None


class StreamingImageData(ImageData):
    def __init__(self, base: Path, cfg: DatasetConfig, device: torch.device) -> None:
        from torchvision import transforms

        size = cfg.image_size
        normalize = transforms.Normalize(MEAN, STD)
        train_tf = transforms.Compose(
            [
                transforms.RandomResizedCrop(size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )
        eval_tf = transforms.Compose(
            [
                transforms.Resize(round(size * 8 / 7)),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                normalize,
            ]
        )
        check_folders(base)
        train_aug = image_folder(base / "train", train_tf if cfg.augment else eval_tf)
        train_eval = image_folder(base / "train", eval_tf)
        test = image_folder(base / "val", eval_tf)
        check_val_size("imagenet", cfg, len(train_aug))
        if cfg.val_size > 0:
            keep, val = split_indices(len(train_aug), cfg.val_size, cfg.split_seed)
        else:
            keep, val = torch.arange(len(train_aug)), torch.arange(0)
        if cfg.limit_train is not None:
            keep = keep[: cfg.limit_train]
        self._sets = {
            "train": Subset(train_aug, keep.tolist()),
            "train_eval": Subset(train_eval, keep.tolist()),
            "val": Subset(train_eval, val.tolist()),
            "test": test,
        }
        self.class_names = list(train_aug.classes)
        self.spec = DataSpec(3, len(self.class_names), size)
        self.device = device
        self.num_workers = cfg.num_workers

    def size(self, split: str) -> int:
        return len(self._sets[split])

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        dataset = self._sets[split if augment or split != "train" else "train_eval"]
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=split == "train" and len(dataset) % batch_size == 1,
            persistent_workers=False,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


@DATASETS.register("imagenet")
def imagenet(cfg: DatasetConfig, device: torch.device) -> StreamingImageData:
    root = Path(cfg.root)
    for base in (root / "imagenet", root):
        if (base / "train").is_dir() and (base / "val").is_dir():
            return StreamingImageData(base, cfg, device)
    raise DatasetNotFound(
        f"imagenet: no train/ and val/ image folders in {root / 'imagenet'} or {root}; ImageNet "
        "cannot be downloaded automatically: get ILSVRC-2012 from image-net.org, sort val into "
        "class folders, and set dataset.root"
    )
