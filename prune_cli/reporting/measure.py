"""What a run measures at each stage of a level, as rows of :class:`RunRecords`.

- ``record_stage``: per-class test recall and the PQ index (Diao et al. 2023) of all prunable
  weights and of each layer, over unmasked weights, for every (p, q) of the grid; called right
  after pruning (stage ``pruned``) and for the selected model of a level (stage ``trained``).
- ``record_level``: the level's summary entry (sparsity, non-zero parameters, accuracies, the
  recall distortion alpha against the dense level) and its per-tensor sparsity rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prune_cli.metrics import per_class_recall, pq_index, pq_index_rows
from prune_cli.reporting.distortion import distortion_rows
from prune_cli.reporting.records import RunRecords

if TYPE_CHECKING:  # types only: reporting does not depend on training or pruning
    from prune_cli.pruning.mask import Masks
    from prune_cli.training.loop import EvalResult


def global_pqi(params: Mapping[str, Tensor], masks: Masks, p: float, q: float) -> float:
    weights = torch.cat([v.detach().reshape(-1) for v in params.values()])
    mask = torch.cat([masks[k].reshape(-1) for k in params])
    return pq_index(weights, mask, p, q)


def record_stage(
    records: RunRecords,
    level: int,
    stage: str,
    evaluation: EvalResult,
    class_names: Sequence[str],
    params: Mapping[str, Tensor],
    masks: Masks,
    pqi_grid: Sequence[Sequence[float]],
) -> None:
    recall, support = per_class_recall(evaluation.confusion)
    for c, name in enumerate(class_names):
        records.recall.append((level, stage, c, name, int(support[c]), float(recall[c])))
    for p, q in pqi_grid:
        records.pqi.append((level, stage, "global", "all", p, q, global_pqi(params, masks, p, q)))
        for name, w in params.items():
            value = pq_index_rows(w.reshape(1, -1), masks[name].reshape(1, -1), p, q)
            records.pqi.append((level, stage, "layer", name, p, q, float(value[0])))


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
    **extra: Any,
) -> dict[str, Any]:
    """Append the level's sparsity rows and summary entry (after ``record_stage(trained)``)."""
    counts = {k: (p.numel(), int(torch.count_nonzero(p))) for k, p in params.items()}
    for name, (numel, nonzero) in counts.items():
        records.sparsity.append((level, name, numel, nonzero, 1.0 - nonzero / numel))
    prunable = sum(n for n, _ in counts.values())
    zeros = sum(n - nz for n, nz in counts.values())
    entry = {
        "level": level,
        "sparsity": zeros / max(1, prunable),
        "params_nonzero": sum(int(torch.count_nonzero(t)) for t in model.parameters()),
        "val_accuracy": None if val is None else val.accuracy,
        "val_loss": None if val is None else val.loss,
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "pruned_test_accuracy": _pruned_accuracy(records, level),
        "mask_sparsity": masks.sparsity(),
        **extra,
        "pqi": _trained_pqi(records, level, pqi_grid),
    }
    entry["alpha"] = _distortion(records, level, test.accuracy)
    records.levels.append(entry)
    return entry
