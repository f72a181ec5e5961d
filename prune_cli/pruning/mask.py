"""Masks: parameter name -> boolean tensor (True = the weight is kept).

Enforcement is one fused in-place multiply over all masked tensors after each optimizer step
(``torch._foreach_mul_``), not a forward hook per layer: the forward pass stays the plain dense
kernel, and the cost is one multi-tensor kernel per step.
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
        #: incremented by every ``update``: the experiment selects checkpoints only among epochs
        #: that ended with the final masks (gradual pruning changes them during training)
        self.version = 0

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def ones(cls, params: Mapping[str, Tensor]) -> Masks:
        return cls({k: torch.ones_like(v, dtype=torch.bool) for k, v in params.items()})

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
            self._masks[name] = m.detach().to(device=self._masks[name].device, dtype=torch.bool)
        self._float = None
        self.version += 1

    def to(self, device: torch.device | str) -> Masks:
        return Masks({k: v.to(device) for k, v in self._masks.items()})

    def is_subset_of(self, other: Masks) -> bool:
        """True when every weight kept here is also kept in ``other`` (masks only shrink)."""
        return all(not bool((self[k] & ~other[k].to(self[k].device)).any()) for k in self._masks)

    # --- apply --------------------------------------------------------------------------------
    @torch.no_grad()
    def apply_(self, params: Mapping[str, Tensor]) -> None:
        """Zero the masked entries of ``params`` in place with one fused multiply."""
        if self._float is None:
            self._float = {k: v.to(dtype=params[k].dtype) for k, v in self._masks.items()}
        names = list(self._masks)
        targets = [params[k] for k in names]
        factors = [self._float[k] for k in names]
        if factors and factors[0].device != targets[0].device:
            self._float = {k: v.to(targets[0].device) for k, v in self._float.items()}
            factors = [self._float[k] for k in names]
        torch._foreach_mul_(targets, factors)

    # --- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.cpu() for k, v in self._masks.items()}

    def save(self, path: Path) -> None:
        save_torch(self.state_dict(), path)

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> Masks:
        return cls({k: v.to(device) for k, v in load_torch(path).items()})


def nonzero_counts(params: Mapping[str, Tensor]) -> dict[str, tuple[int, int]]:
    """(numel, nonzero) per tensor: what the run reports as sparsity, mask or no mask."""
    return {k: (v.numel(), int(torch.count_nonzero(v.detach()))) for k, v in params.items()}
