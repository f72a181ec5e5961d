"""What the block methods share: their settings, the phases of training, block-mask changes.

SequentialAttention++ (``methods/sapp.py``), ACDC and one-shot block magnitude
(``methods/acdc.py``) prune B x B blocks of each eligible layer's weight matrix
(``pruning/blocks.py``); a layer with fewer than ``min_blocks`` blocks stays dense.
``BlockMethod`` holds what all three do alike: which layers are eligible, the hook for a
changed block mask and the per-layer report ``finalize`` returns.

SA++ and ACDC also alternate phases within their one training run. ``phases`` are boundaries
that cut training into segments, dense first and sparse last; a sparse segment first
*sparsifies* (the target grows along tau from 0 to 1 over ``sparsify_fraction`` of the segment,
blocks dropped as it passes each one) and then trains *sparse* with the mask frozen; a dense
segment gives every block back, its weights restarting at zero. ``BlockPhases`` is the callback
that runs this from the global step index alone, so a resumed run repeats an uninterrupted one;
a ``BlockPhaseMethod`` says what differs: the target along tau, the block scores (SA++:
attention; ACDC: L2 norm), how ``phases`` map to steps and at which phase starts the
optimizer's state is cleared.
"""

from __future__ import annotations

import bisect
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prune_cli.callbacks import Callback
from prune_cli.errors import ConfigError
from prune_cli.pruning.blocks import BlockLayout, blocks_to_prune, layout_of
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import MethodConfig, PruningMethod, check_range
from prune_cli.pruning.results import Results

#: SA++'s ImageNet ResNet-50 schedule as fractions of training: 10% dense, then 7 cycles of
#: 5% sparse + 5% dense (the last dense one 5% longer: 10%), then the final 15% sparse. The
#: phase framework's own default; each method's config sets the schedule of its demo.
PAPER_PHASES = [0.10, *(round(0.15 + 0.05 * i, 2) for i in range(13)), 0.85]

BLOCK_SCOPES = ("layer", "global")


@dataclass
class BlockConfig(MethodConfig):
    """Settings of the block methods (SA++, ACDC, block magnitude): target and blocks."""

    #: target sparsity s of every eligible layer (or of all of them, global scope), in [0, 1)
    sparsity: float = 0.9
    #: B: blocks are B x B in the (kh*kw*Cin) x Cout matrix; 1 = single weights
    block_size: int = 16
    #: layers with fewer blocks stay dense
    min_blocks: int = 0
    #: ``layer``: the same sparsity in every eligible layer (SA++'s uniform sparsity);
    #: ``global``: one ranking of the blocks of all eligible layers (ACDC's authors)
    scope: str = "layer"

    def __post_init__(self) -> None:
        if self.scope not in BLOCK_SCOPES:
            raise ConfigError(
                f"method.scope must be one of {', '.join(BLOCK_SCOPES)}, got {self.scope!r}"
            )
        check_range("sparsity", self.sparsity, 0.0, 1.0)
        check_range("block_size", self.block_size, 1)
        check_range("min_blocks", self.min_blocks, 0)


@dataclass
class BlockPhaseConfig(BlockConfig):
    """Settings SA++ and ACDC share besides the blocks: the phase boundaries."""

    #: boundaries of the phases (dense, sparse, dense, ..., sparse); an odd number, increasing,
    #: strictly inside (0, 1) for SA++ (fractions of training) or (0, epochs) for ACDC (epochs)
    phases: list[float] = field(default_factory=lambda: list(PAPER_PHASES))
    #: share of each sparse segment spent sparsifying (the rest trains with the mask frozen)
    sparsify_fraction: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("sparsify_fraction", self.sparsify_fraction, 0.0, 1.0, high_open=False)
        p = list(self.phases)
        if len(p) % 2 == 0 or p[0] <= 0 or any(b <= a for a, b in itertools.pairwise(p)):
            raise ConfigError(
                "method.phases must be an odd number of increasing boundaries after 0 "
                "(dense, sparse, ..., dense, sparse)"
            )


@dataclass(frozen=True)
class Phase:
    segment: int  # index of the segment between boundaries (even: dense, odd: sparse)
    kind: str  # "dense", "sparsify" or "sparse"
    tau: float  # sparsification progress: 0 when dense, 1 when sparse

    @property
    def key(self) -> tuple[int, str]:
        return self.segment, self.kind


class PhaseSchedule:
    """Which phase follows ``done`` completed optimizer steps.

    ``boundaries`` are step counts cutting [0, total) into segments: dense, sparse, dense, ...,
    sparse. A sparse segment sparsifies over its first ``sparsify_fraction`` (tau = steps into
    the segment / sparsification length, the target reached after its last step), then is
    sparse; with ``sparsify_fraction = 0`` it is sparse (fully pruned) from its first step.
    """

    def __init__(self, boundaries: list[int], total: int, sparsify_fraction: float) -> None:
        if any(b <= a for a, b in zip([0, *boundaries], [*boundaries, total], strict=True)):
            raise ConfigError(
                f"method.phases give empty phases with {total} training steps: "
                f"boundaries at steps {boundaries}"
            )
        self.boundaries = boundaries
        self.total = total
        self.sparsify_fraction = sparsify_fraction

    def at(self, done: int) -> Phase:
        segment = bisect.bisect_right(self.boundaries, done)
        if segment % 2 == 0:
            return Phase(segment, "dense", 0.0)
        start = self.boundaries[segment - 1]
        end = self.boundaries[segment] if segment < len(self.boundaries) else self.total
        length = round(self.sparsify_fraction * (end - start))
        into = done - start
        if into < length:
            return Phase(segment, "sparsify", into / length)
        return Phase(segment, "sparse", 1.0)


class BlockPhases(Callback):
    """Runs the phases of SA++ or ACDC from the step index: updates masks, resets the
    optimizer. ``scores(model)`` gives a per-block score of each eligible layer (low = pruned
    first); ``scope`` is "layer" (uniform per-layer sparsity) or "global"."""

    def __init__(
        self,
        method: BlockPhaseMethod,
        masks: Masks,
        steps_of: Callable[[int, int], list[int]],
        reset_on: frozenset[str],
    ) -> None:
        self.method = method
        self.masks = masks
        self.steps_of = steps_of  # (steps_per_epoch, epochs) -> phase boundaries in steps
        self.reset_on = reset_on  # kinds of phase whose start clears the optimizer's state
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule: PhaseSchedule | None = None
        self.layouts: dict[str, BlockLayout] = {}
        self.sizes: dict[str, Tensor] = {}  # real weights per block
        self.kept: dict[str, Tensor] = {}  # block masks on the host (True = kept)
        self.resets = 0  # optimizer resets in this session (for tests and the log)

    def on_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def on_level_start(self, model: nn.Module, steps_per_epoch: int, epochs: int) -> None:
        total = steps_per_epoch * epochs
        self.schedule = PhaseSchedule(
            self.steps_of(steps_per_epoch, epochs), total, self.method.cfg.sparsify_fraction
        )
        params = self.method.prunable(model)
        b = self.method.cfg.block_size
        self.layouts = {k: layout_of(params[k], b) for k in self.method.eligible(model)}
        self.sizes = {k: v.sizes() for k, v in self.layouts.items()}
        # the block masks, read off the element masks (restored by a resume): a block is kept
        # when any of its weights is. Kept on the host, updated with every change.
        self.kept = {
            k: layout.norms(self.masks[k].float()).gt(0).cpu() for k, layout in self.layouts.items()
        }

    def on_step_end(self, step: int, model: nn.Module) -> None:
        assert self.schedule is not None
        done = step + 1  # completed optimizer steps: the next step trains in phase ``now``
        before, now = self.schedule.at(done - 1), self.schedule.at(done)
        if now.key != before.key and now.kind in self.reset_on:
            self.reset_optimizer()
        if now.kind == "dense" and before.kind != "dense":
            # decompress: every block back, its weights restart at zero (they were held there)
            self._set(model, {k: torch.ones_like(v) for k, v in self.kept.items()})
        elif now.kind == "sparsify" or (now.kind == "sparse" and before.kind != "sparse"):
            self._sparsify(model, self.method.target(now.tau))

    def reset_optimizer(self) -> None:
        """Forget momentum (and Adam's moments): the next step starts them afresh."""
        assert self.optimizer is not None, "the Trainer hands callbacks the optimizer"
        self.optimizer.state.clear()
        self.resets += 1

    @torch.no_grad()
    def _sparsify(self, model: nn.Module, target: float) -> None:
        if not self._may_drop(target):
            return
        scores = self.method.block_scores(model, self.layouts)
        new = blocks_to_prune(scores, self.sizes, self.kept, target, self.method.cfg.scope)
        changed = {k: v.cpu() for k, v in new.items() if not torch.equal(v.cpu(), self.kept[k])}
        if changed:
            self._set(model, changed)

    def _may_drop(self, target: float) -> bool:
        """Whether the target has moved by at least one block since the last drop (checked on
        the host, without ranking): most steps of a sparsification change no mask."""
        gaps = {
            k: target * v.numel - int(self.sizes[k][~self.kept[k]].sum())
            for k, v in self.layouts.items()
        }
        smallest = {k: int(s.min()) for k, s in self.sizes.items()}
        if self.method.cfg.scope == "global":
            return sum(gaps.values()) >= min(smallest.values(), default=1) - 1e-6
        return any(gaps[k] >= smallest[k] - 1e-6 for k in gaps)

    @torch.no_grad()
    def _set(self, model: nn.Module, blocks: Mapping[str, Tensor]) -> None:
        params = self.method.prunable(model)
        elements = {}
        for k, b in blocks.items():
            self.kept[k] = b.cpu()
            elements[k] = self.layouts[k].expand(b.to(params[k].device))
            self.method.on_block_masks(model, k, b)
        self.masks.update(elements)
        self.masks.apply_(params)


class BlockMethod(PruningMethod):
    """What the block methods share: eligible layers, block-mask changes, the report."""

    cfg: BlockConfig
    #: ``sparsity`` counts blocks (of one weight with ``block_size: 1``: weights)
    results = Results(target="blocks")

    def eligible(self, model: nn.Module) -> list[str]:
        b = self.cfg.block_size
        return [
            k
            for k, p in self.prunable(model).items()
            if layout_of(p, b).n_blocks >= self.cfg.min_blocks
        ]

    def on_block_masks(self, model: nn.Module, name: str, blocks: Tensor) -> None:
        """A layer's block mask changed (SA++ keeps a copy in its parametrisation)."""

    def block_report(self, model: nn.Module, masks: Masks) -> dict[str, Any]:
        """Per-layer block density, and the real sparsity beside the nominal one."""
        params = self.prunable(model)
        eligible = set(self.eligible(model))
        layers = {}
        for k, p in params.items():
            layout = layout_of(p, self.cfg.block_size)
            kept = layout.norms(masks[k].float()).gt(0)
            masked = int((~masks[k]).sum())
            layers[k] = {
                "blocks": layout.n_blocks,
                "blocks_kept": int(kept.sum()),
                "block_density": float(kept.float().mean()),
                "dense_too_few_blocks": k not in eligible,
                "weights": p.numel(),
                "sparsity": masked / p.numel(),
            }
        total = sum(v["weights"] for v in layers.values())
        masked = sum(v["weights"] * v["sparsity"] for v in layers.values())
        return {
            "block_size": self.cfg.block_size,
            "nominal_sparsity": self.cfg.sparsity,
            "real_sparsity": masked / max(1, total),
            "layers_skipped": sorted(k for k, v in layers.items() if v["dense_too_few_blocks"]),
            "layers": layers,
        }


class BlockPhaseMethod(BlockMethod, ABC):
    """A block method driven by :class:`BlockPhases`: a target along each sparse segment and
    the block scores that decide which blocks go (SA++: attention; ACDC: L2 norm)."""

    @abstractmethod
    def target(self, tau: float) -> float:
        """Sparsity at position ``tau`` in [0, 1] of a sparsify segment."""

    @abstractmethod
    def block_scores(
        self, model: nn.Module, layouts: Mapping[str, BlockLayout]
    ) -> dict[str, Tensor]:
        """One score per block of each eligible layer; the lowest go first."""
