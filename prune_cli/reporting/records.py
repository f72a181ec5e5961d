"""A run's results as tidy rows, and the files they are written to (the results contract).

The rows live in memory and travel inside the checkpoint, so a resumed run continues the same
tables; every file is rewritten atomically from them after each epoch and level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from prune_cli.io import save_csv
from prune_cli.paths import RunPaths
from prune_cli.reporting.distortion import DISTORTION_HEADER

METRICS_HEADER = ("level", "epoch", "split", "metric", "value")
RECALL_HEADER = ("level", "stage", "class", "class_name", "support", "recall")
PQI_HEADER = ("level", "stage", "scope", "name", "p", "q", "pqi")
SPARSITY_HEADER = ("level", "name", "numel", "nonzero", "sparsity")
LEVEL_KEYS = ("level", "sparsity", "params_nonzero", "val_accuracy", "test_accuracy", "test_loss")


@dataclass
class RunRecords:
    metrics: list[tuple] = field(default_factory=list)
    recall: list[tuple] = field(default_factory=list)
    pqi: list[tuple] = field(default_factory=list)
    sparsity: list[tuple] = field(default_factory=list)
    distortion: list[tuple] = field(default_factory=list)
    levels: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunRecords:
        return cls(**{k: list(v) for k, v in state.items()})

    def write(self, paths: RunPaths, durable: bool = True) -> None:
        save_csv(self.metrics, METRICS_HEADER, paths.metrics, durable)
        save_csv(self.recall, RECALL_HEADER, paths.per_class_recall, durable)
        save_csv(self.pqi, PQI_HEADER, paths.pqi, durable)
        save_csv(self.sparsity, SPARSITY_HEADER, paths.sparsity, durable)
        save_csv(self.distortion, DISTORTION_HEADER, paths.recall_distortion, durable)

    def recall_of(self, level: int, stage: str) -> list[float]:
        """Per-class test recall of a level's stage, in class order."""
        rows = sorted(
            (r for r in self.recall if r[0] == level and r[1] == stage), key=lambda r: r[2]
        )
        return [r[5] for r in rows]
