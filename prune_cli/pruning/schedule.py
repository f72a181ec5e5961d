"""Schedules: how much is pruned when.

- Level schedules (one-shot and iterative, the open_lth "levels"): the cumulative sparsity to reach
  at the end of pruning step k, either a fixed fraction of the remaining weights per level
  (lottery ticket: 20%) or a geometric interpolation to a final target.
- Rewind points: where the surviving weights restart after pruning (``init``, ``none``, ``<k>ep``).
- Gradual schedules (cubic, Zhu and Gupta 2017) live with the methods that use them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prune_cli.errors import ConfigError


def level_target(level: int, levels: int, sparsity: float | None, rate: float | None) -> float:
    """Cumulative sparsity after pruning step ``level`` (1-based) of ``levels``.

    With ``rate`` (a fraction of the remaining weights per level) the target after k steps is
    1 - (1 - rate)^k. Otherwise the per-level fraction is chosen so that after ``levels`` steps
    exactly ``sparsity`` is reached: 1 - (1 - sparsity)^(k / levels).
    """
    if level < 1:
        return 0.0
    if rate is not None:
        return 1.0 - (1.0 - rate) ** level
    assert sparsity is not None
    return 1.0 - (1.0 - sparsity) ** (min(level, levels) / levels)


@dataclass(frozen=True)
class RewindPoint:
    """Where weights go after pruning: ``init`` (initialisation), ``none`` (keep the trained
    weights: fine-tuning) or epoch ``k`` of the dense level (``"2ep"``, late rewinding)."""

    kind: str  # "init" | "none" | "epoch"
    epoch: int = 0

    @classmethod
    def parse(cls, text: str) -> RewindPoint:
        text = str(text).strip()
        if text in ("init", "none"):
            return cls(text)
        match = re.fullmatch(r"(\d+)ep", text)
        if match:
            epoch = int(match.group(1))
            return cls("init") if epoch == 0 else cls("epoch", epoch)
        raise ConfigError(
            f"rewind must be 'init', 'none' or '<k>ep' (for example '2ep'), got {text!r}"
        )
