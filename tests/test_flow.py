"""Issue-5 methods: gradient-flow measures, structured thinning, gRDA, Dynamic Network Surgery."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from conftest import conv_bn_net, prune_context, run_config
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.experiment import Experiment
from prune_cli.models import MODELS, build_model, count_parameters, model_config
from prune_cli.paths import RunPaths
from prune_cli.pruning.flow import (
    MEASURES,
    early_round_fraction,
    filter_score,
    unstructured_score,
)
from prune_cli.pruning.grda import GRDA
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS, PruneContext
from prune_cli.pruning.methods.dns import DnsConfig, surgery_probability, thresholds
from prune_cli.pruning.methods.filter_pruning import FilterConfig
from prune_cli.pruning.providers.gradients import gradient, hessian_gradient, squared_gradient
from prune_cli.pruning.structured import thin_checkpoint
from prune_cli.spec import DataSpec
from prune_cli.thin import ThinModelError, load_thin_model


def tiny_net() -> nn.Module:
    return conv_bn_net(3, 4)


def context(batches, num_classes=3, artifacts: Path | None = None) -> PruneContext:
    return prune_context(batches, num_classes, artifacts)


def data(n_batches=2, size=8, channels=1, classes=3, batch=12):
    return [
        (torch.randn(batch, channels, size, size), torch.arange(batch) % classes)
        for _ in range(n_batches)
    ]


def test_hg_matches_autograd_hvp():
    net = tiny_net().eval()
    batches = data()
    ctx = context(batches)
    params = {k: p for k, p in net.named_parameters() if p.dim() > 1}
    g, hg = hessian_gradient(net, params, batches, 1.0, ctx)
    names = list(params)

    def loss_of(*weights):
        originals = [params[k].data for k in names]
        try:
            for k, w in zip(names, weights, strict=True):
                mod_name, attr = k.rsplit(".", 1)
                delattr(net.get_submodule(mod_name), attr)
                setattr(net.get_submodule(mod_name), attr, w)
            return sum(nn.functional.cross_entropy(net(x), y) for x, y in batches) / len(batches)
        finally:
            for k, w in zip(names, originals, strict=True):
                mod_name, attr = k.rsplit(".", 1)
                setattr(net.get_submodule(mod_name), attr, nn.Parameter(w))

    inputs = tuple(params[k].detach().clone() for k in names)
    _, expected = torch.autograd.functional.hvp(loss_of, inputs, tuple(g[k] for k in names))
    for k, e in zip(names, expected, strict=True):
        assert torch.allclose(hg[k], e, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("measure", [m for m in MEASURES if m != "bn_gamma"])
def test_filter_and_weight_scores_by_hand(measure):
    net = tiny_net().eval()
    batches = data()
    ctx = context(batches)
    params = {k: p for k, p in net.named_parameters() if p.dim() > 1}
    g_by_hand = dict(
        zip(
            params,
            torch.autograd.grad(
                sum(nn.functional.cross_entropy(net(x), y) for x, y in batches) / 2,
                list(params.values()),
            ),
            strict=True,
        )
    )
    g = gradient(net, params, batches, 1.0, ctx)
    for k in params:
        assert torch.allclose(g[k], g_by_hand[k], atol=1e-6)
    # Fisher: the mean of the squared per-batch gradients (equal batches: the plain mean)
    per_batch = [
        torch.autograd.grad(nn.functional.cross_entropy(net(x), y), [params["3.weight"]])[0]
        for x, y in batches
    ]
    g2w = (per_batch[0] ** 2 + per_batch[1] ** 2) / 2
    assert torch.allclose(squared_gradient(net, params, batches, 1.0, ctx)["3.weight"], g2w)
    _, hg = hessian_gradient(net, params, batches, 1.0, ctx)
    w = params["3.weight"].detach()
    gw, hw = g_by_hand["3.weight"], hg["3.weight"]
    rows = lambda t: t.reshape(4, -1)  # noqa: E731
    expected = {
        "magnitude": rows(w).norm(dim=1),
        "loss_preservation": rows((w * gw).abs()).sum(1),
        "biased_loss_preservation": rows((w * w * gw).abs()).sum(1),
        "grasp": rows(w * hw).sum(1),
        "gradient_norm": rows(w * hw).sum(1).abs(),
        "taylor": rows(w * gw).sum(1).abs(),
        "fisher": rows(w**2 * g2w).sum(1),
    }[measure]
    assert torch.allclose(filter_score(measure, w, gw, hw, g2w), expected, atol=1e-6)
    per_weight = unstructured_score(measure, w, gw, hw, g2w)
    assert per_weight.shape == w.shape
    if measure in ("loss_preservation", "taylor"):
        assert torch.allclose(per_weight, (w * gw).abs())


def test_bn_gamma_scores_are_the_batchnorm_scales():
    net = tiny_net()
    with torch.no_grad():
        net[4].weight.copy_(torch.tensor([0.5, -2.0, 1.0, 0.25]))
    method = METHODS.get("filter")(FilterConfig(measure="bn_gamma"))
    ctx = context(data())
    groups = method.units(net, ctx)
    assert [u.root for u in groups.units] == ["3"]  # the first conv and the classifier stay
    scores = method.channel_scores(net, groups, ctx)
    assert torch.allclose(scores["3"], torch.tensor([0.5, 2.0, 1.0, 0.25]))


@pytest.mark.parametrize(("n", "p"), [(1, 0.5), (5, 0.5), (3, 0.9), (10, 0.3), (4, 0.0)])
def test_early_rounds_add_up_to_p(n, p):
    remaining = 1.0
    for k in range(1, n + 1):
        remaining *= 1 - early_round_fraction(k, n, p)
    assert 1 - remaining == pytest.approx(p)


#: settings that keep every coupling of the architecture but make it quick to trace and run
SMALL = {
    "width_mult": 0.25,  # VGG, MobileNet
    "classifier_width": 32,  # VGG
    "width_per_group": 16,  # ResNet-50/101 bottlenecks
}
SMALL_WIDTH = {"wrn28_10": 1, "wrn28_8": 1}  # widening factor; CIFAR ResNets: 4 channels


def small_model(name: str, spec: DataSpec) -> nn.Module:
    settings = model_config(name)
    fields = {f.name for f in dataclasses.fields(settings)}
    changes = {k: v for k, v in SMALL.items() if k in fields}
    if "width" in fields:
        changes["width"] = SMALL_WIDTH.get(name, 4)
    if name == "resnet18":
        changes.pop("width_per_group", None)  # a BasicBlock network: 64 only
    return build_model(dataclasses.replace(settings, **changes), spec)


#: models whose first convolution feeds residual streams joined by zero-padding shortcuts
PADDED_STREAMS = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"}


@pytest.mark.parametrize("prune_first", [False, True], ids=["first-kept", "first-pruned"])
@pytest.mark.parametrize("name", [n for n in MODELS.names() if n != "custom"])
def test_thinner_network_equals_the_masked_one(name, prune_first):
    """For every registered model: the units' producers share the unit's width, 60% of the
    filters go (each unit keeping its floor), and removing them gives the masked outputs; or,
    where the first convolution's filters cannot form a unit, a one-line ConfigError."""
    torch.manual_seed(0)
    channels, side = (1, 28) if name in {"lenet5", "lenet5_caffe", "lenet300_100"} else (3, 32)
    model = small_model(name, DataSpec(channels, 10, side))
    for m in model.modules():  # non-trivial BatchNorm statistics, so masking must be exact
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.3, 0.3)
    batches = data(1, side, channels, 10, 4)
    ctx = context(batches, 10)
    method = METHODS.get("filter")(
        FilterConfig(measure="magnitude", sparsity=0.6, prune_first=prune_first)
    )
    if prune_first and name in PADDED_STREAMS:
        with pytest.raises(ConfigError, match=r"method\.prune_first=false") as err:
            method.prepare(model, ctx)
        assert "\n" not in str(err.value)
        return
    method.prepare(model, ctx)
    groups = method.groups
    params = dict(model.named_parameters())
    for unit in groups.units:
        assert all(params[p].shape[0] == unit.channels for p in unit.weights + unit.vectors)
    first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert any(f"{first_conv}.weight" in u.weights for u in groups.units) == prune_first
    masks = Masks.ones(method.prunable(model))
    masks.update(method.prune_fraction(model, masks, ctx, 0.6))
    keep = method.keep_from(masks, groups)
    for unit in groups.units:
        assert int(keep[unit.root].sum()) >= math.floor(0.05 * unit.channels) + 1
    assert sum(int((~k).sum()) for k in keep.values()) == round(
        0.6 * sum(u.channels for u in groups.units)
    )
    thin = groups.thin(keep, batches[0][0][:1])
    model.eval()
    x = torch.randn(3, channels, side, side)
    with torch.no_grad():
        a, b = model(x), thin(x)
    assert torch.allclose(a, b, atol=1e-4 * max(1.0, float(a.abs().max())))
    assert count_parameters(thin) < count_parameters(model)


class PaddedSkip(nn.Module):
    """A custom model with a channel-padding skip in the middle: ``mid``'s 4 channels join
    ``wide``'s 8 through ``F.pad``, which torch-pruning reads as elementwise."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.wide = nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.mid(torch.relu(self.stem(x))))
        x = self.wide(x) + nn.functional.pad(x, (0, 0, 0, 0, 2, 2))
        return self.head(x.mean(dim=(2, 3)))


def test_filters_coupled_across_widths_are_refused_and_ignore_is_the_way_out():
    """A group whose producers differ in width (not the first layer's) is a one-line
    ConfigError naming the layer to ignore; ignoring it, as it says, is accepted, and that
    group then stays whole when the method prunes."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    ctx = context([(x, torch.arange(4))], 10)
    with pytest.raises(ConfigError) as err:
        METHODS.get("filter")(FilterConfig(measure="magnitude")).prepare(PaddedSkip(), ctx)
    message = str(err.value)
    assert "\n" not in message and "prune_first" not in message
    named = next(w for w in ("mid.weight", "wide.weight") if f"add {w} to method.ignore" in message)
    model = PaddedSkip().eval()
    method = METHODS.get("filter")(FilterConfig(measure="magnitude", ignore=[named]))
    method.prepare(model, ctx)
    assert method.groups.units == []  # mid and wide are one group: ignoring either keeps both
    masks = Masks.ones(method.prunable(model))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks.update(method.prune_fraction(model, masks, ctx, 0.5))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_ignored_layers_keep_their_filters_and_the_groups_they_feed():
    """``method.ignore`` holds for filter pruning: an ignored layer is no unit, keeps every
    filter (even the smallest ones), and nothing coupled to it is pruned."""
    torch.manual_seed(0)
    model = small_model("resnet20", DataSpec(3, 10, 32))
    with torch.no_grad():  # the smallest filters of the network: the ranking's first choice
        model.layer1[0].conv1.weight.mul_(1e-3)
    before = model.layer1[0].conv1.weight.detach().clone()
    ctx = context(data(1, 32, 3, 10, 4), 10)
    method = METHODS.get("filter")(
        FilterConfig(measure="magnitude", sparsity=0.5, ignore=["layer1.0.conv1.weight"])
    )
    masks = Masks.ones(method.prunable(model))
    masks.update(method.prune_fraction(model, masks, ctx, 0.5))
    assert "layer1.0.conv1" not in {u.root for u in method.groups.units}
    assert all("layer1.0.conv1.weight" not in u.weights for u in method.groups.units)
    assert torch.equal(model.layer1[0].conv1.weight, before)
    assert len(method.groups.units) == 8  # the other inner convolutions of ResNet-20
    kept = method.keep_from(masks, method.groups)
    total = sum(u.channels for u in method.groups.units)  # 2 x 4 + 3 x 8 + 3 x 16 filters
    assert total == 80
    assert sum(int((~k).sum()) for k in kept.values()) == 40


def test_round_kept_rounds_to_the_nearest_multiple_without_regrowth():
    from prune_cli.pruning.methods.filter_pruning import round_kept

    scores = [float(s) for s in range(16)]  # channel ch scores ch
    before = torch.ones(16, dtype=torch.bool)
    keep = torch.arange(16) >= 5  # 11 kept: nearest multiple of 8 is 8, drop channels 5-7
    round_kept(keep, before, scores, 8)
    assert keep.tolist() == [False] * 8 + [True] * 8
    keep = torch.arange(16) >= 3  # 13 kept: round up to 16, restoring channels 0-2
    round_kept(keep, before, scores, 8)
    assert bool(keep.all())
    before = torch.arange(16) >= 2  # channels 0-1 went in an earlier round: never restored
    keep = torch.arange(16) >= 3
    round_kept(keep, before, scores, 8)
    assert keep.sum() == 8 and not keep[:8].any()
    keep = torch.arange(16) >= 3  # 13 kept, none restorable, floor 9: not down to 8 either
    round_kept(keep, keep.clone(), scores, 8, floor=9)
    assert int(keep.sum()) == 13
    keep = torch.arange(16) >= 13  # 3 kept, 1 restorable: below one multiple, left alone
    before = torch.arange(16) >= 12
    round_kept(keep, before, scores, 8)
    assert int(keep.sum()) == 3


@pytest.mark.parametrize("name", ["resnet56", "vgg11"])
def test_filter_counts_rounded_to_multiples_of_8(name):
    model = build_model(name, DataSpec(3, 10, 32))
    ctx = context(data(1, 32, 3, 10, 4), 10)
    method = METHODS.get("filter")(FilterConfig(sparsity=0.5, round_to=8))
    masks = Masks.ones(method.prunable(model))
    masks.update(method.prune_fraction(model, masks, ctx, 0.5))
    keep = method.keep_from(masks, method.groups)
    counts = [int(k.sum()) for k in keep.values()]
    assert all(c % 8 == 0 for c in counts), counts
    removed = sum(int((~k).sum()) for k in keep.values())
    total = sum(k.numel() for k in keep.values())
    assert 0.35 < removed / total < 0.65  # rounding moves the target, not by much
    with pytest.raises(ConfigError, match="round_to"):
        FilterConfig(round_to=0)


def test_grda_step_is_the_soft_threshold_of_the_accumulator():
    w = nn.Parameter(torch.tensor([0.5, -0.2, 0.05]))
    opt = GRDA([w], lr=0.1, c=0.2, mu=0.6)
    g1, g2 = torch.tensor([1.0, -1.0, 0.2]), torch.tensor([-0.5, 0.5, 0.5])
    w.grad = g1
    opt.step()
    acc = torch.tensor([0.5, -0.2, 0.05]) - 0.1 * g1
    l1 = 0.2 * 0.1**1.1 * 1.0
    expected = acc.sign() * (acc.abs() - l1).clamp(min=0)
    assert torch.allclose(w.detach(), expected)
    opt.param_groups[0]["lr"] = 0.05  # a schedule changes the learning rate
    w.grad = g2
    opt.step()
    acc = acc - 0.05 * g2
    l1 += 0.2 * 0.05**1.1 * (2**0.6 - 1)
    expected = acc.sign() * (acc.abs() - l1).clamp(min=0)
    assert torch.allclose(w.detach(), expected)
    assert w.detach()[2] == 0  # an exact zero


def test_grda_with_c_zero_is_sgd_without_momentum():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    opt_a = GRDA(a.parameters(), lr=0.1, c=0.0, mu=0.6)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.0)
    for step in range(5):
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        for group in (opt_a, opt_b):
            group.param_groups[0]["lr"] = 0.1 / (step + 2)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_grda_leaves_ignored_parameters_dense():
    """``method.ignore`` holds for gRDA: matching parameters get no threshold (so no zeros)
    and are trained exactly as plain SGD would, the others are thresholded."""
    from prune_cli.pruning.methods.grda_method import GrdaConfig

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    twin = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    twin.load_state_dict(net.state_dict())
    method = METHODS.get("grda")(GrdaConfig(c=2.0, mu=0.6, ignore=["2.*"]))
    opt = method.optimizer(net, 0.1)
    sgd = torch.optim.SGD(twin[2].parameters(), lr=0.1)  # the ignored layer, trained alone
    for _ in range(5):
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        twin[0].load_state_dict(net[0].state_dict())  # the same thresholded first layer
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        sgd.zero_grad()
        nn.functional.cross_entropy(twin(x), y).backward()
        sgd.step()
    assert int((net[0].weight == 0).sum()) > net[0].weight.numel() // 2  # c = 2: mostly zeros
    assert bool((net[2].weight != 0).all()) and bool((net[2].bias != 0).all())
    assert torch.allclose(net[2].weight, twin[2].weight, atol=1e-6)


def test_dns_masks_follow_the_thresholds_and_splice_back():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 10))
    method = METHODS.get("dns")(DnsConfig(c_rate=0.5, c_rates={"0.weight": 0.5}))
    params = method.prunable(net)
    masks = Masks.ones(params)
    masks.update(method.prune(net, masks, context(data())))
    w = net[0].weight.detach()
    a, b = thresholds(w, 0.5)
    magnitude = w.abs().to(torch.float64)
    base = float(magnitude.mean() + 0.5 * magnitude.std())
    assert (a, b) == pytest.approx((0.9 * base, 1.1 * base))
    assert torch.equal(masks["0.weight"], w.abs() > a)  # from all-ones: off at or below a
    (callback,) = method.callbacks(1, masks, context(data()))
    i = int(torch.nonzero(~masks["0.weight"].flatten())[0])
    j = int(torch.nonzero(masks["0.weight"].flatten())[0])
    between = (a + b) / 2
    with torch.no_grad():
        method.dense["0.weight"].view(-1)[i] = 1.5 * b  # a pruned weight grew above b
        method.dense["0.weight"].view(-1)[j] = between  # a kept weight fell between a and b
    assert surgery_probability(0, 1e-4, 1.0, 10) == 1.0
    callback.on_after_backward(0, net)
    callback.on_step_end(0, net)  # surgery at step 0 happens with probability 1
    assert bool(masks["0.weight"].view(-1)[i]) and bool(masks["0.weight"].view(-1)[j])
    assert float(net[0].weight.detach().view(-1)[i]) == pytest.approx(1.5 * b)
    assert surgery_probability(10, 1e-4, 1.0, 10) == 0.0


@pytest.mark.slow
def test_early_filter_pruning_run_saves_a_thinner_model(tmp_path):
    cfg = run_config(
        [
            "model=cnn",
            "method=filter",
            "method.rounds=2",
            "method.sparsity=0.5",
            "method.measure=loss_preservation",
            "method.samples=64",
            "method.latency_repeats=2",
            "method.latency_batch=8",
            "train.epochs=3",
            "progress=false",
        ]
    )
    summary = Experiment(cfg, tmp_path).run()
    info = summary["method_info"]
    assert info["filter_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert info["params_after"] < info["params_before"] and info["macs_after"] < info["macs_before"]
    assert info["max_output_difference"] < 1e-4 and info["latency_thin_ms"] > 0
    thin = load_thin_model(RunPaths(tmp_path).extra("final_model.pt"))  # name from config.yaml
    exported = torch.export.load(str(RunPaths(tmp_path).extra("final_model.pt2"))).module()
    x = torch.randn(5, 1, 8, 8)
    assert info["exported_model"] == "final_model.pt2"
    assert torch.allclose(thin.eval()(x), exported(x), atol=1e-5)


def _thinned_run(name: str, spec: DataSpec, folder: Path, stored_name: str | None = None):
    """(masked dense model, its finalize info) after ``filter``'s finalize wrote final_model.pt."""
    model = build_model(name, spec)
    for m in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.3, 0.3)
    batches = data(1, spec.image_size, spec.channels, spec.num_classes, 4)
    ctx = context(batches, spec.num_classes, artifacts=folder)
    if stored_name is not None:
        ctx.model_name = stored_name  # what a context that carries the model's name provides
    method = METHODS.get("filter")(FilterConfig(sparsity=0.5, latency_batch=4, latency_repeats=1))
    masks = Masks.ones(method.prunable(model))
    masks.update(method.prune_fraction(model, masks, ctx, 0.5))
    return model, method.finalize(model, masks, ctx)


def test_thin_model_is_a_state_dict_that_rebuilds_to_the_same_outputs(tmp_path):
    spec = DataSpec(1, 10, 8)
    model, info = _thinned_run("cnn", spec, tmp_path, stored_name="cnn")
    path = tmp_path / info["final_model"]
    stored = torch.load(path, weights_only=True)  # plain data: no module is unpickled
    assert stored["model"] == "cnn" and stored["input_shape"] == list(spec.input_shape)
    assert any(stored["removed"].values())
    thin = load_thin_model(path)
    assert count_parameters(thin) == info["params_after"] < count_parameters(model)
    x = torch.randn(5, *spec.input_shape)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(thin(x), model(x), atol=1e-5)
        if info["exported_model"] == "final_model.pt2":
            exported = torch.export.load(str(tmp_path / "final_model.pt2")).module()
            assert torch.allclose(thin(x), exported(x), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v1"])
def test_thin_model_rebuilds_residual_and_depthwise_networks(tmp_path, name):
    """The stored removal reproduces torch-pruning's coupling (residual streams, depthwise)."""
    spec = DataSpec(3, 10, 8)
    model = build_model(name, spec).eval()
    batches = data(1, 8, 3, 10, 4)
    ctx = context(batches, 10)
    method = METHODS.get("filter")(FilterConfig(sparsity=0.5))
    masks = Masks.ones(method.prunable(model))
    masks.update(method.prune_fraction(model, masks, ctx, 0.5))
    keep = method.keep_from(masks, method.groups)
    thin = method.groups.thin(keep, batches[0][0][:1])
    checkpoint = thin_checkpoint(thin, method.groups.removed(keep), spec.input_shape, 10, name)
    torch.save(checkpoint, tmp_path / "final_model.pt")
    rebuilt = load_thin_model(tmp_path / "final_model.pt")
    assert count_parameters(rebuilt) == count_parameters(thin) < count_parameters(model)
    x = torch.randn(4, *spec.input_shape)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), thin(x))
        assert torch.allclose(rebuilt(x), model(x), atol=1e-4)


def test_thin_model_name_from_the_run_config_and_bad_files(tmp_path):
    spec = DataSpec(1, 10, 8)
    model, info = _thinned_run("cnn", spec, tmp_path)  # this context does not carry the name
    path = tmp_path / info["final_model"]
    with pytest.raises(ThinModelError, match="does not record its model"):
        load_thin_model(path)
    (tmp_path / "config.yaml").write_text("model:\n  name: cnn\nseed: 0\n")
    x = torch.randn(3, *spec.input_shape)
    with torch.no_grad():
        assert torch.allclose(load_thin_model(path)(x), model.eval()(x), atol=1e-5)
    with pytest.raises(ThinModelError, match="does not fit model 'mlp'"):
        load_thin_model(path, model="mlp")
    old = tmp_path / "old.pt"
    torch.save(model, old)  # the previous format, a pickled module, is refused, not unpickled
    with pytest.raises(ThinModelError, match="weights_only=False") as exc:
        load_thin_model(old)
    assert "\n" not in str(exc.value)
