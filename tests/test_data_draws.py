"""In-memory batches: an epoch's random numbers drawn at once give the batches of the
batch-by-batch draw (resumed runs and pinned results depend on it), in either memory format."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prune_cli.data.base import InMemoryData
from prune_cli.spec import DataSpec


def make_data(pad: int, flip: bool, n: int = 203, channels: int = 3) -> InMemoryData:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, channels, 10, 10), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return InMemoryData(
        {s: (x, y) for s in ("train", "val", "test")},
        DataSpec(channels, 10, 10),
        [str(i) for i in range(10)],
        (0.5,) * channels,
        (0.25,) * channels,
        torch.device("cpu"),
        crop_padding=pad,
        flip=flip,
    )


def batch_by_batch(data: InMemoryData, batch_size: int, gen: torch.Generator):
    """The augmentation as it was first written: per batch, crop offsets and flips drawn then,
    the crop by advanced indexing, then the flip."""
    x_all, y_all = data._x["train"], data._y["train"]
    n = y_all.numel()
    order = torch.randperm(n, generator=gen)
    pad = data.crop_padding
    for b in range(data.num_batches("train", batch_size)):
        idx = order[b * batch_size : (b + 1) * batch_size]
        x = (x_all[idx].float() / 255.0 - data._mean) / data._std
        m, _, h, w = x.shape
        if pad:
            padded = F.pad(x, (pad, pad, pad, pad))
            dy = torch.randint(0, 2 * pad + 1, (m, 1, 1), generator=gen)
            dx = torch.randint(0, 2 * pad + 1, (m, 1, 1), generator=gen)
            rows = dy + torch.arange(h).view(1, h, 1)
            cols = dx + torch.arange(w).view(1, 1, w)
            x = padded.permute(0, 2, 3, 1)[torch.arange(m).view(m, 1, 1), rows, cols]
            x = x.permute(0, 3, 1, 2)
        if data.flip:
            flips = (torch.rand(m, generator=gen) < 0.5).view(m, 1, 1, 1)
            x = torch.where(flips, x.flip(3), x)
        yield x.contiguous(), y_all[idx]


@pytest.mark.parametrize(("pad", "flip"), [(4, True), (2, False), (0, True), (0, False)])
def test_epoch_draws_give_the_batch_by_batch_batches(pad, flip):
    data = make_data(pad, flip)
    ours_gen, ref_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    ours = list(data.batches("train", 64, shuffle=True, augment=True, generator=ours_gen))
    ref = list(batch_by_batch(data, 64, ref_gen))
    assert len(ours) == len(ref) == 4  # 64, 64, 64, 11
    for (x, y), (rx, ry) in zip(ours, ref, strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry) and x.is_contiguous()
    # the generator moved on exactly as far: later draws (the next epoch's) are unchanged
    assert torch.equal(ours_gen.get_state(), ref_gen.get_state())


def test_a_last_batch_of_one_is_dropped_and_draws_nothing_for_it():
    data = make_data(4, True, n=129)
    gen, ref_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    batches = list(data.batches("train", 64, shuffle=True, augment=True, generator=gen))
    assert [len(y) for _, y in batches] == [64, 64]
    list(batch_by_batch(data, 64, ref_gen))
    assert torch.equal(gen.get_state(), ref_gen.get_state())


def test_channels_last_batches_hold_the_same_values():
    """On CUDA batches come out channels-last (what training uses there): same values."""
    plain, last = make_data(4, True), make_data(4, True)
    last.memory_format = torch.channels_last
    for augment in (True, False):
        a = plain.batches("train", 50, shuffle=True, augment=augment, generator=_gen())
        b = last.batches("train", 50, shuffle=True, augment=augment, generator=_gen())
        for (xa, _), (xb, _) in zip(a, b, strict=True):
            assert xb.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(xa, xb)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(5)
