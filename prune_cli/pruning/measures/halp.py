"""HALP's group Taylor importance (Shen et al., "Structural Pruning via Latency-Saliency
Knapsack", NeurIPS 2022), the score its latency knapsack maximises, as NVlabs/HALP's code
computes it (``prune/importance.py``, ``_calculate_first_order_taylor``).

For a coupled unit (the layers whose output channels are removed together) and channel c::

    halp_c = mean over batches b of | sum over the unit's layers l of T^b_lc |

with T^b_lc = gamma_lc dL_b/dgamma_lc + beta_lc dL_b/dbeta_lc, the BatchNorm that follows layer
l (= sum over positions of y dL_b/dy, y that BatchNorm's output: the first-order loss change of
zeroing the channel), where every layer of the unit has one; where one of them has none, HALP
falls back to T^b_lc = sum over layer l's filter c of W dL_b/dW, for every layer of the unit.
The terms are signed and summed over the unit *before* the absolute value, which is taken per
batch *before* the mean: unlike ``taylor`` (|sum theta g| per layer, g the mean gradient, the
absolute values summed over the unit's layers). Not squared, and no per-layer normalisation:
the code's, though its docstring cites Molchanov et al. 2019's squared form.

What differs from HALP's code:

- The batches are prune-run's scoring sample (``method.samples``, as the other gradient
  measures), scored on the network as it stands at the pruning step, not the training
  iterations before the step (HALP accumulates over the 40 minibatches it trains between steps,
  the weights moving as it does).
- BatchNorm in train mode (batch statistics), as HALP scores while training, with the running
  statistics and every other buffer restored afterwards (``derivatives.preserved``), so scoring
  leaves the model as it was; dropout off (HALP's runs with it on: its masks would come from a
  random state that a resumed run seeds anew, and its scores would differ). The BatchNorm form is
  meaningful in either mode; the conv-weight fallback of a layer that a train-mode BatchNorm
  follows is exactly 0 (the normalisation cancels any rescaling of the filter), as in HALP.
- ``depthwise_score=skip`` leaves the depthwise convolutions (and their BatchNorms) out of the
  unit, as for every measure here.
- Filters only: HALP has no per-weight score, so ``method=flow`` refuses the measure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from prune_cli.pruning.derivatives import Sample
from prune_cli.pruning.measures import IMPORTANCE, Measure, Site, UnitSites

if TYPE_CHECKING:
    from prune_cli.pruning.method import PruneContext


@IMPORTANCE.register("halp")
@dataclass
class Halp(Measure):
    """mean_b |sum over the unit's BatchNorms of gamma g_gamma + beta g_beta| per channel (the
    conv-weight form sum W g where a layer of the unit has no BatchNorm); see the module."""

    needs: ClassVar[frozenset[str]] = frozenset({"channel_taylor"})
    per_weight: ClassVar[bool] = False

    def sample(self, base: Sample) -> Sample:
        # HALP scores while training: batch statistics (the buffers are restored by compute)
        return dataclasses.replace(base, mode="train")

    @staticmethod
    def group(sites: list[Site]) -> Tensor:
        """The unit's per-batch signed terms summed over its layers, (batches, channels): the
        BatchNorm form if every layer has a BatchNorm after it, else the conv-weight form."""
        if all(s.bn_taylor is not None for s in sites):
            terms = [s.bn_taylor for s in sites]
        else:
            terms = [s.w_taylor for s in sites]
        assert all(t is not None for t in terms), "channel_taylor was not computed for the unit"
        return torch.stack(terms).sum(dim=0)  # type: ignore[arg-type]

    def filter(self, site: Site) -> Tensor:
        # a unit of this one layer: HALP's score of a single layer
        return self.group([site]).abs().mean(dim=0)

    def units(self, units: Mapping[str, UnitSites], ctx: PruneContext | None) -> dict[str, Tensor]:
        rule = self.settings.depthwise_score
        return {r: self.group(u.scored(rule)[0]).abs().mean(dim=0) for r, u in units.items()}
