"""Measures that need no data: magnitude (Han et al. 2015), the filter L1 norm (Li et al.,
"Pruning Filters for Efficient ConvNets", ICLR 2017), random, and the filter statistics read off
the network (BatchNorm |gamma|, Liu et al. 2017's network slimming criterion; the mean |output|
of a filter)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from prune_cli.errors import ConfigError
from prune_cli.pruning.measures import IMPORTANCE, Measure, Site, UnitSites
from prune_cli.seeds import derive_seed

if TYPE_CHECKING:
    from prune_cli.pruning.method import PruneContext


@IMPORTANCE.register("magnitude")
@dataclass
class Magnitude(Measure):
    """|theta| per weight; ||W_f||_2 per filter."""

    def weight(self, site: Site) -> Tensor:
        return site.theta.abs()

    def filter(self, site: Site) -> Tensor:
        return site.rows(site.theta**2).sum(dim=1).sqrt()


@IMPORTANCE.register("l1")
@dataclass
class L1Norm(Measure):
    """||W_f||_1 = sum |theta| per filter (Li et al. 2017); |theta| per weight."""

    def weight(self, site: Site) -> Tensor:
        return site.theta.abs()


@IMPORTANCE.register("random")
@dataclass
class Random(Measure):
    """Uniform random scores, seeded by (run seed, level) so that a resumed run agrees: one
    generator draws every tensor in order (per weight) or every unit in order (per filter)."""

    needs: ClassVar[frozenset[str]] = frozenset()

    def weights(self, sites: Mapping[str, Site], ctx: PruneContext | None) -> dict[str, Tensor]:
        assert ctx is not None, "random scores are seeded by the run's context"
        gen = torch.Generator(device="cpu").manual_seed(
            derive_seed(ctx.seed, "random-score", ctx.level)
        )
        return {
            k: torch.rand(s.theta.shape, generator=gen).to(s.theta.device) for k, s in sites.items()
        }

    def units(self, units: Mapping[str, UnitSites], ctx: PruneContext | None) -> dict[str, Tensor]:
        assert ctx is not None, "random scores are seeded by the run's context"
        gen = torch.Generator(device="cpu").manual_seed(
            derive_seed(ctx.seed, "random-filter-score", ctx.level)
        )
        return {
            r: torch.rand(u.sites[0].theta.shape[0], generator=gen).to(u.sites[0].theta.device)
            for r, u in units.items()
        }


@IMPORTANCE.register("bn_gamma")
@dataclass
class BatchNormScale(Measure):
    """|gamma| of the filter's BatchNorm (summed over the unit's BatchNorms; with
    ``depthwise_score=skip``, over those that do not normalise a depthwise convolution)."""

    needs: ClassVar[frozenset[str]] = frozenset({"bn"})
    per_weight: ClassVar[bool] = False

    def units(self, units: Mapping[str, UnitSites], ctx: PruneContext | None) -> dict[str, Tensor]:
        missing = [r for r, u in units.items() if not u.bn]
        if missing:
            raise ConfigError(f"measure bn_gamma needs BatchNorm after {', '.join(missing)}")
        rule = self.settings.depthwise_score
        return {r: sum(b.abs() for b in u.scored(rule)[1]) for r, u in units.items()}


@IMPORTANCE.register("activation")
@dataclass
class MeanActivation(Measure):
    """Mean |output| of the filter over the scoring sample (its convolution's or linear layer's
    output, before normalisation; over every position and token), summed over the unit's coupled
    tensors."""

    needs: ClassVar[frozenset[str]] = frozenset({"activations"})
    per_weight: ClassVar[bool] = False

    def filter(self, site: Site) -> Tensor:
        assert site.activation is not None
        return site.activation
