"""HALP's group Taylor importance (``method.measure=halp``): the per-channel score against a loop
over batches computed here with autograd, the signed sum over a coupled unit's BatchNorms, the
conv-weight fallback without BatchNorm, untouched running statistics, an end-to-end latency run
and the refusal of a per-weight use."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from conftest import conv_bn_net, prune_context
from torch import Tensor, nn

from prune_cli.pruning.derivatives import compute
from prune_cli.pruning.measures import UnitSites, build, sites
from prune_cli.pruning.method import METHODS
from prune_cli.pruning.methods.filter_pruning import FilterConfig


def batches_of(n: int, batch: int = 12, side: int = 8, seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 1, side, side, generator=gen), torch.arange(batch) % 3)
        for _ in range(n)
    ]


def randomise_bn(net: nn.Module, seed: int = 1) -> None:
    """Non-trivial gamma and beta of either sign, so both terms and their signs count."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))


def terms_by_name(net: nn.Module, names: list[str], batches: list) -> list[list[Tensor]]:
    """Per batch, per BatchNorm of ``net`` named in ``names``: gamma dL/dgamma + beta dL/dbeta
    in train mode (on a copy, so the running statistics of ``net`` stay as they are)."""
    net = copy.deepcopy(net).train()
    modules = dict(net.named_modules())
    bns = [modules[k] for k in names]
    out = []
    for x, y in batches:
        loss = nn.functional.cross_entropy(net(x), y)
        grads = torch.autograd.grad(loss, [t for b in bns for t in (b.weight, b.bias)])
        out.append(
            [
                b.weight.detach() * grads[2 * i] + b.bias.detach() * grads[2 * i + 1]
                for i, b in enumerate(bns)
            ]
        )
    return out


def test_the_score_is_the_batch_mean_of_the_absolute_bn_taylor_term():
    net = conv_bn_net(3, 5)
    randomise_bn(net)
    batches = batches_of(2)
    ctx = prune_context(batches)
    measure = build("halp", FilterConfig(samples=24))  # 24 examples: both batches
    params = {k: p for k, p in net.named_parameters() if p.dim() > 1}
    d = compute(measure.needs, net, params, ctx, measure.sample(measure.settings.scoring_sample()))
    found = sites(params, d)
    unit = UnitSites([found["3.weight"]], [net[4].weight.detach()])
    score = measure.units({"3": unit}, ctx)["3"]
    per_batch = [t[0] for t in terms_by_name(net, ["4"], batches)]
    expected = (per_batch[0].abs() + per_batch[1].abs()) / 2
    assert torch.allclose(score, expected, atol=1e-6, rtol=1e-5)
    # the absolute value per batch, not of the mean: a different number on these batches
    assert not torch.allclose(score, ((per_batch[0] + per_batch[1]) / 2).abs(), atol=1e-6)
    # the BatchNorm-output form of the same term: sum over positions of y dL/dy
    train = copy.deepcopy(net).train()
    ys: list[Tensor] = []

    def keep(module: nn.Module, inputs: object, output: Tensor) -> None:
        output.retain_grad()
        ys.append(output)

    train[4].register_forward_hook(keep)
    via_output = []
    for x, y in batches:
        nn.functional.cross_entropy(train(x), y).backward()
        via_output.append((ys[-1] * ys[-1].grad).sum(dim=(0, 2, 3)).detach())
    assert torch.allclose(per_batch[0], via_output[0], atol=1e-6)


class TwoBranches(nn.Module):
    """A stem, then two convolution + BatchNorm branches added together: their output channels
    are one coupled unit, with two BatchNorms."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 6, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(4, 6, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(6)
        self.c = nn.Conv2d(6, 5, 3)
        self.bn_c = nn.BatchNorm2d(5)
        self.head = nn.Linear(5 * 6 * 6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.stem(x))
        s = torch.relu(self.bn_a(self.a(h)) + self.bn_b(self.b(h)))
        return self.head(torch.relu(self.bn_c(self.c(s))).flatten(1))


def method_scores(net: nn.Module, batches: list) -> tuple[dict[str, Tensor], list]:
    method = METHODS.get("filter")(FilterConfig(measure="halp", samples=24))
    ctx = prune_context(batches)
    groups = method.units(net, ctx)
    return method.channel_scores(net, groups, ctx), groups.units


def test_a_coupled_unit_sums_its_batchnorms_signed_before_the_absolute_value():
    torch.manual_seed(0)
    net = TwoBranches()
    randomise_bn(net, seed=3)
    batches = batches_of(2)
    scores, units = method_scores(net, batches)
    coupled = [u for u in units if set(u.weights) == {"a.weight", "b.weight"}]
    assert len(coupled) == 1, [u.weights for u in units]
    terms = terms_by_name(net, ["bn_a", "bn_b"], batches)
    expected = sum((ta + tb).abs() for ta, tb in terms) / 2
    assert torch.allclose(scores[coupled[0].root], expected, atol=1e-6, rtol=1e-5)
    # the absolute value per layer, then summed, is another score: the signs disagree here
    per_layer = sum(ta.abs() + tb.abs() for ta, tb in terms) / 2
    assert not torch.allclose(expected, per_layer, atol=1e-6)
    # the unit of bn_c alone: its own term
    (alone,) = [u for u in units if u.weights == ["c.weight"]]
    (t1,), (t2,) = terms_by_name(net, ["bn_c"], batches)
    assert torch.allclose(scores[alone.root], (t1.abs() + t2.abs()) / 2, atol=1e-6, rtol=1e-5)


def test_without_batchnorm_the_score_is_the_conv_weight_taylor_term_per_batch():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(80, 3)
    )
    batches = batches_of(2)
    scores, units = method_scores(net, batches)
    assert [u.weights for u in units] == [["2.weight"]]
    w = net[2].weight
    rows = []
    for x, y in batches:
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(net(x), y), [w])
        rows.append((w.detach() * g).reshape(5, -1).sum(dim=1))
    expected = (rows[0].abs() + rows[1].abs()) / 2
    assert torch.allclose(scores[units[0].root], expected, atol=1e-6, rtol=1e-5)
    # not the taylor measure's |sum w g| with g the mean gradient over the batches
    assert not torch.allclose(expected, ((rows[0] + rows[1]) / 2).abs(), atol=1e-6)


def test_scoring_leaves_the_running_statistics_and_the_mode_as_they_were():
    net = TwoBranches()
    randomise_bn(net)
    net.eval()
    before = {k: b.clone() for k, b in net.named_buffers()}
    scores, _ = method_scores(net, batches_of(2))
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert not net.training
    after = dict(net.named_buffers())
    assert all(torch.equal(before[k], after[k]) for k in before)
    net.train()
    method_scores(net, batches_of(1))
    assert net.training


def test_scoring_does_not_depend_on_the_global_random_state_with_dropout():
    """Batch statistics, but no dropout: a resumed run, whose random state was seeded anew,
    scores (and prunes) as an uninterrupted one does. Each module's mode is put back."""
    net = nn.Sequential(conv_bn_net(4, 6, 3, side=8), nn.Dropout(0.5))
    randomise_bn(net)
    net.eval()
    torch.manual_seed(1)
    first, _ = method_scores(net, batches_of(2))
    torch.manual_seed(2)
    second, _ = method_scores(net, batches_of(2))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not net.training
    # the scoring context itself: dropout off in train mode, every module's mode put back
    from prune_cli.pruning.derivatives import preserved

    net[1].train()  # a mixed mode, as a caller may leave it
    with preserved(net, train=True):
        assert net[0].training and not net[1].training
    assert not net.training and net[1].training and not net[0].training


@pytest.mark.slow
def test_a_latency_target_run_with_halp_completes(tmp_path, cli_in_process):
    run = tmp_path / "run"
    args = [
        "model=cnn",
        "method=filter",
        "method.measure=halp",
        "method.latency_target=0.8",
        "method.when=trained",
        "method.latency_tolerance=0.5",
        "method.latency_points=3",
        "method.latency_repeats=2",
        "method.latency_batch=32",
        "method.samples=64",
        "train.epochs=1",
        "dataset.limit_train=256",
        "progress=false",
        f"output_root={tmp_path}",
        f"hydra.run.dir={run}",
    ]
    result = cli_in_process(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    info = summary["method_info"]
    assert info["latency_target"] == 0.8 and 0 < info["filter_sparsity"] < 1
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["measure"] == "halp"


def test_halp_has_no_per_weight_score_one_line_and_exit_2(tmp_path, cli_in_process):
    args = ["method=flow", "method.measure=halp", f"hydra.run.dir={tmp_path / 'run'}"]
    result = cli_in_process(args, cwd=tmp_path)
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "measure 'halp' has no per-weight score" in lines[0]
    assert not (tmp_path / "run").exists()
