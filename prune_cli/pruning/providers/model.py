"""Needs that nothing computes: the measure reads them off the model itself.

``weights``: theta, which every ``Site`` holds; ``bn``: the BatchNorm scales of a filter unit,
which the filter method hands to a measure in ``UnitSites.bn``. They are registered so that a
measure may name them and validation knows them.
"""

from __future__ import annotations

from prune_cli.pruning.derivatives import NEEDS, Provider

NEEDS.register("weights")(Provider("weights", (), None, sample=False, context=False))
NEEDS.register("bn")(Provider("bn", (), None, sample=False, context=False))
