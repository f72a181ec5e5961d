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

Phases (``phases``: boundaries as fractions of the training steps; the machinery it shares with
ACDC is in ``prune_cli/pruning/phases.py``): the segments they cut alternate dense (mask all
ones, logits train) and sparse, starting dense and ending sparse.
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

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prune_cli.callbacks import Callback
from prune_cli.errors import ConfigError
from prune_cli.io import save_torch
from prune_cli.pruning.blocks import BlockLayout, layout_of
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS, PruneContext, check_range
from prune_cli.pruning.phases import BlockPhaseConfig, BlockPhaseMethod, BlockPhases
from prune_cli.pruning.results import Network, Results

#: the demo's schedule (LeNet-5 on digits, 15 epochs) as fractions of training: dense 30% (the
#: network learns slowly at first), sparse 10%, dense 10%, sparse 10%, dense 10%, final sparse
#: 30%. The paper's is ``phases.PAPER_PHASES`` (experiment=sapp_resnet50_imagenet).
DEMO_PHASES = [0.3, 0.4, 0.5, 0.6, 0.7]

#: suffix torch.nn.utils.parametrize gives the raw weight of a parametrised ``weight``
_ORIGINAL = "parametrizations.weight.original"


@dataclass
class SappConfig(BlockPhaseConfig):
    name: str = "sapp"
    #: 4 x 4 blocks suit the demo; the paper's ImageNet ResNet-50 has 16 x 16
    block_size: int = 4
    #: the paper's 100, which leaves LeNet-5's first convolution and its classifier dense (real
    #: sparsity about 86% at the nominal 90%)
    min_blocks: int = 100
    phases: list[float] = field(default_factory=lambda: list(DEMO_PHASES))
    #: c of the sparsification schedule s (1 - e^(-c tau)) / (1 - e^(-c))
    c: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.phases[-1] >= 1.0:
            raise ConfigError("method.phases are fractions of training: all must be < 1")
        check_range("c", self.c, 0.0, low_open=True)


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


#: the folded plain network's file in the run directory
FOLDED = "folded_model.pt"


@METHODS.register("sapp")
class SequentialAttentionPP(BlockPhaseMethod):
    Config = SappConfig
    #: the attention folded into plain weights (``folded_model.pt``); its target counts blocks
    results = Results(
        files=(FOLDED,), networks=(Network("folded_model", "folded"),), target="blocks"
    )
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
        # atomic: a run killed while it writes leaves no half-written file under the final name
        save_torch({"model": ctx.model_name, "state_dict": state}, ctx.artifact_path(FOLDED))
        info["folded_model"] = FOLDED
        return info


#: the plain network with W * A * mask folded into its weights (loads into the model class)


@torch.no_grad()
def fold(model: nn.Module) -> None:
    """Write ``W * A * mask`` into each attended layer's weight and remove the
    parametrisation: the model computes the same function as a plain network."""
    for _name, module in list(model.named_modules()):
        if parametrize.is_parametrized(module, "weight") and any(
            isinstance(p, BlockAttention) for p in module.parametrizations.weight
        ):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
