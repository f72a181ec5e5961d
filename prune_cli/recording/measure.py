"""What a run measures at each stage of a level, as rows of :class:`RunRecords`.

- ``record_stage``: per-class test recall, and the PQ index (Diao et al. 2023) and the Gini
  index of all prunable weights and of each layer, over unmasked weights (the PQI for every
  (p, q) of the grid); called right after pruning (stage ``pruned``) and for the selected model
  of a level (stage ``trained``).
- ``record_level``: the level's summary entry (sparsity, non-zero parameters, accuracies, the
  recall distortion alpha against the dense level, compute cost, what pruning disconnected)
  and its per-tensor sparsity rows.

Collapse (issue 9): a level records the units (filters, neurons) left with no non-zero incoming
weight, or no non-zero outgoing weight into the next prunable layer (the inputs of the first
prunable layer are the data, not units), the layers left below :data:`THIN_LAYER` of their
weights, and the classes whose test recall is 0. It is ``collapsed`` when a class has recall 0
or a layer has no weight left: the model no longer tells every class apart. Dead units and
thin layers alone are flagged, not called a collapse: magnitude pruning removes whole neurons
of over-wide layers as a matter of course.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prune_cli.metrics import (
    gini_index,
    per_class_recall,
    pq_index,
    pq_index_rows,
    unconnected_units,
)
from prune_cli.recording.cost import evaluated_weights, level_cost, network_parameters
from prune_cli.recording.distortion import distortion_rows
from prune_cli.recording.records import RunRecords

if TYPE_CHECKING:  # types only: reporting does not depend on training or pruning
    from prune_cli.pruning.mask import Masks
    from prune_cli.training.loop import EvalResult

log = logging.getLogger("prune_cli.measure")

#: a layer with less than this fraction of its weights left is flagged as thin
THIN_LAYER = 0.01


def global_pqi(params: Mapping[str, Tensor], masks: Masks, p: float, q: float) -> float:
    weights = torch.cat([v.detach().reshape(-1) for v in params.values()])
    mask = torch.cat([masks[k].reshape(-1) for k in params])
    return pq_index(weights, mask, p, q)


def global_gini(params: Mapping[str, Tensor], masks: Masks) -> float:
    weights = torch.cat([v.detach().reshape(-1) for v in params.values()])
    mask = torch.cat([masks[k].reshape(-1) for k in params])
    return gini_index(weights, mask)


def record_stage(
    records: RunRecords,
    level: int,
    stage: str,
    evaluation: EvalResult,
    class_names: Sequence[str],
    params: Mapping[str, Tensor],
    masks: Masks,
    pqi_grid: Sequence[Sequence[float]],
    model: nn.Module | None = None,
) -> None:
    """Recall, PQI and Gini rows of a stage. ``model``: the network ``params`` belong to; its
    re-parametrised weights (SA++'s ``W * A * mask``) are measured as the network computes
    with them, not as the raw tensors it trains (:func:`evaluated_weights`)."""
    if model is not None:
        params = evaluated_weights(model, params)
    recall, support = per_class_recall(evaluation.confusion)
    for c, name in enumerate(class_names):
        records.recall.append((level, stage, c, name, int(support[c]), float(recall[c])))
    for p, q in pqi_grid:
        records.pqi.append((level, stage, "global", "all", p, q, global_pqi(params, masks, p, q)))
        for name, w in params.items():
            value = pq_index_rows(w.reshape(1, -1), masks[name].reshape(1, -1), p, q)
            records.pqi.append((level, stage, "layer", name, p, q, float(value[0])))
    records.gini.append((level, stage, "global", "all", global_gini(params, masks)))
    for name, w in params.items():
        records.gini.append((level, stage, "layer", name, gini_index(w, masks[name])))


def _pruned_accuracy(records: RunRecords, level: int) -> float | None:
    """Test accuracy right after pruning: the support-weighted mean of its recall rows."""
    rows = [r for r in records.recall if r[0] == level and r[1] == "pruned"]
    if not rows:
        return None
    return sum(r[4] * r[5] for r in rows) / max(1, sum(r[4] for r in rows))


def _trained_pqi(
    records: RunRecords, level: int, pqi_grid: Sequence[Sequence[float]]
) -> float | None:
    """The trained model's global PQI at the first (p, q) of the grid, as just recorded."""
    if not pqi_grid:
        return None
    p, q = pqi_grid[0]
    key = (level, "trained", "global", "all", p, q)
    return next(r[6] for r in reversed(records.pqi) if tuple(r[:6]) == key)


def _trained_gini(records: RunRecords, level: int) -> float | None:
    key = (level, "trained", "global", "all")
    return next((r[4] for r in reversed(records.gini) if tuple(r[:4]) == key), None)


def collapse(
    records: RunRecords, level: int, params: Mapping[str, Tensor], counts: dict[str, tuple]
) -> dict[str, Any]:
    """What pruning disconnected at this level (see the module docstring)."""
    by_layer: dict[str, dict[str, int]] = {}
    for i, (name, weight) in enumerate(params.items()):
        no_in, no_out = unconnected_units(weight)
        if i == 0:
            no_out = 0  # the first prunable layer's inputs are pixels or features of the data
        if no_in or no_out:
            by_layer[name] = {"no_incoming": no_in, "no_outgoing": no_out}
    thin = {
        name: nonzero / numel
        for name, (numel, nonzero) in counts.items()
        if numel and nonzero / numel < THIN_LAYER
    }
    zero = [
        r[3]
        for r in records.recall
        if r[0] == level and r[1] == "trained" and r[4] > 0 and r[5] == 0
    ]
    empty = any(nonzero == 0 for numel, nonzero in counts.values() if numel)
    return {
        # two totals, not one: a unit cut on both sides would count twice in a sum, and which
        # input of layer l+1 is which output of layer l is the architecture's business
        "units_no_incoming": sum(v["no_incoming"] for v in by_layer.values()),
        "units_no_outgoing": sum(v["no_outgoing"] for v in by_layer.values()),
        "dead_units_by_layer": by_layer,
        "thin_layers": thin,
        "zero_recall_classes": zero,
        "collapsed": bool(zero) or empty,
    }


def cost(
    model: nn.Module, params: Mapping[str, Tensor], input_shape: tuple[int, ...] | None
) -> dict[str, Any]:
    """The level's parameters and MACs; None values (and a log line) where the count fails: a
    measurement must not fail a run that trained for hours."""
    empty = {"params": None, "macs_dense": None, "macs_sparse": None}
    if input_shape is None:
        return empty
    try:
        return level_cost(model, params, input_shape)
    except Exception as exc:  # an op the flop counter cannot trace (the run goes on)
        log.warning("could not count the MACs of this level: %s: %s", type(exc).__name__, exc)
        return empty


def _distortion(records: RunRecords, level: int, accuracy: float) -> float | None:
    """Recall distortion of level k against the dense level 0 (None for level 0)."""
    if level == 0 or not records.levels:
        return None
    rows, value = distortion_rows(
        level,
        records.recall_of(0, "trained"),
        records.levels[0]["test_accuracy"],
        records.recall_of(level, "trained"),
        accuracy,
    )
    records.distortion.extend(rows)
    return value


def record_level(
    records: RunRecords,
    level: int,
    model: nn.Module,
    params: Mapping[str, Tensor],
    masks: Masks,
    val: EvalResult | None,
    test: EvalResult,
    pqi_grid: Sequence[Sequence[float]],
    input_shape: tuple[int, ...] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Append the level's sparsity rows and summary entry (after ``record_stage(trained)``).

    ``input_shape``: (C, H, W) of one sample, for the MAC count (None: not counted). Every
    figure describes the network the level evaluated and saved: re-parametrised weights as
    the forward pass computes them (:func:`evaluated_weights`).
    """
    params = evaluated_weights(model, params)
    counts = {k: (p.numel(), int(torch.count_nonzero(p))) for k, p in params.items()}
    for name, (numel, nonzero) in counts.items():
        records.sparsity.append((level, name, numel, nonzero, 1.0 - nonzero / numel))
    prunable = sum(n for n, _ in counts.values())
    zeros = sum(n - nz for n, nz in counts.values())
    entry = {
        "level": level,
        "sparsity": zeros / max(1, prunable),
        "params_nonzero": sum(
            int(torch.count_nonzero(t)) for t in network_parameters(model).values()
        ),
        "val_accuracy": None if val is None else val.accuracy,
        "val_loss": None if val is None else val.loss,
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "pruned_test_accuracy": _pruned_accuracy(records, level),
        "mask_sparsity": masks.sparsity(),
        **extra,
        "pqi": _trained_pqi(records, level, pqi_grid),
        "gini": _trained_gini(records, level),
        **cost(model, params, input_shape),
        **collapse(records, level, params, counts),
    }
    entry["alpha"] = _distortion(records, level, test.accuracy)
    records.levels.append(entry)
    return entry
