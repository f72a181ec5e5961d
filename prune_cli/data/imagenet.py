"""ImageNet (ILSVRC-2012) from train/val image folders, streamed through a DataLoader.

Layout: ``<root>/imagenet/{train,val}/<class>/<image>`` or ``<root>/{train,val}/...`` (the val
images sorted into class folders, as torchvision's ImageFolder expects). The official val set is
the test split; the validation split that chooses checkpoints is carved from train.
Transforms: random resized crop and flip for training; resize to 8/7 of the crop and centre crop
for evaluation; ImageNet mean and std.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from prune_cli.data import DATASETS, DatasetConfig
from prune_cli.data.base import split_indices
from prune_cli.errors import DatasetNotFound
from prune_cli.spec import Batch, DataSpec, ImageData

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class StreamingImageData(ImageData):
    def __init__(self, base: Path, cfg: DatasetConfig, device: torch.device) -> None:
        from torchvision import datasets, transforms

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
        train_aug = datasets.ImageFolder(str(base / "train"), train_tf if cfg.augment else eval_tf)
        train_eval = datasets.ImageFolder(str(base / "train"), eval_tf)
        test = datasets.ImageFolder(str(base / "val"), eval_tf)
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
