"""Issue 13: the registry of importance measures, each against a hand computation on a tiny
model; L1-norm and FPGM filter pruning (per-layer rate, soft pruning); SynFlow's rounds.
Issue 22: the registry of the statistics they need (a new one is one registration), and the
scoring settings declared once and handed to the measures."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from conftest import conv_bn_net, prune_context
from scipy.spatial.distance import cdist
from torch import nn

from prune_cli.errors import ConfigError, UserError
from prune_cli.pruning.derivatives import NEEDS, Derivatives, Provider, Request, Sample, compute
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.measures import (
    IMPORTANCE,
    Measure,
    MeasureSettings,
    Site,
    UnitSites,
    build,
    check,
    sites,
    weight_scores,
)
from prune_cli.pruning.method import METHODS, PruneContext
from prune_cli.pruning.methods.crossword import CrosswordConfig
from prune_cli.pruning.methods.filter_pruning import ChannelSchedule, FilterConfig
from prune_cli.pruning.methods.flow_pruning import FlowConfig
from prune_cli.pruning.methods.magnitude import MagnitudeConfig


def context(batches, num_classes=3) -> PruneContext:
    return prune_context(batches, num_classes)


def conv_net() -> nn.Module:
    return conv_bn_net(3, 5)


def data(n=2, batch=12):
    return [(torch.randn(batch, 1, 8, 8), torch.arange(batch) % 3) for _ in range(n)]


@pytest.mark.parametrize("name", IMPORTANCE.names())
def test_every_measure_gives_the_shapes_it_declares(name):
    """Registry-wide: a per-weight score has theta's shape, a per-filter one a value per row."""
    net = conv_net()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
    params = {k: p for k, p in net.named_parameters() if p.dim() > 1}
    ctx = context(data())
    measure = build(name, FlowConfig(samples=12, samples_per_class=2))
    d = compute(measure.needs, net, params, ctx, measure.sample(Sample(samples=12)))
    found = sites(params, d)
    if measure.per_weight:
        scores = measure.weights(found, ctx)
        assert all(scores[k].shape == p.shape for k, p in params.items())
    if measure.per_filter:
        units = {"3": UnitSites([found["3.weight"]], [net[4].weight.detach()])}
        assert measure.units(units, ctx)["3"].shape == (5,)


def test_data_free_measures_by_hand():
    w = torch.tensor([[1.0, -2.0, 2.0], [0.5, 0.0, -0.5], [3.0, 0.0, -4.0]])
    site = Site(w)
    assert torch.equal(IMPORTANCE.get("magnitude")().weight(site), w.abs())
    assert torch.allclose(
        IMPORTANCE.get("magnitude")().filter(site), torch.tensor([3.0, 0.5**0.5, 5.0])
    )
    assert torch.allclose(IMPORTANCE.get("l1")().filter(site), torch.tensor([5.0, 1.0, 7.0]))
    # geometric median: sum of Euclidean distances to the other rows, as scipy's cdist
    expected = torch.tensor(cdist(w.numpy(), w.numpy(), "euclidean").sum(axis=1), dtype=w.dtype)
    assert torch.allclose(IMPORTANCE.get("fpgm")().filter(site), expected)
    bn = IMPORTANCE.get("bn_gamma")()
    units = {"a": UnitSites([site], [torch.tensor([0.5, -2.0, 1.0])])}
    assert torch.equal(bn.units(units, None)["a"], torch.tensor([0.5, 2.0, 1.0]))
    with pytest.raises(ConfigError, match="needs BatchNorm"):
        bn.units({"a": UnitSites([site])}, None)


def test_fpgm_matches_cdist_on_conv_filters():
    w = torch.randn(16, 3, 3, 3)
    rows = w.reshape(16, -1).numpy()
    expected = torch.tensor(cdist(rows, rows, "euclidean").sum(axis=1), dtype=w.dtype)
    assert torch.allclose(IMPORTANCE.get("fpgm")().filter(Site(w)), expected, rtol=1e-6)


def test_a_filter_only_measure_refuses_to_score_weights():
    w = torch.randn(4, 3, 3, 3)
    for name in ("fpgm", "bn_gamma"):
        assert not IMPORTANCE.get(name).per_weight
        with pytest.raises(ConfigError, match="scores filters only"):
            IMPORTANCE.get(name)().weight(Site(w))


def test_gradient_measures_by_hand_on_a_linear_model():
    w = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]])
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]])
    y = torch.tensor([0, 1])
    model = nn.Linear(3, 2, bias=False)
    model.weight.data.copy_(w)
    grad = (torch.softmax(x @ w.T, 1) - nn.functional.one_hot(y, 2).float()).T @ x / 2
    ctx = context([(x, y)])
    params = dict(model.named_parameters())
    d = compute(frozenset({"grad"}), model, params, ctx, Sample(batches=1))
    assert torch.allclose(d.g["weight"], grad, atol=1e-6)
    s = Site(w, g=d.g["weight"])
    assert torch.allclose(build("taylor").filter(s), (w * grad).sum(1).abs(), atol=1e-6)
    # one batch: the mean of squared batch gradients is the square of its gradient
    d2 = compute(frozenset({"grad_sq"}), model, params, ctx, Sample(batches=1))
    assert torch.allclose(d2.g2["weight"], grad**2, atol=1e-6)
    s2 = Site(w, g2=d2.g2["weight"])
    assert torch.allclose(build("fisher").weight(s2), w**2 * grad**2, atol=1e-6)
    assert torch.allclose(build("undecayed", eps=0.1).weight(s), (-w * grad + 0.1 * w**2).abs())


def test_activation_measure_is_the_mean_absolute_output_per_channel():
    net = conv_net().eval()
    batches = data(1)
    params = {k: p for k, p in net.named_parameters() if p.dim() > 1}
    d = compute(frozenset({"activations"}), net, params, context(batches), Sample(batches=1))
    with torch.no_grad():
        out = net[3](net[2](net[1](net[0](batches[0][0]))))  # (B, 5, 4, 4)
    assert torch.allclose(d.activation["3.weight"], out.abs().mean(dim=(0, 2, 3)), atol=1e-6)
    assert not net[3]._forward_hooks  # the hooks are gone


def test_synflow_gradient_by_hand_on_a_linear_network():
    # R = 1^T |W2| |W1| 1, so dR/dW1[i, j] = sum_k |W2|[k, i] and dR/dW2[k, i] = sum_j |W1|[i, j]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = dict(net.named_parameters())
    ctx = context([(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))])
    d = compute(frozenset({"synflow"}), net, params, ctx, Sample())
    w1, w2 = net[0].weight.detach(), net[1].weight.detach()
    assert torch.allclose(d.synflow["0.weight"], w2.abs().sum(0)[:, None].expand(3, 4))
    assert torch.allclose(d.synflow["1.weight"], w1.abs().sum(1)[None, :].expand(2, 3))
    scores = build("synflow").weights(sites(params, d), ctx)
    assert torch.allclose(scores["0.weight"], (w1 * w2.abs().sum(0)[:, None]).abs())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # left as it was


def test_synflow_prunes_in_rounds_on_the_exponential_schedule():
    """The flow method's SynFlow rounds equal the authors' loop, written out here."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Linear(5, 4, bias=False))
    w1, w2 = net[0].weight.detach().clone(), net[1].weight.detach().clone()
    m1, m2 = torch.ones_like(w1, dtype=torch.bool), torch.ones_like(w2, dtype=torch.bool)
    rounds, sparsity = 4, 0.75
    for k in range(1, rounds + 1):  # score the masked network, keep density^(k/n) globally
        a1, a2 = (w1 * m1).abs(), (w2 * m2).abs()
        s1, s2 = a1 * a2.sum(0)[:, None], a2 * a1.sum(1)[None, :]
        s1, s2 = s1.masked_fill(~m1, -1), s2.masked_fill(~m2, -1)  # masked ones rank first
        flat = torch.cat([s1.flatten(), s2.flatten()])
        prune = round((1 - (1 - sparsity) ** (k / rounds)) * flat.numel())
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[torch.argsort(flat, stable=True)[:prune]] = False
        m1, m2 = keep[: w1.numel()].view_as(w1), keep[w1.numel() :].view_as(w2)
    method = METHODS.get("flow")(FlowConfig(measure="synflow", sparsity=sparsity, rounds=rounds))
    assert method.rounds(context([])) == rounds
    assert METHODS.get("flow")(FlowConfig(measure="synflow")).rounds(context([])) == 100
    params = method.prunable(net)
    ctx = context([(torch.randn(3, 6), torch.zeros(3, dtype=torch.long))])
    masks = method.prune(net, Masks.ones(params), ctx)
    assert torch.equal(masks["0.weight"], m1) and torch.equal(masks["1.weight"], m2)


def test_measure_validation_names_the_valid_ones():
    check("fpgm", "filter")
    with pytest.raises(ConfigError, match="no per-weight score"):
        check("fpgm", "weight")
    with pytest.raises(ConfigError, match="no per-weight score"):
        FlowConfig(measure="bn_gamma")
    with pytest.raises(ConfigError, match="scope"):
        FilterConfig(scope="neuron")


def test_l1_filter_pruning_at_one_rate_per_layer():
    net = conv_net()
    method = METHODS.get("filter")(FilterConfig(measure="l1", scope="layer", sparsity=0.4))
    ctx = context(data(1))
    masks = Masks.ones(method.prunable(net))
    l1 = net[3].weight.detach().abs().reshape(5, -1).sum(1)
    masks.update(method.prune_fraction(net, masks, ctx, 0.4))
    keep = method.keep_from(masks, method.groups)["3"]
    assert int((~keep).sum()) == int(0.4 * 5)  # the authors' int(rate * filters)
    assert set(torch.nonzero(~keep).flatten().tolist()) == set(torch.argsort(l1)[:2].tolist())
    assert bool((net[3].weight.detach()[~keep] == 0).all()) and bool(
        (net[4].weight[~keep] == 0).all()
    )


def test_soft_pruning_chooses_afresh_after_every_epoch():
    net = conv_net()
    method = METHODS.get("filter")(
        FilterConfig(measure="l1", scope="layer", sparsity=0.4, when="soft")
    )
    ctx = context(data(1))
    masks = Masks.ones(method.prunable(net))
    (schedule,) = method.callbacks(0, masks, ctx)
    assert isinstance(schedule, ChannelSchedule)
    schedule.on_level_start(net, steps_per_epoch=1, epochs=3)  # pruned before the first step
    first = method.keep_from(masks, method.groups)["3"].clone()
    assert int((~first).sum()) == 2
    back = int(torch.nonzero(~first)[0])
    with torch.no_grad():  # training moved things: a pruned filter is now the largest
        net[3].weight[back] = 10.0
    schedule.on_epoch_end(0, net)
    second = method.keep_from(masks, method.groups)["3"]
    assert bool(second[back]) and int((~second).sum()) == 2  # it came back, the rate holds


def test_derivatives_of_weights_need_no_data():
    assert compute(frozenset({"weights"}), nn.Linear(2, 2), {}, None, Sample()) == Derivatives()
    assert math.isclose(build("undecayed", eps=0.25).eps, 0.25)


# --- issue 22: the needs vocabulary -----------------------------------------------------------
def input_norms(r: Request) -> dict[str, dict[str, torch.Tensor]]:
    """Wanda's statistic: ||X_j||_2 of every input feature j of each linear layer, over the
    sample's rows."""
    modules = dict(r.model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [
        modules[k.rpartition(".")[0]].register_forward_hook(
            lambda m, inputs, out, k=k: seen.setdefault(k, []).append(inputs[0].detach())
        )
        for k in r.params
    ]
    with torch.no_grad():
        for x, _ in r.batches:
            r.model(x)
    for h in handles:
        h.remove()
    return {"input_norm": {k: torch.cat(xs).norm(dim=0) for k, xs in seen.items()}}


@dataclass
class Wanda(Measure):
    """|W_ij| ||X_j||_2 (Sun et al. 2024), written as a user would add it."""

    needs: ClassVar[frozenset[str]] = frozenset({"input_norm"})

    def weight(self, site: Site) -> torch.Tensor:
        return site.theta.abs() * site.input_norm[None, :]


def test_a_new_statistic_is_one_registration(monkeypatch):
    """A provider registered under a new need (nothing else edited) is validated, computed on
    the sample, handed to the sites under its field and read by a measure that needs it."""
    provider = Provider("input_norm", ("input_norm",), input_norms)
    monkeypatch.setitem(NEEDS._entries, "input_norm", provider)
    monkeypatch.setitem(IMPORTANCE._entries, "wanda", Wanda)
    check("wanda", "weight")
    model = nn.Linear(3, 2, bias=False)
    batches = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])), (torch.randn(2, 3), torch.zeros(2))]
    ctx = context(batches, num_classes=2)
    params = dict(model.named_parameters())
    scores = weight_scores(build("wanda"), model, params, ctx, Sample(batches=2))
    norms = torch.cat([x for x, _ in batches]).norm(dim=0)
    assert torch.allclose(scores["weight"], model.weight.detach().abs() * norms)
    assert "input_norm" in NEEDS.names()
    assert Site(model.weight, input_norm=norms).input_norm is norms


def test_an_unknown_need_is_one_line_naming_the_valid_ones(monkeypatch):
    with pytest.raises(UserError, match="unknown need 'input_norm'; valid needs: activations, bn"):
        compute(frozenset({"input_norm"}), nn.Linear(2, 2), {}, None, Sample())
    monkeypatch.setitem(IMPORTANCE._entries, "wanda", Wanda)  # its provider is not registered
    with pytest.raises(ConfigError, match="needs input_norm, which no provider computes") as err:
        check("wanda", "weight")
    assert "\n" not in str(err.value) and "valid needs: activations" in str(err.value)


def test_a_site_holds_the_statistics_providers_fill_and_no_misspelt_one():
    w = torch.ones(2, 3)
    site = Site(w, g=w * 2)
    assert torch.equal(site.g, w * 2) and site.hg is None and site.activation is None
    with pytest.raises(AttributeError, match="no statistic 'gg'"):
        _ = site.gg
    with pytest.raises(TypeError, match="no statistic"):
        Site(w, gg=w)
    d = Derivatives({"g": {"weight": w}})
    assert d.g == {"weight": w} and d.hg is None and d.of("weight") == {"g": w}
    with pytest.raises(AttributeError, match="no provider computes 'gg'"):
        _ = d.gg


def test_hessian_grad_serves_the_g_of_grad(monkeypatch):
    """Asked together, g is computed once, by hessian_grad: grad's provider is not called."""

    def fails(r: Request) -> dict:
        raise AssertionError("grad computed although hessian_grad gives g")

    model = nn.Linear(3, 2, bias=False)
    ctx = context([(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))], num_classes=2)
    params = dict(model.named_parameters())
    alone = compute(frozenset({"grad"}), model, params, ctx, Sample(batches=1))
    monkeypatch.setitem(NEEDS._entries, "grad", dataclasses.replace(NEEDS.get("grad"), fn=fails))
    both = compute(frozenset({"grad", "hessian_grad"}), model, params, ctx, Sample(batches=1))
    assert set(both.tables) == {"g", "hg"}
    assert torch.equal(both.g["weight"], alone.g["weight"])


def test_scoring_settings_are_declared_once_and_handed_to_the_measure():
    names = {f.name for f in dataclasses.fields(MeasureSettings)}
    assert names == {
        "samples",
        "score_temperature",
        "grasp_temperature",
        "samples_per_class",
        "depthwise_score",
    }
    for config in (FlowConfig, FilterConfig, CrosswordConfig):
        assert issubclass(config, MeasureSettings)
        # inherited, not declared again (the class body's own annotations)
        assert not names & set(vars(config).get("__annotations__", {}))
    grasp = build("grasp", FlowConfig(grasp_temperature=50.0, samples_per_class=3, samples=30))
    assert type(grasp.settings) is MeasureSettings  # the settings alone, not the method config
    assert grasp.sample(FlowConfig(samples=30).scoring_sample()) == Sample(
        per_class=3, balanced=True, temperature=50.0
    )
    assert FilterConfig(samples=7, score_temperature=5.0).scoring_sample() == Sample(
        samples=7, temperature=5.0
    )
    # a method config without scoring settings (a level method's) leaves the defaults
    assert build("grasp", MagnitudeConfig()).settings == MeasureSettings()
