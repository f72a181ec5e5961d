"""Issue 9, gradient-flow items: Lubana and Dick's settings (METHODS.md section 6 and the
authors' code): the training temperature, Fisher and GraSP as the authors compute them, pruning
the first convolution of VGG and MobileNet, and targets that the per-unit floors cannot reach."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import compose_config, conv_bn_net, prune_context, run_config
from torch import nn

from prune_cli.config import config_hash
from prune_cli.data import build_dataset, dataset_config
from prune_cli.errors import ConfigError
from prune_cli.models import build_model, model_config
from prune_cli.pruning.derivatives import Sample, compute
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.measures import build, sites, weight_scores
from prune_cli.pruning.method import METHODS, PruneContext
from prune_cli.pruning.methods import filter_pruning
from prune_cli.pruning.methods.filter_pruning import FilterConfig
from prune_cli.pruning.methods.flow_pruning import FlowConfig
from prune_cli.pruning.structured import rebuild_thin, thin_checkpoint
from prune_cli.spec import DataSpec
from prune_cli.training import loop
from prune_cli.training.config import TrainConfig
from prune_cli.training.optim import build_optimizer, build_scheduler


# --- 1. train.temperature ---------------------------------------------------------------------
def test_training_loss_is_the_cross_entropy_of_logits_over_t():
    # two samples, three classes; logits z = x W^T, by hand
    model = nn.Linear(2, 3, bias=False)
    model.weight.data.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]]))
    x = torch.tensor([[2.0, 1.0], [0.5, -1.0]])
    y = torch.tensor([0, 2])
    z = [[2.0, 2.0, -1.0], [0.5, -2.0, -1.5]]

    def ce(t: float) -> float:  # mean of log sum exp(z / t) - z_y / t
        rows = [
            (math.log(sum(math.exp(v / t) for v in zs)) - zs[c] / t)
            for zs, c in zip(z, [0, 2], strict=True)
        ]
        return sum(rows) / 2

    for t in (1.0, 5.0):
        loss, right = loop.loss_and_correct(model, x, y, False, 0.0, t)
        assert float(loss.detach()) == pytest.approx(ce(t), rel=1e-6)
        # argmax is unchanged by a positive T: sample 0 ties 2 = 2 (argmax picks class 0),
        # sample 1's largest logit is class 0, not its label 2
        assert int(right) == 1
    assert ce(5.0) != pytest.approx(ce(1.0))  # the test would not see a missing division
    # the default is T = 1: the loss is plain cross-entropy, as before the setting existed
    assert float(loop.loss_and_correct(model, x, y, False, 0.0)[0].detach()) == pytest.approx(
        ce(1.0)
    )


def test_trainer_passes_the_temperature_and_null_means_one(monkeypatch):
    seen: list[float] = []

    def spy(model, x, y, bf16, label_smoothing, temperature=1.0):
        seen.append(temperature)
        return loss_and_correct(model, x, y, bf16, label_smoothing, temperature)

    loss_and_correct = loop.loss_and_correct
    monkeypatch.setattr(loop, "loss_and_correct", spy)
    data = build_dataset(dataset_config(name="digits", limit_train=64), torch.device("cpu"))
    for t, expected in ((5.0, 5.0), (None, 1.0)):
        seen.clear()
        model = build_model("mlp", data.spec)
        cfg = TrainConfig(epochs=1, batch_size=64, temperature=t)
        opt = build_optimizer(model.parameters(), cfg, cfg.lr)
        trainer = loop.Trainer(model, data, cfg, opt, build_scheduler(opt, cfg, 1, 1), None)
        trainer.train_epoch(0, torch.Generator().manual_seed(0))
        assert seen and set(seen) == {expected}


def test_temperature_setting_keeps_old_hashes_and_the_flow_experiments_use_t5():
    # null default: the hash drops it, so every existing run keeps its directory
    assert config_hash(compose_config()) == config_hash(compose_config(["train.temperature=null"]))
    assert config_hash(compose_config()) != config_hash(compose_config(["train.temperature=5"]))
    for name in ("flow_vgg13_cifar", "flow_mobilenet_v1_cifar", "flow_resnet56_cifar"):
        cfg = run_config([f"experiment={name}"])
        assert cfg.train.temperature == 5.0 and cfg.method.score_temperature == 5.0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="temperature"):
            TrainConfig(temperature=bad)


# --- 2. Fisher and GraSP as the authors compute them ------------------------------------------
def context(batches, num_classes=3) -> PruneContext:
    return prune_context(batches, num_classes)


def softmax_grad(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, t: float = 1.0):
    """Gradient of the mean cross-entropy of (x W^T) / t in W, by the closed form
    (softmax(z / t) - onehot(y))^T x / (t n)."""
    p = torch.softmax(x @ w.T / t, dim=1) - nn.functional.one_hot(y, w.shape[0]).float()
    return p.T @ x / (t * len(y))


def test_fisher_is_the_mean_of_squared_batch_gradients_not_the_squared_mean():
    w = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]])
    model = nn.Linear(3, 2, bias=False)
    model.weight.data.copy_(w)
    # two batches of different sizes whose gradients point in different directions
    b1 = (torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]]), torch.tensor([0, 1]))
    b2 = (torch.tensor([[-2.0, 0.5, 1.0]]), torch.tensor([1]))
    g1, g2 = softmax_grad(w, *b1, t=5.0), softmax_grad(w, *b2, t=5.0)
    fisher = w**2 * (2 * g1**2 + 1 * g2**2) / 3  # batches weighted by size, as the authors
    ctx = context([b1, b2], num_classes=2)
    params = dict(model.named_parameters())
    sample = Sample(samples=3, temperature=5.0)
    scores = weight_scores(build("fisher"), model, params, ctx, sample)
    assert torch.allclose(scores["weight"], fisher, atol=1e-7)
    # the old definition, theta^2 (mean g)^2, is a different ranking input
    assert not torch.allclose(scores["weight"], w**2 * ((g1 + g2) / 2) ** 2, atol=1e-5)
    # filter score: row sums (Lubana and Dick's cal_importance_fisher)
    method = METHODS.get("flow")(FlowConfig(measure="fisher", samples=3, score_temperature=5.0))
    assert torch.allclose(method.scores(model, params, ctx)["weight"], fisher, atol=1e-7)


def test_grasp_sample_is_one_batch_per_class_of_samples_per_class():
    # 12 training examples, labels 0 1 2 0 1 2 ...; class 2 only 2 times in the second batch
    x = torch.arange(12.0).reshape(12, 1)
    batches = [(x[:6], torch.tensor([0, 1, 2, 0, 1, 0])), (x[6:], torch.tensor([1, 0, 0, 1, 2, 1]))]
    ctx = context(batches)
    drawn = Sample(per_class=2, balanced=True).draw(ctx)
    assert [b[1].tolist() for b in drawn] == [[0, 0], [1, 1], [2, 2]]
    assert [b[0].flatten().tolist() for b in drawn] == [[0.0, 3.0], [1.0, 4.0], [2.0, 10.0]]
    # null per class: samples // classes (the authors' imp_samples / num_classes)
    assert Sample(samples=9, balanced=True).examples_per_class(3) == 3
    drawn = Sample(samples=12, balanced=True).draw(ctx)  # 4 of each asked; class 2 has 2
    assert [len(b[1]) for b in drawn] == [4, 4, 2]
    # the measure takes null from a method's config, and keeps 10 where none is given
    assert build("grasp", FilterConfig(samples_per_class=None)).samples_per_class is None
    assert build("grasp", FilterConfig()).samples_per_class == 10
    assert build("grasp").samples_per_class == 10
    grasp = build("grasp", FilterConfig(samples_per_class=None, samples=2560))
    assert grasp.sample(Sample(samples=2560)).examples_per_class(10) == 256
    with pytest.raises(ConfigError, match="samples_per_class"):
        FilterConfig(samples_per_class=0)


def test_grasp_hg_is_the_mean_over_class_batches_of_h_g_at_t200():
    torch.manual_seed(0)
    w = torch.randn(3, 4)
    model = nn.Linear(4, 3, bias=False)
    model.weight.data.copy_(w)
    x = torch.randn(12, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 1, 1, 0, 2, 1, 0])
    ctx = context([(x, y)])
    params = dict(model.named_parameters())
    per_class = 2
    # by hand: the first 2 examples of each class; L = mean over classes of the class-batch loss
    picked = [torch.nonzero(y == c).flatten()[:per_class] for c in range(3)]

    def loss(weight: torch.Tensor) -> torch.Tensor:
        return sum(nn.functional.cross_entropy(x[i] @ weight.T / 200.0, y[i]) for i in picked) / 3

    g = sum(softmax_grad(w, x[i], y[i], t=200.0) for i in picked) / 3
    _, hg = torch.autograd.functional.hvp(loss, w, g)  # H g of the class-balanced loss
    grasp = build("grasp", FlowConfig(samples_per_class=per_class))
    d = compute(grasp.needs, model, params, ctx, grasp.sample(Sample(samples=2560)))
    assert torch.allclose(d.g["weight"], g, atol=1e-8)
    assert torch.allclose(d.hg["weight"], hg, rtol=1e-4, atol=1e-10)
    assert torch.allclose(grasp.weight(sites(params, d)["weight"]), w * hg, rtol=1e-4, atol=1e-10)


# --- 3. the first convolution of VGG and MobileNet ----------------------------------------------
def first_conv(model: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", ["vgg11", "mobilenet_v1"])
def test_prune_first_removes_first_conv_filters_and_thin_equals_masked(name):
    torch.manual_seed(0)
    # a quarter of the widths: the same layers and couplings, a faster test
    settings = dataclasses.replace(model_config(name), width_mult=0.25)
    model = build_model(settings, DataSpec(3, 10, 32))
    for m in model.modules():  # non-trivial BatchNorm statistics, so masking must be exact
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.3, 0.3)
    x = torch.randn(4, 3, 32, 32)
    ctx = context([(x, torch.arange(4))], num_classes=10)
    method = METHODS.get("filter")(FilterConfig(measure="magnitude", prune_first=True))
    groups = method.units(model, ctx)
    first = first_conv(model)
    # the first conv's filters are now a unit (in MobileNet rooted at the depthwise conv of the
    # first block, whose channels they are)
    unit = next(u for u in groups.units if f"{first}.weight" in u.weights)
    root = unit.root
    # its filters (and the depthwise rows coupled to them in MobileNet) made the smallest, so
    # the global magnitude ranking takes them first, down to the floor of 5% + 1
    params = dict(model.named_parameters())
    with torch.no_grad():
        for w in unit.weights:
            params[w].mul_(1e-3)
    floor = math.floor(0.05 * unit.channels) + 1  # VGG: 16 -> 1; MobileNet: 8 -> 1
    assert unit.channels == (16 if name == "vgg11" else 8)
    masks = Masks.ones(method.prunable(model))
    masks.update(method.prune_fraction(model, masks, ctx, 0.3))
    keep = method.keep_from(masks, groups)
    assert int(keep[root].sum()) == floor
    thin = groups.thin(keep, x[:1])
    assert dict(thin.named_modules())[first].out_channels == floor
    model.eval()
    with torch.no_grad():
        a, b = model(x), thin(x)
    assert torch.allclose(a, b, atol=1e-4 * max(1.0, float(a.abs().max())))
    # stored and rebuilt from a fresh dense model: the same network
    checkpoint = thin_checkpoint(thin, groups.removed(keep), (3, 32, 32), 10)
    rebuilt = rebuild_thin(build_model(settings, DataSpec(3, 10, 32)), checkpoint)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), b, atol=1e-6)


def test_flow_experiments_prune_the_first_conv_except_resnet56():
    assert run_config(["experiment=flow_vgg13_cifar"]).method.prune_first is True
    assert run_config(["experiment=flow_mobilenet_v1_cifar"]).method.prune_first is True
    assert run_config(["experiment=flow_resnet56_cifar"]).method.prune_first is False
    # null default: the hashes of existing filter runs are unchanged
    assert config_hash(compose_config(["method=filter"])) == config_hash(
        compose_config(["method=filter", "method.prune_first=null"])
    )


# --- 4. targets the per-unit floors cannot reach ------------------------------------------------
def small_net() -> nn.Module:
    return conv_bn_net(3, 4)


def test_floors_that_make_the_target_unreachable_warn_and_the_summary_says_how_far(
    tmp_path, caplog, monkeypatch
):
    # torch.export of the thin network is tested elsewhere and takes seconds: not here
    monkeypatch.setattr(filter_pruning, "export", lambda model, example, path: "not exported")
    torch.manual_seed(0)
    batches = [(torch.randn(6, 1, 8, 8), torch.arange(6) % 3)]
    ctx = context(batches)
    ctx.artifact_path = tmp_path.joinpath
    # units: the first conv (3 filters) and the second (4); min_keep 0.5 keeps
    # floor(0.5 * 3) + 1 = 2 and floor(0.5 * 4) + 1 = 3, so at most (1 + 1) / 7 can go
    cfg = FilterConfig(sparsity=0.6, min_keep=0.5, prune_first=True, latency_repeats=1)
    method = METHODS.get("filter")(cfg)
    model = small_net()
    masks = Masks.ones(method.prunable(model))
    with caplog.at_level("WARNING"):
        masks.update(method.prune_fraction(model, masks, ctx, 0.6))
        masks.update(method.prune_fraction(model, masks, ctx, 0.6))  # warned once, not twice
    warnings = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(warnings) == 1 and "0.2857" in warnings[0].getMessage()
    keep = method.keep_from(masks, method.groups)
    assert {r: int(k.sum()) for r, k in keep.items()} == {"0": 2, "3": 3}
    info = method.finalize(model, masks, ctx)
    assert info["filter_sparsity"] == pytest.approx(2 / 7)  # reached
    assert info["filter_sparsity_max"] == pytest.approx(2 / 7)
    assert info["filter_sparsity_target"] == 0.6
    # a reachable target: no warning; 0.4 of 7 is round(2.8) = 3 filters, within 5 allowed
    caplog.clear()
    method = METHODS.get("filter")(FilterConfig(sparsity=0.4, prune_first=True))
    model = small_net()
    masks = Masks.ones(method.prunable(model))
    with caplog.at_level("WARNING"):
        masks.update(method.prune_fraction(model, masks, ctx, 0.4))
    assert not [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert method.reachable(method.groups) == pytest.approx(5 / 7)  # floors 1 and 1
    assert sum(int((~k).sum()) for k in method.keep_from(masks, method.groups).values()) == 3


def test_layer_scope_reachable_fraction_by_hand():
    # scope=layer: each unit gives at most sparsity of its own filters, and never its floor:
    # min_keep 0.5, sparsity 0.6: unit of 3 gives min(1.8, 1) = 1, unit of 4 min(2.4, 1) = 1
    method = METHODS.get("filter")(
        FilterConfig(sparsity=0.6, min_keep=0.5, prune_first=True, scope="layer")
    )
    ctx = context([(torch.randn(6, 1, 8, 8), torch.arange(6) % 3)])
    groups = method.units(small_net(), ctx)
    assert method.reachable(groups) == pytest.approx(2 / 7)
    method.cfg.min_keep = 0.05  # floors 1 and 1: 1.8 + 2.4 of 7, the target itself
    assert method.reachable(groups) == pytest.approx(0.6)


# --- 5. issue 25: the authors' models, gradient-norm at T = 1, H g over all parameters -------
def balanced_net() -> tuple[nn.Module, list]:
    """conv-BN-ReLU x 3 (3, 4, 5 filters) and a linear classifier in eval mode, with
    non-trivial BatchNorm, and one batch of 12 examples of 3 classes (4 each)."""
    torch.manual_seed(0)
    model = conv_bn_net(3, 4, 5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    model.eval()
    x, y = torch.randn(12, 1, 8, 8), torch.tensor([0, 1, 2, 2, 1, 0, 1, 0, 2, 0, 1, 2])
    return model, [(x, y)]


def direct_hg(
    model: nn.Module, batch, per_class: int, t: float, names: list[str]
) -> dict[str, torch.Tensor]:
    """H g of the class-balanced loss (mean over classes of the loss of the class's first
    ``per_class`` examples, logits / t), H and g over the parameters ``names`` only, the others
    held fixed: autograd's Hessian-vector product on a functional call, no provider code."""
    x, y = batch
    picked = [torch.nonzero(y == c).flatten()[:per_class] for c in range(3)]
    params = {k: p.detach() for k, p in model.named_parameters()}

    def loss(*tensors: torch.Tensor) -> torch.Tensor:
        full = {**params, **dict(zip(names, tensors, strict=True))}
        return sum(
            nn.functional.cross_entropy(torch.func.functional_call(model, full, (x[i],)) / t, y[i])
            for i in picked
        ) / len(picked)

    primal = tuple(params[k].clone().requires_grad_() for k in names)
    g = torch.autograd.grad(loss(*primal), primal)
    _, hg = torch.autograd.functional.hvp(loss, tuple(p.detach() for p in primal), g)
    return dict(zip(names, hg, strict=True))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_gradient_norm_scores_at_t1_on_a_class_balanced_sample():
    model, batches = balanced_net()
    ctx = context(batches)
    cfg = FilterConfig(measure="gradient_norm", score_temperature=5.0, samples_per_class=2)
    method = METHODS.get("filter")(cfg)
    measure = method.measure()
    sample = measure.sample(method.sample())
    assert sample.temperature == 1.0  # not the method's score_temperature of 5
    drawn = sample.draw(ctx)
    counts = torch.bincount(torch.cat([b[1] for b in drawn]), minlength=3)
    assert counts.tolist() == [2, 2, 2]  # equal counts of every class
    # null per class: samples // classes, as the authors' imp_samples / num_classes
    authors = build("gradient_norm", FilterConfig(samples=2560, samples_per_class=None))
    assert authors.sample(Sample(samples=2560)).examples_per_class(10) == 256
    groups = method.units(model, ctx)
    scores = method.channel_scores(model, groups, ctx)
    every = [k for k, _ in model.named_parameters()]
    for t, same in ((1.0, True), (5.0, False)):
        hg = direct_hg(model, batches[0], 2, t, every)
        for u in groups.units:
            theta = dict(model.named_parameters())[f"{u.root}.weight"].detach()
            by_hand = (theta * hg[f"{u.root}.weight"]).flatten(1).sum(dim=1).abs()
            assert close(scores[u.root], by_hand) == same, (u.root, t)


def test_filter_grasp_and_gradient_norm_take_hg_over_all_parameters():
    model, batches = balanced_net()
    ctx = context(batches)
    every = [k for k, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    for measure, t in (("grasp", 200.0), ("gradient_norm", 1.0)):
        method = METHODS.get("filter")(FilterConfig(measure=measure, samples_per_class=2))
        groups = method.units(model, ctx)
        assert sorted(u.root for u in groups.units) == ["3", "6"]  # the first conv stays
        scored = groups.weight_names()
        scores = method.channel_scores(model, groups, ctx)
        # all parameters: BatchNorm, the classifier and the unpruned first convolution count
        full, restricted = (
            direct_hg(model, batches[0], 2, t, every),
            direct_hg(model, batches[0], 2, t, scored),
        )
        for u in groups.units:
            w = f"{u.root}.weight"
            row = (params[w].detach() * full[w]).flatten(1).sum(dim=1)
            assert close(scores[u.root], row.abs() if measure == "gradient_norm" else row)
            old = (params[w].detach() * restricted[w]).flatten(1).sum(dim=1)
            assert not close(scores[u.root], old.abs() if measure == "gradient_norm" else old)
    # the unstructured GraSP of method=flow keeps H g over the scored weights (Wang et al.)
    grasp = build("grasp", FlowConfig(samples_per_class=2))
    assert grasp.needs_for("weight") == grasp.needs != grasp.needs_for("filter")
    scored = {k: params[k] for k in ("3.weight", "6.weight")}
    per_weight = weight_scores(grasp, model, scored, ctx)
    restricted = direct_hg(model, batches[0], 2, 200.0, list(scored))
    for k, theta in scored.items():
        assert close(per_weight[k], theta.detach() * restricted[k])


def test_flow_experiments_use_the_authors_models_and_count_their_filters():
    counts = {}
    for name in ("flow_vgg13_cifar", "flow_resnet56_cifar", "flow_mobilenet_v1_cifar"):
        cfg = run_config([f"experiment={name}"])
        # an 8x8 input: the same layers and channels as 32x32, a faster trace
        model = build_model(cfg.model.name, DataSpec(3, 10, 8))
        ctx = context([(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))], num_classes=10)
        groups = METHODS.get("filter")(FilterConfig(prune_first=cfg.method.prune_first)).units(
            model, ctx
        )
        counts[cfg.model.name] = (len(groups.units), sum(u.channels for u in groups.units))
        if cfg.model.name == "resnet56_flow":
            streams = [u for u in groups.units if "shortcut" in u.root]
            # stages 2 and 3: the projection's filters and the nine second convolutions'
            assert sorted(u.channels for u in streams) == [32, 64]
            assert all(len(u.weights) == 10 for u in streams)
    assert counts == {
        "vgg13_flow": (10, 2944),  # the ten convolutions, no classifier hidden units
        "resnet56_flow": (29, 1008 + 32 + 64),
        "mobilenet_v1": (14, 5984),
    }
