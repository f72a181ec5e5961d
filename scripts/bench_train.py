"""Time prune-run's training epoch against a plain PyTorch reference loop, in one process.

Both train the same model, from the same initial weights, on the same data (synthetic uint8
images of the dataset's size, so that no download is needed), with the same augmentation
(CIFAR-size: 4-pixel padded crop and flip; MNIST-size: none) and the same optimizer.

- reference: a torchvision ``Dataset`` of uint8 images with ``transforms`` (RandomCrop,
  RandomHorizontalFlip, ToTensor, Normalize), a ``DataLoader`` with workers, eager fp32;
- prune-run: ``Trainer.train_epoch`` over ``InMemoryData`` (data on the device, augmentation
  in batches there), masks enforced after every step, bf16 autocast and channels-last on CUDA.

Prints the median images per second of each over alternating rounds (one epoch of each per
round) and the median ratio prune-run / reference (> 1: prune-run faster).
Run: ``python scripts/bench_train.py --model resnet20 --size 32`` (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from prune_cli.data.base import InMemoryData
from prune_cli.models import build_model
from prune_cli.pruning.mask import Masks, prunable_parameters
from prune_cli.spec import DataSpec
from prune_cli.training.config import TrainConfig
from prune_cli.training.loop import Trainer
from prune_cli.training.optim import build_optimizer, build_scheduler


class UInt8Images(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, transform) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = self.x[i]
        img = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
        return self.transform(img), int(self.y[i])


def reference_epoch(model, loader, optimizer, device) -> int:
    model.train()
    seen = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += y.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen


def main() -> None:
    from torchvision import transforms

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--size", type=int, default=32, help="image size (32: CIFAR, 28: MNIST)")
    ap.add_argument("--n", type=int, default=4096, help="training images per epoch")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=5, help="timed rounds (after one warm-up)")
    ap.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    device = torch.device(args.device)
    channels = 3 if args.size == 32 else 1
    spec = DataSpec(channels, 10, args.size)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.n, channels, args.size, args.size), dtype=np.uint8)
    y = rng.integers(0, 10, args.n)
    mean, std = (0.5,) * channels, (0.25,) * channels
    augment = args.size == 32

    tf = [transforms.RandomCrop(args.size, padding=4), transforms.RandomHorizontalFlip()]
    tf = (tf if augment else []) + [transforms.ToTensor(), transforms.Normalize(mean, std)]
    loader = DataLoader(
        UInt8Images(x, y, transforms.Compose(tf)),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    data = InMemoryData(
        {s: (xt, yt) for s in ("train", "val", "test")},
        spec,
        [str(i) for i in range(10)],
        mean,
        std,
        device,
        crop_padding=4 if augment else 0,
        flip=augment,
    )

    torch.manual_seed(0)
    init = build_model(args.model, spec).state_dict()
    cfg = TrainConfig(batch_size=args.batch_size, lr=0.01, nesterov=False)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed_epoch(run_epoch, e: int) -> float:
        sync()
        start = time.perf_counter()
        run_epoch(e)
        sync()
        return args.n / (time.perf_counter() - start)

    ref_model = build_model(args.model, spec).to(device)
    ref_model.load_state_dict(init)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    model = build_model(args.model, spec).to(device)
    model.load_state_dict(init)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = prunable_parameters(model)
    masks = Masks.ones(params)
    opt = build_optimizer(model.parameters(), cfg, cfg.lr)
    sched = build_scheduler(opt, cfg, data.num_batches("train", args.batch_size), 10**6)
    trainer = Trainer(model, data, cfg, opt, sched, lambda: masks.apply_(params))

    def ref_run(e: int) -> None:
        reference_epoch(ref_model, loader, ref_opt, device)

    def ours_run(e: int) -> None:
        trainer.train_epoch(e, torch.Generator().manual_seed(e))

    ref_run(0)  # warm-up: workers start, kernels are chosen, caches fill
    ours_run(0)
    # Alternate the two, so that load from elsewhere on a shared machine hits both alike;
    # report medians over the rounds.
    ref_rates, our_rates = [], []
    for e in range(1, args.epochs + 1):
        ref_rates.append(timed_epoch(ref_run, e))
        our_rates.append(timed_epoch(ours_run, e))
    ratios = sorted(o / r for o, r in zip(our_rates, ref_rates, strict=True))
    ref_ips = float(np.median(ref_rates))
    ours_ips = float(np.median(our_rates))

    print(
        f"device={device} model={args.model} size={args.size} n={args.n} "
        f"batch={args.batch_size} threads={torch.get_num_threads()} workers={args.workers}"
    )
    print(f"reference  {ref_ips:10.1f} images/s")
    print(f"prune-run  {ours_ips:10.1f} images/s")
    print(
        f"ratio prune-run/reference = {float(np.median(ratios)):.2f} (median of {len(ratios)} "
        f"alternating rounds; min {ratios[0]:.2f}, max {ratios[-1]:.2f})"
    )


if __name__ == "__main__":
    main()
