"""Issue 25, MobileNet-V1's channel score: ``method.depthwise_score`` (null / ``sum``: a
channel's filter scores summed over every coupled layer; ``skip``: the depthwise convolution
left out, the pointwise or stem filter alone, as Lubana and Dick score MobileNet-V1), against
hand computations on a tiny depthwise-separable network."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, prune_context, run_config
from torch import nn

from prune_cli.config import config_hash
from prune_cli.errors import ConfigError
from prune_cli.pruning.method import METHODS
from prune_cli.pruning.methods.filter_pruning import FilterConfig
from prune_cli.pruning.methods.flow_pruning import FlowConfig


class Separable(nn.Module):
    """A 3x3 stem on one input channel, one depthwise-separable block (3x3 depthwise, 1x1
    pointwise), each convolution -> BatchNorm -> ReLU, and a classifier. The stem's filters
    (4, 1, 3, 3) have the shape of the depthwise ones: only the modules tell them apart."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.pw = nn.Conv2d(4, 6, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn1(self.dw(x)))
        x = torch.relu(self.bn2(self.pw(x)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture
def net() -> tuple[Separable, object]:
    torch.manual_seed(0)
    model = Separable()
    for bn in (model.bn0, model.bn1, model.bn2):  # distinct scales, so a wrong sum shows
        bn.weight.data.uniform_(-2.0, 2.0)
    x = torch.randn(4, 1, 6, 6)
    return model, prune_context([(x, torch.arange(4) % 3)])


def scores(model: nn.Module, ctx, measure: str, rule: str | None) -> dict[str, torch.Tensor]:
    method = METHODS.get("filter")(
        FilterConfig(measure=measure, prune_first=True, depthwise_score=rule)
    )
    groups = method.units(model, ctx)
    by_weights = {tuple(sorted(u.weights)): u.root for u in groups.units}
    got = method.channel_scores(model, groups, ctx)
    return {"+".join(w): got[root] for w, root in by_weights.items()}


def rows_l2(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).norm(dim=1)


@pytest.mark.parametrize("rule", [None, "sum"])
def test_sum_adds_the_depthwise_filter_to_the_stem_filter(net, rule):
    model, ctx = net
    got = scores(model, ctx, "magnitude", rule)
    assert set(got) == {"dw.weight+stem.weight", "pw.weight"}
    # ||W_f||_2 of the stem's filter plus that of the depthwise filter of the same channel
    expected = rows_l2(model.stem.weight) + rows_l2(model.dw.weight)
    torch.testing.assert_close(got["dw.weight+stem.weight"], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(got["pw.weight"], rows_l2(model.pw.weight), rtol=0, atol=1e-6)


def test_skip_scores_the_stem_filter_alone_as_the_authors(net):
    model, ctx = net
    got = scores(model, ctx, "magnitude", "skip")
    torch.testing.assert_close(
        got["dw.weight+stem.weight"], rows_l2(model.stem.weight), rtol=0, atol=1e-6
    )
    # a unit without a depthwise layer is scored as before
    torch.testing.assert_close(got["pw.weight"], rows_l2(model.pw.weight), rtol=0, atol=1e-6)
    # L1: the row sums of |theta|, the depthwise rows left out as well
    l1 = scores(model, ctx, "l1", "skip")["dw.weight+stem.weight"]
    expected = model.stem.weight.detach().abs().sum(dim=(1, 2, 3))
    torch.testing.assert_close(l1, expected, rtol=0, atol=1e-6)


def test_skip_leaves_out_the_batchnorm_of_the_depthwise_convolution(net):
    model, ctx = net
    summed = scores(model, ctx, "bn_gamma", None)["dw.weight+stem.weight"]
    skipped = scores(model, ctx, "bn_gamma", "skip")["dw.weight+stem.weight"]
    gamma0, gamma1 = model.bn0.weight.detach().abs(), model.bn1.weight.detach().abs()
    torch.testing.assert_close(summed, gamma0 + gamma1, rtol=0, atol=1e-6)
    torch.testing.assert_close(skipped, gamma0, rtol=0, atol=1e-6)


def test_skip_changes_which_channel_is_pruned(net):
    """With ``sum`` a channel whose stem filter is the smallest is kept by a large depthwise
    filter; with ``skip`` it is the first pruned."""
    model, ctx = net
    with torch.no_grad():
        model.stem.weight.fill_(1.0)
        model.stem.weight[2].fill_(0.1)  # channel 2: the smallest stem filter
        model.dw.weight.fill_(0.5)
        model.dw.weight[2].fill_(10.0)  # ... and the largest depthwise filter
        model.dw.weight[0].fill_(0.1)  # channel 0: second-smallest under ``sum``
    for rule, pruned in ((None, 0), ("skip", 2)):
        got = scores(model, ctx, "magnitude", rule)["dw.weight+stem.weight"]
        assert int(got.argmin()) == pruned


def test_the_setting_is_validated_and_keeps_old_hashes():
    with pytest.raises(ConfigError, match=r"method\.depthwise_score must be one of sum, skip"):
        FilterConfig(depthwise_score="pointwise")
    with pytest.raises(ConfigError, match=r"method\.depthwise_score"):
        run_config(["method=filter", "method.depthwise_score=pointwise"])
    # the checks of the configs that inherit it still run (FlowConfig's sparsity)
    with pytest.raises(ConfigError, match="sparsity"):
        FlowConfig(sparsity=2.0)
    # null default: existing filter runs keep their directories
    base = config_hash(compose_config(["method=filter"]))
    assert base == config_hash(compose_config(["method=filter", "method.depthwise_score=null"]))
    assert base != config_hash(compose_config(["method=filter", "method.depthwise_score=skip"]))


def test_the_mobilenet_experiment_scores_the_pointwise_filter_alone():
    cfg = compose_config(["experiment=flow_mobilenet_v1_cifar"])
    assert cfg.method.depthwise_score == "skip"


def test_every_mobilenet_v1_channel_is_scored_by_its_pointwise_or_stem_filter_alone():
    """On the registered MobileNet-V1 (a quarter of its widths: the same layers): each unit
    is one pointwise (or stem) filter with at most one depthwise filter and BatchNorm, and
    ``skip`` scores it by the former's norm."""
    import dataclasses

    from prune_cli.models import build_model, model_config
    from prune_cli.pruning.derivatives import Derivatives
    from prune_cli.pruning.measures import UnitSites, sites
    from prune_cli.spec import DataSpec

    torch.manual_seed(0)
    model = build_model(
        dataclasses.replace(model_config("mobilenet_v1"), width_mult=0.25), DataSpec(3, 10, 32)
    )
    ctx = prune_context([(torch.randn(2, 3, 32, 32), torch.arange(2))], num_classes=10)
    method = METHODS.get("filter")(
        FilterConfig(measure="magnitude", prune_first=True, depthwise_score="skip")
    )
    groups = method.units(model, ctx)
    assert len(groups.units) == 14  # the stem and 13 pointwise convolutions
    got = method.channel_scores(model, groups, ctx)
    params = dict(model.named_parameters())
    found = sites(params, Derivatives(), groups.weight_names())
    for u in groups.units:
        unit = UnitSites.of(u, groups, found)
        assert sum(unit.depthwise) == len(u.weights) - 1 <= 1
        assert sum(unit.bn_depthwise) == len(u.bn) - 1 <= 1
        (kept,) = [w for w, dw in zip(u.weights, unit.depthwise, strict=True) if not dw]
        torch.testing.assert_close(got[u.root], rows_l2(params[kept]), rtol=0, atol=1e-6)
