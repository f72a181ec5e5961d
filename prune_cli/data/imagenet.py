"""ImageNet (ILSVRC-2012) from train/val image folders, streamed through a DataLoader.

Layout: ``<root>/imagenet/{train,val}/<class>/<image>`` or ``<root>/{train,val}/...`` (the val
images sorted into class folders, as torchvision's ImageFolder expects). The official val set is
the test split; the validation split that chooses checkpoints is carved from train.
Transforms: random resized crop and flip for training; resize to 8/7 of the crop and centre crop
for evaluation; ImageNet mean and std.

The folders are checked before any image is read: train/ needs at least two classes (one class
would report 100% accuracy), val/ the same classes as train/ (ImageFolder numbers classes by
their sorted names, so another set of folders would silently mislabel the test split), and every
class at least one image. An image that cannot be decoded stops the run with one line naming it.
``dataset=folder`` (``folder.py``) streams any image folders through the same class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, Subset

from prune_cli.data import DatasetCorrupt, FilesConfig, check_val_size, register_dataset
from prune_cli.data.base import split_indices
from prune_cli.distributed import shard_bounds
from prune_cli.errors import ConfigError, DatasetNotFound
from prune_cli.spec import Batch, DataSpec, ImageData

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def class_folders(split: Path) -> list[str]:
    """The class folders of a split, found and sorted exactly as ImageFolder finds them."""
    return sorted(d.name for d in split.iterdir() if d.is_dir())


def check_folders(name: str, train_dir: Path, test_dir: Path | None) -> None:
    """One-line errors for folder layouts that ImageFolder would reject with a traceback, or
    accept and then report nonsense for."""
    train = class_folders(train_dir)
    if len(train) < 2:
        raise DatasetCorrupt(
            f"{name}: {train_dir} holds {len(train)} class folder(s); a classifier needs "
            "at least 2: put one folder of images per class there"
        )
    if test_dir is None:
        return
    test = class_folders(test_dir)
    if not test:
        raise DatasetCorrupt(
            f"{name}: {test_dir} holds no class folders; sort the test images into "
            f"one folder per class, named as in {train_dir.name}/"
        )
    if test != train:
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        parts = [
            f"{len(names)} only in {where} (first: {names[0]})"
            for names, where in (
                (only_train, f"{train_dir.name}/"),
                (only_test, f"{test_dir.name}/"),
            )
            if names
        ]
        raise DatasetCorrupt(
            f"{name}: the class folders of {train_dir} and {test_dir} differ "
            f"({'; '.join(parts)}); both need the same class folders"
        )


class _Loader:
    """ImageFolder's image loader, whose failure on a file that is not an image (truncated,
    another format) names the file instead of raising PIL's error deep in a worker."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, path: str) -> Any:
        from PIL import Image

        try:
            with open(path, "rb") as fh:
                return Image.open(fh).convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for undecodable files
            raise DatasetCorrupt(
                f"{self.name}: {path} is not a readable image ({type(exc).__name__}); delete or "
                "replace it"
            ) from None


def image_folder(name: str, path: Path, transform: Callable) -> ImageFolder:
    """torchvision's ImageFolder, whose FileNotFoundError (a class folder without images) becomes
    a one-line error."""
    from torchvision import datasets

    try:
        return datasets.ImageFolder(str(path), transform, loader=_Loader(name))
    except FileNotFoundError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else "no images"
        raise DatasetCorrupt(
            f"{name}: {path}: {detail}; every class folder needs at least one image"
        ) from None


def transforms_for(size: int, small: bool) -> tuple[Callable, Callable]:
    """(training, evaluation) transforms to ``size`` x ``size`` RGB uint8 tensors; the batches
    are normalised on the training device (``StreamingImageData.batches``), so the workers
    and the host-to-device copy move a quarter of the bytes float32 images would take.

    ImageNet's: random resized crop and flip; resize to 8/7 and centre crop. ``small`` images
    (CIFAR-like folders) would lose most of themselves to a random resized crop, so they are
    resized and centre-cropped, and trained with CIFAR's padded crop and flip.
    """
    from torchvision import transforms

    finish = [transforms.PILToTensor()]
    if not small:
        train = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
        evaluate = [transforms.Resize(round(size * 8 / 7)), transforms.CenterCrop(size)]
    else:
        evaluate = [transforms.Resize(size), transforms.CenterCrop(size)]
        train = [
            *evaluate,
            transforms.RandomCrop(size, padding=max(1, size // 8)),
            transforms.RandomHorizontalFlip(),
        ]
    return transforms.Compose(train + finish), transforms.Compose(evaluate + finish)


class ShardedBatches:
    """Rank ``rank``'s contiguous part of each batch of ``batches`` (lists of indices): every
    rank draws the same order from the same seeded generator, so the parts tile each batch."""

    def __init__(self, batches: BatchSampler, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            lo, hi = shard_bounds(len(batch), self.rank, self.world)
            yield batch[lo:hi]


@dataclass
class ImageNetConfig(FilesConfig):
    """The settings of datasets streamed from image folders (ImageNet, ``folder``)."""

    #: 10,000 of ImageNet's 1.28 million training images validate (its own val/ is the test)
    val_size: float = 10000
    #: the standard augmentation (random resized crop and flip; small images: padded crop)
    augment: bool = True
    #: training and evaluation image size (height = width), in pixels
    image_size: int = 224
    #: DataLoader workers (not in the config hash: they change speed, not results)
    num_workers: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size < 1:
            raise ConfigError(f"dataset.image_size must be >= 1, got {self.image_size}")
        if self.num_workers < 0:
            raise ConfigError(f"dataset.num_workers must be >= 0, got {self.num_workers}")


class StreamingImageData(ImageData):
    """Image folders streamed through a DataLoader: ``train_dir`` and ``test``, the test
    split's class folders or, as a fraction, how much of the training folder's images are held
    out as the test split (seeded by ``split_seed``, as for digits). ``small``: the transforms
    for small images (``transforms_for``)."""

    def __init__(
        self,
        name: str,
        train_dir: Path,
        test: Path | float,
        cfg: ImageNetConfig,
        device: torch.device,
        small: bool = False,
    ) -> None:
        test_dir = test if isinstance(test, Path) else None
        size = cfg.image_size
        train_tf, eval_tf = transforms_for(size, small)
        check_folders(name, train_dir, test_dir)
        train_aug = image_folder(name, train_dir, train_tf if cfg.augment else eval_tf)
        train_eval = image_folder(name, train_dir, eval_tf)
        test_set: Any
        if test_dir is not None:
            test_set = image_folder(name, test_dir, eval_tf)
            pool = torch.arange(len(train_aug))
            val_seed = cfg.split_seed
        else:
            pool, held_out = split_indices(len(train_aug), float(test), cfg.split_seed)
            test_set = Subset(train_eval, held_out.tolist())
            val_seed = cfg.split_seed + 1  # as digits: the test split's seed is split_seed
        check_val_size(name, cfg, len(pool))
        if cfg.val_size > 0:
            keep, val = split_indices(len(pool), cfg.val_size, val_seed)
            keep, val = pool[keep], pool[val]
        else:
            keep, val = pool, torch.arange(0)
        if cfg.limit_train is not None:
            keep = keep[: cfg.limit_train]
        self._sets = {
            "train": Subset(train_aug, keep.tolist()),
            "train_eval": Subset(train_eval, keep.tolist()),
            "val": Subset(train_eval, val.tolist()),
            "test": test_set,
        }
        self.class_names = list(train_aug.classes)
        self.spec = DataSpec(3, len(self.class_names), size)
        self.device = device
        self.num_workers = cfg.num_workers
        shape = (1, 3, 1, 1)
        # x / 255 then (x - mean) / std as one multiply-add: scale = 1 / (255 std)
        self._scale = (1.0 / (255.0 * torch.tensor(STD))).view(shape).to(device)
        self._shift = (-torch.tensor(MEAN) / torch.tensor(STD)).view(shape).to(device)
        #: channels-last on CUDA, as training runs there (see data/base.py)
        self.memory_format = (
            torch.channels_last if device.type == "cuda" else torch.contiguous_format
        )

    def normalise(self, x: Tensor) -> Tensor:
        """uint8 images on the device to normalised float32, in the training layout."""
        x = x.to(dtype=torch.float32, memory_format=self.memory_format)
        return torch.addcmul(self._shift, x, self._scale)

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
        shard: tuple[int, int] | None = None,
    ) -> Iterator[Batch]:
        dataset = self._sets[split if augment or split != "train" else "train_eval"]
        sampler: Any = (
            RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        )
        drop_last = split == "train" and len(dataset) % batch_size == 1
        batch_sampler: Any = BatchSampler(sampler, batch_size, drop_last)
        if shard is not None:
            batch_sampler = ShardedBatches(batch_sampler, *shard)
        loader = DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            # not persistent: workers that outlive an epoch keep their random state, and a
            # resumed run (new workers) would then draw other augmentations than the original
            persistent_workers=False,
        )
        batches = iter(loader)
        try:
            for x, y in batches:
                x = self.normalise(x.to(self.device, non_blocking=True))
                yield x, y.to(self.device, non_blocking=True)
        except DatasetCorrupt as exc:
            # a worker's error comes back with its traceback in the message: keep the last line
            last = str(exc).strip().splitlines()[-1]
            raise DatasetCorrupt(last.split("DatasetCorrupt: ", 1)[-1]) from None
        finally:
            # The workers stop here, whatever ended the loop. An error raised in a worker keeps
            # the iterator alive in a reference cycle (torch's reraise frame holds the error),
            # and its shutdown, left to the garbage collector, waited there 5 s (torch's status
            # interval). Without workers (num_workers=0) there is nothing to stop.
            stop = getattr(batches, "_shutdown_workers", None)
            if stop is not None:
                stop()


@register_dataset("imagenet", ImageNetConfig)
def imagenet(cfg: ImageNetConfig, device: torch.device) -> StreamingImageData:
    root = Path(cfg.root)
    for base in (root / "imagenet", root):
        if (base / "train").is_dir() and (base / "val").is_dir():
            return StreamingImageData("imagenet", base / "train", base / "val", cfg, device)
    raise DatasetNotFound(
        f"imagenet: no train/ and val/ image folders in {root / 'imagenet'} or {root}; ImageNet "
        "cannot be downloaded automatically: get ILSVRC-2012 from image-net.org, sort val into "
        "class folders, and set dataset.root"
    )
