"""Masks: parameter name -> boolean tensor (True = the weight is kept).

Enforcement is one fused in-place multiply over all masked tensors after each optimizer step
(``torch._foreach_mul_``), not a forward hook per layer: the forward pass stays the plain dense
kernel, and the cost is one multi-tensor kernel per step. Two things keep it that cheap:

- the multiplicands have exactly the weights' strides (channels-last on CUDA): the multi-tensor
  kernel takes only tensor pairs of equal layout, and falls back to one kernel per tensor
  otherwise; masks loaded from a file or made by a selection have the default layout, so the
  multiplicands are laid out from the weights, not from the masks;
- masks that keep every entry (level 0, and methods without a mask) skip the multiply.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from prune_cli.io import load_torch, save_torch


def prunable_parameters(model: nn.Module, ignore: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """The weights that pruning may touch: conv and linear weights (``dim() > 1``) by default.

    ``ignore`` holds shell-style patterns of parameter names (``"fc.*"``, ``"conv1.weight"``)
    that are left dense. Biases, BatchNorm parameters and 1-d tensors are never prunable.
    """
    patterns = list(ignore)
    return {
        name: p
        for name, p in model.named_parameters()
        if p.dim() > 1 and not any(fnmatch.fnmatch(name, pat) for pat in patterns)
    }


class Masks(Mapping[str, Tensor]):
    """A boolean mask per prunable parameter. Mapping-like: ``masks[name]`` is a bool tensor."""

    def __init__(self, masks: Mapping[str, Tensor]) -> None:
        self._masks: dict[str, Tensor] = {k: v.detach().to(torch.bool) for k, v in masks.items()}
        self._float: dict[str, Tensor] | None = None  # cached multiplicands, rebuilt on update
        self._float_key: tuple | None = None  # (device, dtype, strides) they were built for
        #: True when every entry is kept (nothing to multiply), None = not known yet; found
        #: lazily with one host sync, because a constructor or ``update`` on the GPU should not
        #: wait for the device
        self._all_kept: bool | None = None
        #: incremented by every ``update``: the experiment selects checkpoints only among epochs
        #: that ended with the final masks (gradual pruning changes them during training)
        self.version = 0

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def ones(cls, params: Mapping[str, Tensor]) -> Masks:
        # ones_like keeps each weight's memory format
        masks = cls({k: torch.ones_like(v, dtype=torch.bool) for k, v in params.items()})
        masks._all_kept = True
        return masks

    # --- mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    # --- counts -------------------------------------------------------------------------------
    def numel(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    def kept(self) -> int:
        return int(sum(int(m.sum()) for m in self._masks.values()))

    def all_kept(self) -> bool:
        """True when no entry is masked (then ``apply_`` has nothing to do)."""
        if self._all_kept is None:
            if not self._masks:
                self._all_kept = True
            else:  # one reduction per device and one host sync, not one per tensor
                by_device: dict[torch.device, list[Tensor]] = {}
                for m in self._masks.values():
                    by_device.setdefault(m.device, []).append(m.all())
                self._all_kept = all(bool(torch.stack(v).all()) for v in by_device.values())
        return self._all_kept

    def sparsity(self) -> float:
        """Fraction of masked (pruned) entries over all masked tensors."""
        total = self.numel()
        return 0.0 if total == 0 else 1.0 - self.kept() / total

    # --- change -------------------------------------------------------------------------------
    def update(self, new: Mapping[str, Tensor]) -> None:
        """Replace some or all masks (same names and shapes)."""
        for name, m in new.items():
            if name not in self._masks or m.shape != self._masks[name].shape:
                raise KeyError(f"mask {name!r} does not match an existing masked tensor")
            old = self._masks[name]
            m = m.detach().to(device=old.device, dtype=torch.bool)
            if m.stride() != old.stride():  # keep the layout (a selection returns the default)
                m = torch.empty_like(old).copy_(m)
            self._masks[name] = m
        self._float = None
        self._all_kept = None
        self.version += 1

    def to(self, device: torch.device | str) -> Masks:
        masks = Masks({k: v.to(device) for k, v in self._masks.items()})
        masks._all_kept = self._all_kept
        return masks

    def is_subset_of(self, other: Masks) -> bool:
        """True when every weight kept here is also kept in ``other`` (masks only shrink)."""
        return all(not bool((self[k] & ~other[k].to(self[k].device)).any()) for k in self._masks)

    # --- apply --------------------------------------------------------------------------------
    @torch.no_grad()
    def apply_(self, params: Mapping[str, Tensor]) -> None:
        """Zero the masked entries of ``params`` in place with one fused multiply.

        Nothing happens when every entry is kept. The multiplicands are built once per mask
        change, on the weights' device, in their dtype and with their strides; they are rebuilt
        when the weights move or change layout (checked on the first one of each kind).
        """
        if not self._masks or self.all_kept():
            return
        names = list(self._masks)
        targets = [params[k] for k in names]
        key = _layout_key(targets)
        if self._float is None or key != self._float_key:
            # empty_like keeps the weight's strides (channels-last included), copy_ converts
            self._float = {k: torch.empty_like(params[k]).copy_(self._masks[k]) for k in names}
            self._float_key = key
        torch._foreach_mul_(targets, [self._float[k] for k in names])

    # --- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.cpu().contiguous() for k, v in self._masks.items()}

    def save(self, path: Path) -> None:
        save_torch(self.state_dict(), path)

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> Masks:
        return cls({k: v.to(device) for k, v in load_torch(path).items()})


def _layout_key(targets: list[Tensor]) -> tuple:
    """What the cached multiplicands depend on, read off the first tensor and the first 4-d one
    (cheap enough for every step; a model changes device, dtype or layout as a whole)."""
    first = targets[0]
    conv = next((t for t in targets if t.dim() == 4), first)
    return (first.device, first.dtype, conv.dtype, conv.stride())


def nonzero_counts(params: Mapping[str, Tensor]) -> dict[str, tuple[int, int]]:
    """(numel, nonzero) per tensor: what the run reports as sparsity, mask or no mask."""
    return {k: (v.numel(), int(torch.count_nonzero(v.detach()))) for k, v in params.items()}
