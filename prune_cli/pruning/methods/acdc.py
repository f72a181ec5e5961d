"""SequentialAttention++'s baselines (METHODS.md section 4): ACDC and one-shot block magnitude.

ACDC (Peste, Iofinova, Vladu and Alistarh, "AC/DC: Alternating Compressed/DeCompressed Training
of Deep Neural Networks", NeurIPS 2021), as the authors' code (IST-DASLab/ACDC) runs it: the
phase machinery of SA++ without attention, by epoch. ``phases`` are epoch boundaries of dense
(decompressed) and sparse (compressed) segments, starting dense (warm-up) and ending with the
compressed fine-tuning. At the start of each compressed segment the masks are recomputed at
once, to ``sparsity``, by magnitude: of single weights with ``block_size = 1`` (the paper), of
blocks by their L2 norm otherwise, ranked over all layers (``scope: global``, the authors'
pruner concatenates the layers) or per layer. At the start of each decompressed segment every
weight comes back, the pruned ones restarting at zero, and the optimizer's state (momentum) is
reset (the authors' ``--reset_momentum_after_recycling``); compressing keeps it.

Block magnitude (``method=block_magnitude``): train dense (level 0), prune the blocks of least
L2 norm to ``sparsity`` in one shot (per layer by default, like SA++; layers with fewer than
``min_blocks`` blocks stay dense), then fine-tune (level 1, ``train.retrain``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from prune_cli.callbacks import Callback
from prune_cli.errors import ConfigError
from prune_cli.pruning.blocks import BlockLayout, blocks_to_prune, layout_of
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS, PruneContext
from prune_cli.pruning.phases import (
    BlockConfig,
    BlockMethod,
    BlockPhaseConfig,
    BlockPhaseMethod,
    BlockPhases,
)

#: the demo's schedule (LeNet-5 on digits, 15 epochs), SA++'s demo fractions in epochs: dense
#: 0-4.5, compressed 4.5-6, dense 6-7.5, compressed 7.5-9, dense 9-10.5, compressed 10.5-15 (a
#: shorter warm-up prunes LeNet-5 before it has learnt anything, and it never recovers). The
#: authors' ImageNet ResNet-50 schedule (100 epochs) is 10, 15, 20, ..., 75, 85: dense to epoch
#: 10, compressed and decompressed for 5 epochs each up to 75, decompressed 75-85, compressed
#: 85-100 (experiment=acdc_resnet50_imagenet gives SA++'s, in epochs).
DEMO_PHASES = [4.5, 6.0, 7.5, 9.0, 10.5]


@dataclass
class AcdcConfig(BlockPhaseConfig):
    name: str = "acdc"
    #: 1 = single weights (the paper); B > 1 = B x B blocks ranked by L2 norm
    block_size: int = 1
    #: epoch boundaries (fractions allowed): dense, sparse, ..., dense, sparse
    phases: list[float] = field(default_factory=lambda: list(DEMO_PHASES))
    #: ACDC compresses at once when a sparse phase starts
    sparsify_fraction: float = 0.0
    #: one magnitude ranking over all layers (the authors), or the same sparsity per layer
    scope: str = "global"


def block_norms(model: nn.Module, method: BlockMethod, layouts: Mapping[str, BlockLayout]):
    params = method.prunable(model)
    return {k: layout.norms(params[k]) for k, layout in layouts.items()}


@METHODS.register("acdc")
class Acdc(BlockPhaseMethod):
    Config = AcdcConfig
    cfg: AcdcConfig

    def target(self, tau: float) -> float:
        del tau  # no gradual schedule: a compressed phase is at the target from its start
        return self.cfg.sparsity

    def block_scores(
        self, model: nn.Module, layouts: Mapping[str, BlockLayout]
    ) -> dict[str, Tensor]:
        return block_norms(model, self, layouts)

    def callbacks(self, level: int, masks: Masks, ctx: PruneContext) -> list[Callback]:
        phases = self.cfg.phases

        def steps_of(steps_per_epoch: int, epochs: int) -> list[int]:
            if phases[-1] >= epochs:
                raise ConfigError(
                    f"method.phases end at epoch {phases[-1]}, not before the last epoch "
                    f"({epochs}): ACDC must end with a compressed phase"
                )
            return [round(e * steps_per_epoch) for e in phases]

        # the authors reset momentum when decompressing only
        return [BlockPhases(self, masks, steps_of, frozenset({"dense"}))] if level == 0 else []

    def finalize(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> dict[str, Any]:
        return self.block_report(model, masks)


@dataclass
class BlockMagnitudeConfig(BlockConfig):
    name: str = "block_magnitude"
    #: SA++'s demo blocks (``SappConfig``), so that the two compare on the same blocks
    block_size: int = 4
    min_blocks: int = 100


@METHODS.register("block_magnitude")
class BlockMagnitude(BlockMethod):
    Config = BlockMagnitudeConfig
    cfg: BlockMagnitudeConfig

    def num_levels(self) -> int:
        return 1

    def prune(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> Mapping[str, Tensor]:
        params = self.prunable(model)
        layouts = {k: layout_of(params[k], self.cfg.block_size) for k in self.eligible(model)}
        kept = {k: v.norms(masks[k].float()).gt(0) for k, v in layouts.items()}
        sizes = {k: v.sizes() for k, v in layouts.items()}
        scores = block_norms(model, self, layouts)
        new = blocks_to_prune(scores, sizes, kept, self.cfg.sparsity, self.cfg.scope)
        return {**masks, **{k: layouts[k].expand(new[k].to(masks[k].device)) for k in new}}

    def finalize(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> dict[str, Any]:
        return self.block_report(model, masks)
