"""SequentialAttention++ block sparsification (Yasuda et al. 2024, "SequentialAttention++ for
Block Sparsification: Differentiable Pruning Meets Combinatorial Optimization", arXiv
2402.17902; METHODS.md section 4).

Blocks (``prune_cli/pruning/blocks.py``): every prunable weight is seen as a (kh*kw*Cin) x Cout
matrix (a torch OIHW convolution weight ``W`` as ``W.permute(2, 3, 1, 0).reshape(kh*kw*Cin,
Cout)``, a linear weight ``(out, in)`` as ``W.T``) cut into ``block_size`` x ``block_size``
blocks; edge blocks count their real weights. Layers with fewer than ``min_blocks`` blocks stay
dense (the summary reports the real sparsity of the network beside the nominal one).

Attention: each eligible layer gets a 1-d ``logits`` parameter, one entry per block (1-d, so it
is never itself a prunable weight and the run's weight decay applies to it like to any other
parameter). ``A = n_blocks * softmax(logits)``, so A = 1 everywhere at initialisation and the
parametrised network equals the dense one. The layer computes with ``W * A * mask`` (A and the
block mask broadcast over each block) through ``torch.nn.utils.parametrize``.

Phases (``phases``: boundaries as fractions of the training steps): the segments they cut
alternate dense (mask all ones, logits train) and sparse, starting dense and ending sparse.
A sparse segment first *sparsifies* over ``sparsify_fraction`` of its length: tau goes from 0 to
1 and each layer drops its lowest-A blocks to ``sparsity(tau) = s (1 - e^(-c tau)) / (1 -
e^(-c))`` (masks nested, uniform per layer), then trains *sparse* with the mask frozen (logits
still train). Blocks revived by a dense phase restart at zero (the masked weights were held at
zero). The optimizer's state is cleared at every phase change (dense, sparsify, sparse); the
learning-rate schedule runs on over the whole training. Everything derives from the global step
index, so a resumed run repeats an uninterrupted one exactly.

``finalize`` folds ``W * A * mask`` into plain weights, removes the parametrisation (the model
is then the registered model class again), checks that the outputs did not change, saves
``folded_model.pt`` (a plain state dict) and reports the block density of every layer.

The paper leaves open how a sparse segment splits between sparsification and sparse training
(``sparsify_fraction``) and gives the range of A only as "[n*density, n/density]"; see
``attention_range``.
"""

from __future__ import annotations

import bisect
import fnmatch
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prune_cli.callbacks import Callback
from prune_cli.errors import ConfigError
from prune_cli.pruning.blocks import BlockLayout, blocks_to_prune, layout_of
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS, MethodConfig, PruneContext, PruningMethod

#: the paper's ImageNet ResNet-50 schedule as fractions of training: 10% dense, then 7 cycles of
#: 5% sparse + 5% dense (the last dense one 5% longer: 10%), then the final 15% sparse
PAPER_PHASES = [0.10, *(round(0.15 + 0.05 * i, 2) for i in range(13)), 0.85]

#: suffix torch.nn.utils.parametrize gives the raw weight of a parametrised ``weight``
_ORIGINAL = "parametrizations.weight.original"


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
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"method.sparsity must be in [0, 1), got {self.sparsity}")
        if self.block_size < 1:
            raise ConfigError(f"method.block_size must be >= 1, got {self.block_size}")
        if self.min_blocks < 0:
            raise ConfigError(f"method.min_blocks must be >= 0, got {self.min_blocks}")


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
        if not 0.0 <= self.sparsify_fraction <= 1.0:
            raise ConfigError("method.sparsify_fraction must be in [0, 1]")
        p = list(self.phases)
        if len(p) % 2 == 0 or p[0] <= 0 or any(b <= a for a, b in itertools.pairwise(p)):
            raise ConfigError(
                "method.phases must be an odd number of increasing boundaries after 0 "
                "(dense, sparse, ..., dense, sparse)"
            )


@dataclass
class SappConfig(BlockPhaseConfig):
    name: str = "sapp"
    min_blocks: int = 100
    #: c of the sparsification schedule s (1 - e^(-c tau)) / (1 - e^(-c))
    c: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.phases[-1] >= 1.0:
            raise ConfigError("method.phases are fractions of training: all must be < 1")
        if self.c <= 0:
            raise ConfigError(f"method.c must be > 0, got {self.c}")


def exponential_sparsity(tau: float, s: float, c: float) -> float:
    """SA++'s sparsification schedule: 0 at tau = 0, s at tau = 1, fast at first."""
    tau = min(max(tau, 0.0), 1.0)
    return s * (1.0 - math.exp(-c * tau)) / (1.0 - math.exp(-c))


def attention_range(sparsity: float) -> tuple[float, float]:
    """The interval A is clipped to.

    The paper writes "[n*density, n/density]". Read literally with A = n * softmax (mean 1,
    n = number of blocks) the lower end n*density would exceed the mean for any layer with more
    than 1/density blocks, an impossible range; we read it as bounds on the softmax weight p
    relative to the uniform 1/n, i.e. p in [density/n, 1/(n*density)], which for A = n*p is
    [density, 1/density]: no block's weights are shrunk below the density or amplified above
    its inverse, and A = 1 (uniform) is always inside. density = 1 - target sparsity.
    """
    density = 1.0 - sparsity
    return density, 1.0 / density


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


class BlockAttention(nn.Module):
    """The parametrisation ``W -> W * A * mask`` of one layer, A and mask per block."""

    def __init__(self, layout: BlockLayout, sparsity: float) -> None:
        super().__init__()
        self.layout = layout
        self.logits = nn.Parameter(torch.zeros(layout.n_blocks))
        # persistent: saved with the model, so a checkpoint restores the frozen mask
        self.register_buffer("block_mask", torch.ones(layout.n_blocks, dtype=torch.bool))
        self.low, self.high = attention_range(sparsity)

    def attention(self) -> Tensor:
        n = self.logits.numel()
        return (n * torch.softmax(self.logits, dim=0)).clamp(self.low, self.high)

    def forward(self, weight: Tensor) -> Tensor:
        scale = self.attention() * self.block_mask.to(self.logits.dtype)
        return weight * self.layout.expand(scale).to(weight.dtype)


def plain_name(name: str) -> str:
    """``conv.parametrizations.weight.original`` -> ``conv.weight``: masks and reports keep
    the parameter names of the plain network."""
    return name.removesuffix(_ORIGINAL) + "weight" if name.endswith(_ORIGINAL) else name


def attention_modules(model: nn.Module) -> dict[str, BlockAttention]:
    """The SA++ parametrisation of each attended layer, by its weight's plain name."""
    out = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, BlockAttention):
                    out[f"{name}.weight" if name else "weight"] = p
    return out


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


@METHODS.register("sapp")
class SequentialAttentionPP(BlockPhaseMethod):
    Config = SappConfig
    cfg: SappConfig

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        # the raw weight of a parametrised layer, under the plain network's name
        params = {plain_name(k): p for k, p in model.named_parameters()}
        return {
            k: p
            for k, p in params.items()
            if p.dim() > 1 and not any(fnmatch.fnmatch(k, pat) for pat in self.cfg.ignore)
        }

    def prepare(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        modules = dict(model.named_modules())
        for k in self.eligible(model):
            module = modules[k.rsplit(".", 1)[0]] if "." in k else model
            layout = layout_of(module.weight, self.cfg.block_size)
            # unsafe=False: the parametrisation keeps the weight's shape and dtype
            parametrize.register_parametrization(
                module, "weight", BlockAttention(layout, self.cfg.sparsity)
            )
        return model

    def target(self, tau: float) -> float:
        return exponential_sparsity(tau, self.cfg.sparsity, self.cfg.c)

    def block_scores(
        self, model: nn.Module, layouts: Mapping[str, BlockLayout]
    ) -> dict[str, Tensor]:
        attention = attention_modules(model)
        return {k: attention[k].attention().detach() for k in layouts}

    def on_block_masks(self, model: nn.Module, name: str, blocks: Tensor) -> None:
        attention = attention_modules(model)[name]
        attention.block_mask.copy_(blocks.to(attention.block_mask.device))

    def callbacks(self, level: int, masks: Masks, ctx: PruneContext) -> list[Callback]:
        phases = self.cfg.phases

        def steps_of(steps_per_epoch: int, epochs: int) -> list[int]:
            return [round(f * steps_per_epoch * epochs) for f in phases]

        every = frozenset({"dense", "sparsify", "sparse"})
        return [BlockPhases(self, masks, steps_of, every)] if level == 0 else []

    @torch.no_grad()
    def level_state(self, model: nn.Module) -> dict[str, Tensor]:
        """W * A * mask under each attended layer's plain ``weight`` name, without the logits
        and masks of the parametrisation: a level file loads into the model class. (SA++ has
        one level, so no later level reloads this file into the parametrised network.)"""
        state = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
        for name, module in model.named_modules():
            if parametrize.is_parametrized(module, "weight"):
                state[f"{name}.weight" if name else "weight"] = module.weight.detach().clone()
        return state

    @torch.no_grad()
    def finalize(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> dict[str, Any]:
        info = self.block_report(model, masks)
        attention = attention_modules(model)
        for k, a in attention.items():
            info["layers"][k]["attention_max"] = float(a.attention().max())
        x = next(iter(ctx.batches(1)))[0]
        model.eval()
        before = model(x)
        fold(model)
        info["fold_max_output_difference"] = float((model(x) - before).abs().max())
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"model": ctx.model_name, "state_dict": state}, ctx.artifact_path(FOLDED))
        info["folded_model"] = FOLDED
        return info


#: the plain network with W * A * mask folded into its weights (loads into the model class)
FOLDED = "folded_model.pt"


@torch.no_grad()
def fold(model: nn.Module) -> None:
    """Write ``W * A * mask`` into each attended layer's weight and remove the
    parametrisation: the model computes the same function as a plain network."""
    for _name, module in list(model.named_modules()):
        if parametrize.is_parametrized(module, "weight") and any(
            isinstance(p, BlockAttention) for p in module.parametrizations.weight
        ):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
