"""Analyses a run may ask for beside its pruning method (``analysis=[NAME]``).

An analysis looks at the run's trained dense model (level 0) once, after the last level, records
its figures in ``summary.json`` under ``analysis.<name>`` and writes its files under
``analysis/<name>/`` in the run directory. ``prune-report`` shows them beside what the methods
reached.

- ``limit``: the fundamental limit of the pruning ratio (Zhang et al., "How Sparse Can We Prune
  a Deep Network", NeurIPS 2024): the actual limit of one-shot global magnitude pruning without
  fine-tuning, and the limit predicted from the weight magnitudes and the Hessian spectrum
  (``prune_cli.pruning.methods.limit.measure_limit``, which ``method=limit`` uses too). The
  paper predicts it for L1-trained networks; on a network trained otherwise it is the paper's
  formula applied as is, and docs/RESULTS.md shows how far that goes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.pruning.mask import Masks, prunable_parameters
from prune_cli.pruning.method import PruneContext
from prune_cli.pruning.methods.limit import LimitConfig, limit_results, measure_limit
from prune_cli.pruning.results import Results
from prune_cli.registry import Registry

#: the analyses' lines go to the run's log like the loop's
log = logging.getLogger("prune_cli.experiment")

#: method=limit's settings that belong to its training, not to the measurement
TRAINING_ONLY = ("name", "ignore", "l1", "l1_scope")


def limit_settings(settings: Mapping[str, Any] | None) -> LimitConfig:
    """``analysis.limit``'s settings as method=limit's typed config (validated)."""
    fields = dict(settings or {})
    refused = [k for k in fields if k in TRAINING_ONLY]
    if refused:
        raise ConfigError(
            f"analysis.limit: {', '.join(refused)} belong to method=limit's training, not to "
            "the analysis of a run's dense level"
        )
    try:
        return LimitConfig(**fields)
    except TypeError as exc:
        known = ", ".join(sorted(k for k in LimitConfig.__dataclass_fields__ if k != "name"))
        raise ConfigError(f"analysis.limit: {exc}; its settings are {known}") from None
    except ConfigError as exc:
        raise ConfigError(f"analysis.limit: {exc}") from None


def check(analysis: Mapping[str, Any] | None) -> None:
    """Refuse unknown analyses and bad settings when the config is composed."""
    for name, settings in (analysis or {}).items():
        if name not in ANALYSES:
            raise ConfigError(f"unknown analysis {name!r}; choose from {', '.join(ANALYSES)}")
        ANALYSES.get(name).settings(settings)


def run_limit(
    model: nn.Module,
    ctx: PruneContext,
    settings: Mapping[str, Any] | None,
    path: Callable[[str], Path],
) -> dict[str, Any]:
    """The actual and predicted pruning limits of ``model`` (dense) over its prunable weights."""
    params = prunable_parameters(model)
    return measure_limit(model, params, Masks.ones(params), ctx, limit_settings(settings), path)


def run_chosen(
    chosen: Mapping[str, Any],
    model: nn.Module,
    level0: Mapping[str, Any],
    ctx: PruneContext,
    folder: Callable[[str], Path],
) -> dict[str, Any]:
    """Run the chosen analyses on a copy of ``model`` with level 0's weights (``level0``: its
    level file), each writing into ``folder(name)``; each skipped, with the reason, when level 0
    is already sparse (a method that prunes while it trains has no dense model to analyse)."""
    if any(int((~m.bool()).sum()) for m in level0["mask"].values()):
        reason = "level 0 is not dense: the method prunes while it trains"
        return {name: {"skipped": reason} for name in chosen}
    dense = copy.deepcopy(model)
    dense.load_state_dict(level0["model"])
    out: dict[str, Any] = {}
    for name, settings in chosen.items():
        where = folder(name)
        where.mkdir(parents=True, exist_ok=True)
        log.info("analysis %s on the dense level 0", name)
        out[name] = ANALYSES.get(name).run(dense, ctx, settings, where.joinpath)
    return out


def declared(method: Results, chosen: Mapping[str, Any] | None) -> Results:
    """A run's results declaration: its method's, with those of the analyses it chose."""
    for name in chosen or {}:
        method = method.merge(ANALYSES.get(name).results)
    return method


@dataclass(frozen=True)
class Analysis:
    """An analysis: how its settings are validated, how it runs on the dense model, and what
    it adds to the report (its figures in ``summary.json`` under ``analysis.<name>``)."""

    settings: Callable[[Mapping[str, Any] | None], Any]
    run: Callable[[nn.Module, PruneContext, Mapping[str, Any] | None, Callable[[str], Path]], dict]
    results: Results = field(default_factory=Results)


#: the analyses by name (``analysis=[NAME]``; settings in ``conf/analysis/NAME.yaml``)
ANALYSES: Registry[Analysis] = Registry("analysis")

# the limit on any run's dense level: every level row carries the prediction, to compare with
# what the level reached, and the accuracy figure marks it
ANALYSES.register("limit")(
    Analysis(limit_settings, run_limit, limit_results(source="analysis.limit", prefix="analysis_"))
)
