"""B x B weight blocks, shared by SequentialAttention++ (Yasuda et al. 2024, arXiv 2402.17902),
ACDC with block magnitudes and one-shot block-magnitude pruning (METHODS.md section 4).

A layer's weight is seen as a matrix with one column per output unit:

- a convolution weight (OIHW, ``(Cout, Cin, kh, kw)``) as the ``(kh*kw*Cin) x Cout`` matrix
  ``W.permute(2, 3, 1, 0).reshape(kh*kw*Cin, Cout)`` (the im2col layout of TensorFlow's HWIO
  kernels, on which the paper's blocks are defined), and likewise for 1-d or 3-d convolutions
  (the spatial dimensions first, then ``Cin``);
- a linear weight ``(out, in)`` as ``W.T``, an ``in x out`` matrix.

The matrix is cut into ``B x B`` blocks, numbered row-major over the block grid. When a side is
not a multiple of B the last row or column of blocks is cut short: such an edge block holds and
counts only its real weights (``BlockLayout.sizes``). Masks and scores of blocks are 1-d tensors
of length ``n_blocks``; ``expand`` lays such a per-block tensor out over the weight's shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _perm(dim: int) -> list[int]:
    """The permutation that puts a weight's spatial dimensions first, then Cin, then Cout."""
    return [*range(2, dim), 1, 0]


def matrix_view(weight: Tensor) -> Tensor:
    """``weight`` as the ``(kh*kw*Cin) x Cout`` matrix (a linear weight: its transpose)."""
    return weight.permute(_perm(weight.dim())).reshape(-1, weight.shape[0])


def from_matrix(matrix: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """The inverse of ``matrix_view`` for a weight of ``shape``."""
    perm = _perm(len(shape))
    permuted = matrix.reshape([shape[i] for i in perm])
    inverse = [perm.index(i) for i in range(len(shape))]
    return permuted.permute(inverse)


@dataclass(frozen=True)
class BlockLayout:
    """The block grid of one weight tensor."""

    shape: tuple[int, ...]
    block_size: int

    @property
    def rows(self) -> int:
        return math.prod(self.shape[1:])  # kh*kw*Cin (a linear layer: in)

    @property
    def cols(self) -> int:
        return self.shape[0]  # Cout

    @property
    def grid(self) -> tuple[int, int]:
        b = self.block_size
        return -(-self.rows // b), -(-self.cols // b)

    @property
    def n_blocks(self) -> int:
        r, c = self.grid
        return r * c

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    def sizes(self) -> Tensor:
        """The number of real weights of each block (edge blocks hold fewer than B*B)."""
        b = self.block_size
        r, c = self.grid
        heights = torch.full((r,), b)
        heights[-1] = self.rows - b * (r - 1)
        widths = torch.full((c,), b)
        widths[-1] = self.cols - b * (c - 1)
        return (heights[:, None] * widths[None, :]).reshape(-1)

    def _padded(self, weight: Tensor) -> Tensor:
        b = self.block_size
        r, c = self.grid
        m = matrix_view(weight)
        return F.pad(m, (0, c * b - self.cols, 0, r * b - self.rows))

    def norms(self, weight: Tensor) -> Tensor:
        """The L2 norm of each block of ``weight`` (padding counts as zeros)."""
        b = self.block_size
        r, c = self.grid
        blocks = self._padded(weight.detach().float()).reshape(r, b, c, b)
        return blocks.square().sum(dim=(1, 3)).sqrt().reshape(-1)

    def expand(self, values: Tensor) -> Tensor:
        """A per-block tensor (length ``n_blocks``) broadcast over every weight of its block,
        in the weight's shape. Differentiable (the attention weights go through it)."""
        b = self.block_size
        r, c = self.grid
        grid = values.reshape(r, c)
        matrix = grid.repeat_interleave(b, 0).repeat_interleave(b, 1)[: self.rows, : self.cols]
        return from_matrix(matrix, self.shape)


def layout_of(weight: Tensor, block_size: int) -> BlockLayout:
    return BlockLayout(tuple(weight.shape), block_size)


def blocks_to_prune(
    scores: Mapping[str, Tensor],
    sizes: Mapping[str, Tensor],
    kept: Mapping[str, Tensor],
    sparsity: float,
    scope: str,
) -> dict[str, Tensor]:
    """New block masks (True = kept) that prune the lowest-scoring blocks to ``sparsity``.

    ``scope="layer"`` applies ``sparsity`` to every layer on its own (SA++'s uniform sparsity);
    ``"global"`` ranks the blocks of all layers together. Blocks already pruned (False in
    ``kept``) rank first, so the new masks are nested in the old ones. Blocks are dropped in
    order while the pruned *weights* (edge blocks count their real size) stay within
    ``sparsity`` of the scope's weights, so the result is at most one block short of it.
    """
    names = list(scores)
    groups = [[n] for n in names] if scope == "layer" else [names]
    out: dict[str, Tensor] = {}
    for group in groups:
        score = torch.cat([scores[n].detach().float().reshape(-1) for n in group])
        size = torch.cat([sizes[n].to(score.device) for n in group]).to(torch.float64)
        keep = torch.cat([kept[n].to(score.device) for n in group])
        score = torch.where(keep, score, torch.full_like(score, -math.inf))
        # stable: ties (equal attention at initialisation) break by block index, reproducibly
        order = torch.sort(score, stable=True).indices
        cumulative = torch.cumsum(size[order], 0)
        # a tolerance so that exact targets (s * total an integer) are not lost to rounding
        count = int(torch.searchsorted(cumulative, sparsity * float(size.sum()) + 1e-6, right=True))
        count = max(count, int((~keep).sum()))  # never revive a pruned block
        new = torch.ones_like(keep)
        new[order[:count]] = False
        start = 0
        for n in group:
            k = scores[n].numel()
            out[n] = new[start : start + k].clone()
            start += k
    return out
