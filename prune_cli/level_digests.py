"""Level files hashed when they are written, so that a damaged one is never recorded as intact.

A run's ``summary.json`` lists every level file with its size and SHA-256 (``files``), and a
shown or reported run is checked against that list (:func:`prune_cli.rundir.verify_files`).
Hashing the files only when the run completes would record a file damaged in the meantime (a
disk error, a stray write during a long later level) as what the run wrote. So each level's
``model.pt`` and ``mask.pt`` are hashed right after they are saved; every summary the run
writes carries the digests so far, a resumed run checks them before it goes on, and the
completed run checks them again before it records them.
"""

from __future__ import annotations

from typing import Any

from prune_cli.errors import UserError
from prune_cli.paths import RunPaths
from prune_cli.rundir import file_digest, verify_files


class LevelDigests:
    """The size and SHA-256 of each level file, as recorded when the run wrote it."""

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        #: ``levels/level_<k>/model.pt`` (relative to the run) -> {"bytes", "sha256"}
        self.files: dict[str, dict[str, Any]] = {}

    def record(self, level: int) -> None:
        """Hash level ``level``'s files, just written."""
        for path in (self.paths.level_model(level), self.paths.level_mask(level)):
            self.files[str(path.relative_to(self.paths.root))] = file_digest(path)

    def resume(self, summary: dict[str, Any] | None, levels_done: int) -> None:
        """Take the digests an earlier session recorded (its last summary) for the levels
        finished before ``levels_done``; a run written before digests were kept has none."""
        recorded = (summary or {}).get("files")
        if not isinstance(recorded, dict):
            return
        done = {
            str(p.relative_to(self.paths.root))
            for k in range(levels_done)
            for p in (self.paths.level_model(k), self.paths.level_mask(k))
        }
        self.files.update({k: v for k, v in recorded.items() if k in done and isinstance(v, dict)})

    def problem(self) -> str | None:
        """Why a level file is not as the run wrote it (missing, truncated, changed), or None."""
        return verify_files(self.paths.root, self.files)

    def check(self) -> None:
        """A one-line ``UserError`` naming the first level file that is not as written."""
        problem = self.problem()
        if problem is not None:
            raise UserError(
                f"{self.paths.root}: {problem}; re-run with overwrite=true to recompute the run"
            )

    def for_summary(self, completed_levels: dict[str, Any]) -> dict[str, Any]:
        """The ``files`` of the completed summary: the digests recorded when written, and for a
        level finished by a version that kept none, its file as it is now."""
        return {**completed_levels, **self.files}
