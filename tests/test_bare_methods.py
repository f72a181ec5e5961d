"""Every registered method, run bare on a shortened demo, shows what it does (issue 10).

Bare = ``method=NAME`` with the method's own defaults (its YAML may select a train preset, as
gRDA and DNS do), on LeNet-5 and the bundled digits; shortened = fewer epochs and levels, so that
the whole file takes about two minutes on two cores. Each run must end sparse, at the method's
intended sparsity, with accuracy near its dense level (or, for the methods without one, near
what the dense model reaches); random pruning must collapse (the finding the README reports).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_config

from prune_cli.config import group_options
from prune_cli.experiment import Experiment

pytestmark = pytest.mark.slow

#: the shortened demo of each method: fewer epochs and levels, the method's own settings kept
SHORT: dict[str, list[str]] = {
    "magnitude": ["train.epochs=10", "method.levels=1"],
    "random": ["train.epochs=10"],
    "lt": ["train.epochs=10", "method.levels=2"],
    "os": ["train.epochs=10", "method.levels=2"],
    "sap": ["train.epochs=10", "method.levels=2"],
    "gradient": ["train.epochs=10"],
    "undecayed": ["train.epochs=10"],
    "gmp": ["train.epochs=10", "method.end_epoch=7"],
    "flow": ["train.epochs=10"],
    "filter": [],  # its early schedule (5 one-epoch rounds) needs the whole demo
    # gRDA's sparsity grows with the steps taken (threshold ~ (n lr)^mu): its whole demo
    "grda": [],
    # DNS recovers from its first surgery while pruned weights splice back: half its demo
    "dns": ["train.epochs=10", "train.retrain.epochs=20"],
    "block_magnitude": ["train.epochs=10"],
}
#: methods whose own test files run them bare on a shortened demo, with bounds
ELSEWHERE = {
    "sapp": "tests/test_sapp.py",
    "acdc": "tests/test_sapp.py",
    "limit": "tests/test_limit.py",
    "crossword": "tests/test_crossword.py",
}

#: (lowest final sparsity, highest final sparsity, largest loss of test accuracy against the
#: dense level in points; None: the method has no dense level, see DENSE_FLOOR)
BOUNDS: dict[str, tuple[float, float, float | None]] = {
    "magnitude": (0.899, 0.901, 3.0),
    "lt": (0.35, 0.37, 3.0),  # 1 - 0.8^2
    "os": (0.35, 0.37, 3.0),
    "sap": (0.05, 0.6, 3.0),  # SAP's PQI-derived count
    "gradient": (0.899, 0.901, 3.0),  # ratio 10
    "undecayed": (0.899, 0.901, 3.0),
    "gmp": (0.899, 0.901, None),
    "flow": (0.899, 0.901, 4.0),
    "filter": (0.4, 0.55, None),  # half the filters; sparsity counts weights
    "grda": (0.5, 0.99, None),  # no target: sparsity emerges from training
    "dns": (0.85, 0.99, 5.0),  # no target: c_rate sets the thresholds
    # nominal 90%; min_blocks keeps LeNet-5's first convolution and classifier dense
    "block_magnitude": (0.8, 0.91, 4.0),
}

#: test accuracy the methods without a dense level must reach (the dense demo model: about 0.97)
DENSE_FLOOR = 0.90


def test_every_method_has_a_short_demo() -> None:
    assert set(SHORT) | set(ELSEWHERE) == set(group_options("method"))
    assert set(BOUNDS) | {"random"} == set(SHORT)


@pytest.mark.parametrize("method", sorted(set(group_options("method")) - set(ELSEWHERE)))
def test_method_runs_bare(method: str, tmp_path: Path) -> None:
    cfg = run_config([f"method={method}", "progress=false", *SHORT[method]])
    summary = Experiment(cfg, tmp_path / method).run()
    assert summary["status"] == "completed"
    levels = summary["levels"]
    final = levels[-1]
    if method == "random":  # 90% at random: the accuracy collapses, far below the dense level
        assert final["sparsity"] == pytest.approx(0.9, abs=1e-3)
        assert final["test_accuracy"] < levels[0]["test_accuracy"] - 0.2
        return
    low, high, max_loss = BOUNDS[method]
    assert low <= final["sparsity"] <= high, final["sparsity"]
    if max_loss is None:
        assert final["test_accuracy"] >= DENSE_FLOOR, final["test_accuracy"]
    else:
        assert levels[0]["sparsity"] == 0.0
        loss = 100 * (levels[0]["test_accuracy"] - final["test_accuracy"])
        assert loss <= max_loss, (levels[0]["test_accuracy"], final["test_accuracy"])
