"""A run's results as tidy rows, and the files they are written to (the results contract).

The rows live in memory and travel inside the checkpoint, so a resumed run continues the same
tables; the files are rewritten from them when a session starts and appended to afterwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prune_cli.io import append_csv, save_csv
from prune_cli.paths import RunPaths
from prune_cli.reporting.distortion import DISTORTION_HEADER

METRICS_HEADER = ("level", "epoch", "split", "metric", "value")
RECALL_HEADER = ("level", "stage", "class", "class_name", "support", "recall")
PQI_HEADER = ("level", "stage", "scope", "name", "p", "q", "pqi")
GINI_HEADER = ("level", "stage", "scope", "name", "gini")
SPARSITY_HEADER = ("level", "name", "numel", "nonzero", "sparsity")
LEVEL_KEYS = ("level", "sparsity", "params_nonzero", "val_accuracy", "test_accuracy", "test_loss")


@dataclass
class RunRecords:
    metrics: list[tuple] = field(default_factory=list)
    recall: list[tuple] = field(default_factory=list)
    pqi: list[tuple] = field(default_factory=list)
    gini: list[tuple] = field(default_factory=list)  # absent from checkpoints before gini.csv
    sparsity: list[tuple] = field(default_factory=list)
    distortion: list[tuple] = field(default_factory=list)
    levels: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunRecords:
        return cls(**{k: list(v) for k, v in state.items()})

    def _tables(self, paths: RunPaths) -> dict[str, tuple[list[tuple], tuple[str, ...], Path]]:
        return {
            "metrics": (self.metrics, METRICS_HEADER, paths.metrics),
            "recall": (self.recall, RECALL_HEADER, paths.per_class_recall),
            "pqi": (self.pqi, PQI_HEADER, paths.pqi),
            "gini": (self.gini, GINI_HEADER, paths.gini),
            "sparsity": (self.sparsity, SPARSITY_HEADER, paths.sparsity),
            "distortion": (self.distortion, DISTORTION_HEADER, paths.recall_distortion),
        }

    def write(self, paths: RunPaths, durable: bool = True) -> None:
        """Rewrite every results file from the rows (atomically)."""
        for rows, header, path in self._tables(paths).values():
            save_csv(rows, header, path, durable)

    def append(self, paths: RunPaths, written: dict[str, int]) -> None:
        """Append the rows past ``written[table]`` to files that already hold the others."""
        for name, (rows, _, path) in self._tables(paths).items():
            if len(rows) > written.get(name, 0):
                append_csv(rows[written.get(name, 0) :], path)

    def counts(self) -> dict[str, int]:
        return {name: len(rows) for name, (rows, _, _) in self._tables(RunPaths(Path())).items()}

    def recall_of(self, level: int, stage: str) -> list[float]:
        """Per-class test recall of a level's stage, in class order."""
        rows = sorted(
            (r for r in self.recall if r[0] == level and r[1] == stage), key=lambda r: r[2]
        )
        return [r[5] for r in rows]
