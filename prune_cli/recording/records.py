"""A run's results as tidy rows, and the files they are written to (the results contract).

The rows live in memory; the files are rewritten from them when a session starts and appended
to afterwards. The checkpoint carries only the rows of the level in progress (``tail``) and how
many rows the finished levels hold (``offset``): those are in the files, flushed to the disk
when their level finished, and a resumed run reads them back with their types
(:meth:`RunRecords.from_checkpoint`). So a checkpoint does not grow with the levels.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prune_cli.io import append_csv, save_csv
from prune_cli.paths import RunPaths
from prune_cli.recording.distortion import DISTORTION_HEADER

METRICS_HEADER = ("level", "epoch", "split", "metric", "value")
RECALL_HEADER = ("level", "stage", "class", "class_name", "support", "recall")
PQI_HEADER = ("level", "stage", "scope", "name", "p", "q", "pqi")
GINI_HEADER = ("level", "stage", "scope", "name", "gini")
SPARSITY_HEADER = ("level", "name", "numel", "nonzero", "sparsity")
#: the type of each column of each table, to read rows back from the files as they were written
COLUMN_TYPES: dict[str, tuple[type, ...]] = {
    "metrics": (int, int, str, str, float),
    "recall": (int, str, int, str, int, float),
    "pqi": (int, str, str, str, float, float, float),
    "gini": (int, str, str, str, float),
    "sparsity": (int, str, int, int, float),
    "distortion": (int, int, float, float, float, float, float),
}
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

    def checkpoint_state(self, offset: dict[str, int]) -> dict[str, Any]:
        """The rows past ``offset`` (the level in progress), the offset, and the level list."""
        tables = self._tables(RunPaths(Path()))
        return {
            "offset": {name: offset.get(name, 0) for name in tables},
            "tail": {name: rows[offset.get(name, 0) :] for name, (rows, _, _) in tables.items()},
            "levels": list(self.levels),
        }

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], paths: RunPaths) -> RunRecords:
        """Rows of the finished levels read back from the files, then the checkpoint's own
        (a checkpoint written before this format holds every row itself)."""
        if "offset" not in state:
            return cls.from_state(state)
        records = cls(levels=list(state["levels"]))
        for name, (rows, header, path) in records._tables(paths).items():
            count = state["offset"].get(name, 0)
            rows.extend(read_rows(path, header, COLUMN_TYPES[name], count))
            rows.extend(tuple(r) for r in state["tail"].get(name, []))
        return records

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

    def append(self, paths: RunPaths, written: dict[str, int], durable: bool = False) -> None:
        """Append the rows past ``written[table]`` to files that already hold the others."""
        for name, (rows, _, path) in self._tables(paths).items():
            if len(rows) > written.get(name, 0) or durable:
                append_csv(rows[written.get(name, 0) :], path, durable)

    def counts(self) -> dict[str, int]:
        return {name: len(rows) for name, (rows, _, _) in self._tables(RunPaths(Path())).items()}

    def recall_of(self, level: int, stage: str) -> list[float]:
        """Per-class test recall of a level's stage, in class order."""
        rows = sorted(
            (r for r in self.recall if r[0] == level and r[1] == stage), key=lambda r: r[2]
        )
        return [r[5] for r in rows]


def read_rows(path: Path, header: tuple[str, ...], types: tuple[type, ...], count: int) -> list:
    """The first ``count`` rows of a results file, typed; an empty cell is None. A file that
    is missing, has another header or fewer rows is a one-line error."""
    from prune_cli.errors import UserError

    fix = "the results files no longer match the checkpoint; rerun with overwrite=true"
    if count == 0:
        return []
    try:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            if tuple(next(reader, ())) != header:
                raise UserError(f"{path} does not start with its header: {fix}")
            rows = []
            for line in reader:
                if len(rows) == count:
                    break
                rows.append(
                    tuple(None if v == "" else t(v) for t, v in zip(types, line, strict=True))
                )
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: {exc}; {fix}") from None
    if len(rows) < count:
        raise UserError(f"{path} holds {len(rows)} rows of finished levels, not {count}: {fix}")
    return rows
