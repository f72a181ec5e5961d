"""``method.normalize`` of the filter methods: each unit's channel scores scaled by the mean or
the largest |score| of its kept channels before units are compared (the global ranking, the
latency knapsack), so that scores of different scales (an L1 norm grows with fan-in) compete
as shares of their own layer. Hand-computed selections on a small network; no timing."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, conv_bn_net, prune_context

from prune_cli.config import config_hash
from prune_cli.errors import ConfigError
from prune_cli.pruning.method import METHODS
from prune_cli.pruning.methods.filter_pruning import FilterConfig, normalized


def test_scores_are_divided_by_the_kept_channels_statistic():
    scores = {"a": torch.tensor([2.0, 4.0, 6.0]), "b": torch.tensor([-1.0, 3.0])}
    keep = {"a": torch.tensor([True, True, True]), "b": torch.tensor([True, True])}
    mean = normalized(scores, keep, "mean")
    assert mean["a"].tolist() == [0.5, 1.0, 1.5]
    assert mean["b"].tolist() == [-0.5, 1.5]  # by the mean |score|: the order is kept
    top = normalized(scores, keep, "max")
    assert top["a"].tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert normalized(scores, keep, None) is scores
    # a pruned channel does not enter the statistic
    pruned = normalized(
        {"a": torch.tensor([2.0, 4.0, 100.0])}, {"a": torch.tensor([1, 1, 0]).bool()}, "mean"
    )
    assert pruned["a"].tolist() == pytest.approx([2 / 3, 4 / 3, 100 / 3])
    # a unit of zeros (or with nothing kept) is left as it is
    zeros = {"a": torch.zeros(3)}
    assert (
        normalized(zeros, {"a": torch.ones(3, dtype=torch.bool)}, "mean")["a"].tolist() == [0.0] * 3
    )
    none_kept = normalized(scores, {"a": torch.zeros(3, dtype=torch.bool), "b": keep["b"]}, "max")
    assert none_kept["a"].tolist() == [2.0, 4.0, 6.0]


def _select(normalize: str | None, scope: str | None = None) -> dict[str, int]:
    """Prune 50% of the two units' filters of a small network at hand-set scores: unit A's
    are 10, 20, ..., 120, unit B's 1, 2, ..., 10 (A's ten times B's scale); kept counts."""
    model = conv_bn_net(4, 12, 10, side=10)
    batches = [(torch.randn(4, 1, 10, 10), torch.randint(0, 3, (4,)))]
    ctx = prune_context(batches)
    method = METHODS.get("filter")(
        FilterConfig(when="trained", sparsity=0.5, scope=scope, normalize=normalize)
    )
    groups = method.units(model, ctx)
    by_width = {u.channels: u.root for u in groups.units}
    assert sorted(by_width) == [10, 12]
    a, b = by_width[12], by_width[10]
    scores = {a: 10.0 * torch.arange(1.0, 13.0), b: torch.arange(1.0, 11.0)}
    keep = {u.root: torch.ones(u.channels, dtype=torch.bool) for u in groups.units}
    chosen = method.select(groups, keep, scores, ctx, 0.5)
    return {"A": int(chosen[a].sum()), "B": int(chosen[b].sum())}


def test_the_global_ranking_compares_shares_of_each_unit():
    # raw: B's scores are all below A's but one: B is pruned to its floor (1), then A's
    # two lowest go (11 of 22 in all)
    assert _select(None, "global") == {"A": 10, "B": 1}
    # mean: A's k / 6.5 against B's k / 5.5; the 11 lowest are A's 6 and B's 5 first
    assert _select("mean", "global") == {"A": 6, "B": 5}
    # max: A's k / 12 against B's k / 10
    assert _select("max", "global") == {"A": 6, "B": 5}


def test_a_per_layer_ranking_is_unchanged_by_it():
    assert _select("mean", "layer") == _select(None, "layer") == {"A": 6, "B": 5}


def test_a_bad_value_is_refused_in_one_line():
    with pytest.raises(
        ConfigError, match=r"^method.normalize must be mean or max or null, got 'sum'$"
    ):
        FilterConfig(normalize="sum")


def test_a_bad_value_on_the_command_line_is_one_line_and_exit_2(tmp_path, cli_in_process):
    args = ["method=filter", "method.normalize=sum", f"hydra.run.dir={tmp_path / 'run'}"]
    result = cli_in_process(args, cwd=tmp_path)
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "method.normalize must be mean or max or null" in lines[0]
    assert not (tmp_path / "run").exists()


def test_the_default_keeps_old_hashes_and_crossword_has_it():
    for method in ("filter", "crossword"):
        plain = compose_config([f"method={method}"])
        assert config_hash(plain) == config_hash(
            compose_config([f"method={method}", "method.normalize=null"])
        )
        assert config_hash(plain) != config_hash(
            compose_config([f"method={method}", "method.normalize=mean"])
        )
