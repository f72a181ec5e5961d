"""Masks, scopes, scores and schedules: exact counts, masks only shrink, ignored layers kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.pruning.level import LevelConfig, LevelPruning
from prune_cli.pruning.mask import Masks, nonzero_counts, prunable_parameters
from prune_cli.pruning.method import METHODS, PruneContext
from prune_cli.pruning.schedule import RewindPoint, level_target
from prune_cli.pruning.scope import fraction_of_remaining, fraction_of_total, select
from prune_cli.pruning.scores import SCORES


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 10),
        nn.ReLU(),
        nn.Linear(10, 3),
    )


def context(level: int = 1, seed: int = 0) -> PruneContext:
    return PruneContext(
        level=level,
        seed=seed,
        device=torch.device("cpu"),
        batches=lambda n: iter(()),
        loss_fn=nn.functional.cross_entropy,
        weight_decay=0.0,
        num_classes=3,
        load_state=lambda name: {},
    )


def test_prunable_parameters_are_conv_and_linear_weights_minus_ignored():
    net = small_net()
    assert list(prunable_parameters(net)) == ["0.weight", "4.weight", "6.weight"]
    assert list(prunable_parameters(net, ["6.*"])) == ["0.weight", "4.weight"]


@pytest.mark.parametrize("target", [0.0, 0.3, 0.5, 0.9, 0.999])
def test_global_scope_prunes_exactly_and_the_smallest(target):
    net = small_net()
    params = prunable_parameters(net)
    masks = Masks.ones(params)
    scores = {k: p.detach().abs() for k, p in params.items()}
    new = select(params, scores, masks, "global", fraction_of_total(target))
    total = sum(m.numel() for m in new.values())
    pruned = sum(int((~m).sum()) for m in new.values())
    assert pruned == round(target * total)
    if 0 < pruned < total:
        pruned_max = max(float(s[~new[k]].max()) for k, s in scores.items() if (~new[k]).any())
        kept_min = min(float(s[new[k]].min()) for k, s in scores.items() if new[k].any())
        assert pruned_max <= kept_min


@pytest.mark.parametrize("scope", ["layer", "neuron"])
def test_layer_and_neuron_scopes_prune_each_unit_exactly(scope):
    net = small_net()
    params = prunable_parameters(net)
    masks = Masks.ones(params)
    scores = {k: p.detach().abs() for k, p in params.items()}
    new = select(params, scores, masks, scope, fraction_of_total(0.6))
    for _name, m in new.items():
        rows = m.reshape(1, -1) if scope == "layer" else m.reshape(m.shape[0], -1)
        for row in rows:
            assert int((~row).sum()) == round(0.6 * row.numel())


def test_masks_only_shrink_even_when_scores_prefer_pruned_weights():
    net = small_net()
    params = prunable_parameters(net)
    masks = Masks.ones(params)
    first = select(
        params,
        {k: torch.rand(p.shape) for k, p in params.items()},
        masks,
        "global",
        fraction_of_total(0.5),
    )
    masks.update(first)
    # scores that rank every pruned weight highest, NaN and -inf among the kept ones
    adversarial = {
        k: torch.where(first[k], torch.full_like(p, -float("inf")), 1e9) for k, p in params.items()
    }
    adversarial["4.weight"][0, 0] = float("nan")
    second = select(params, adversarial, masks, "global", fraction_of_total(0.7))
    new = Masks(second)
    assert new.is_subset_of(masks)
    assert new.numel() - new.kept() == round(0.7 * new.numel())


def test_fraction_of_remaining_prunes_that_share_of_the_unmasked():
    net = small_net()
    params = prunable_parameters(net)
    masks = Masks.ones(params)
    n = masks.numel()
    scores = {k: p.detach().abs() for k, p in params.items()}
    masks.update(select(params, scores, masks, "global", fraction_of_remaining(0.2)))
    assert masks.kept() == n - round(0.2 * n)


def test_mask_apply_save_load_and_counts(tmp_path):
    net = small_net()
    params = prunable_parameters(net)
    masks = Masks.ones(params)
    masks.update({"4.weight": torch.rand(params["4.weight"].shape) > 0.5})
    masks.apply_(params)
    _numel, nonzero = nonzero_counts(params)["4.weight"]
    assert nonzero == int(masks["4.weight"].sum())
    masks.save(tmp_path / "m.pt")
    loaded = Masks.load(tmp_path / "m.pt")
    assert all(torch.equal(loaded[k], masks[k]) for k in masks)
    assert loaded.sparsity() == pytest.approx(masks.sparsity())


def test_level_targets():
    assert level_target(0, 3, 0.9, None) == 0.0
    assert level_target(3, 3, 0.9, None) == pytest.approx(0.9)
    assert level_target(1, 3, 0.9, None) == pytest.approx(1 - 0.1 ** (1 / 3))
    for k in range(1, 8):  # lottery ticket: 20% of the remaining per level
        assert level_target(k, 7, None, 0.2) == pytest.approx(1 - 0.8**k)


def test_rewind_points():
    assert RewindPoint.parse("init") == RewindPoint("init")
    assert RewindPoint.parse("none") == RewindPoint("none")
    assert RewindPoint.parse("3ep") == RewindPoint("epoch", 3)
    assert RewindPoint.parse("0ep") == RewindPoint("init")
    with pytest.raises(ConfigError):
        RewindPoint.parse("three")


def scope_groups(masks: Masks, scope: str) -> list[torch.Tensor]:
    """The groups a scope counts its target in (``pruning/scope.py``): all the weights, each
    tensor, or each output unit's row of ``W.view(out, -1)``."""
    if scope == "global":
        return [torch.cat([m.reshape(-1) for m in masks.values()])]
    if scope == "layer":
        return [m.reshape(-1) for m in masks.values()]
    return [row for m in masks.values() for row in m.reshape(m.shape[0], -1)]


#: settings that let a method act on the tiny network of the registry-wide test (block methods
#: skip layers of fewer than ``min_blocks`` blocks; ACDC's default phases are ImageNet epochs)
TINY = {
    "sapp": {"block_size": 2, "min_blocks": 1},
    "block_magnitude": {"block_size": 2, "min_blocks": 1},
    "acdc": {"phases": [2.0, 4.0, 6.0, 8.0, 10.0]},
}
#: methods whose dense phases give pruned weights back by design (their masks shrink within a
#: sparse phase and end at the target; tests/test_sapp.py checks that)
REGROW = {"sapp", "acdc"}


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_only_shrinks_masks_and_leaves_ignored_layers(name):
    cls = METHODS.get(name)
    method = cls(cls.Config(ignore=["6.weight"], **TINY.get(name, {})))
    net = small_net()
    if name == "sapp":  # its callbacks act on the attention it adds to the model
        net = method.prepare(net, PruneContext(0, 0, torch.device("cpu"), iter, None, 0.0, 3, dict))
    params = method.prunable(net)
    assert "6.weight" not in params and "0.weight" in params
    last_weight = net[6].weight.detach().clone()
    torch.manual_seed(1)
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))) for _ in range(4)]
    dense = {k: v.clone() for k, v in net.state_dict().items()}
    context = PruneContext(
        level=1,
        seed=0,
        device=torch.device("cpu"),
        batches=lambda n: iter(batches[:n]),
        loss_fn=nn.functional.cross_entropy,
        weight_decay=5e-4,
        num_classes=3,
        load_state=lambda state: dense,
    )
    masks = Masks.ones(params)
    callbacks = method.callbacks(0, masks, context)
    for cb in callbacks:  # methods that prune during training (GMP)
        cb.on_optimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9))  # as the Trainer
        cb.on_level_start(net, steps_per_epoch=10, epochs=12)
        for step in range(120):  # as the training loop calls them: steps, then epoch ends
            previous = Masks(dict(masks))
            cb.on_step_end(step, net)
            if (step + 1) % 10 == 0:
                cb.on_epoch_end(step // 10, net)
            assert name in REGROW or masks.is_subset_of(previous)
    for level in range(1, min(method.num_levels(), 3) + 1):
        context.level = level
        previous = Masks(dict(masks))
        masks.update(method.prune(net, masks, context))
        masks.apply_(params)
        assert masks.is_subset_of(previous)
        if isinstance(method, LevelPruning):  # the level's target, exact in every group
            for group in scope_groups(masks, method.cfg.scope):
                assert int((~group).sum()) == round(method.target(level) * group.numel())
    # every method prunes something, except a mask-free one that brings its own optimizer and
    # limit, which trains densely and only measures how far one-shot pruning could go
    assert masks.sparsity() > 0 or method.optimizer(net, 0.1) is not None or name == "limit"
    assert torch.equal(net[6].weight, last_weight)  # ignored layer untouched


def test_random_scores_depend_on_seed_and_level_only():
    net = small_net()
    params = prunable_parameters(net)
    a = SCORES.get("random")(net, params, context(1, seed=3))
    b = SCORES.get("random")(net, params, context(1, seed=3))
    c = SCORES.get("random")(net, params, context(2, seed=3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sparsity": 1.0},
        {"sparsity": -0.1},
        {"levels": -1},
        {"rate": 1.0},
        {"scope": "row"},
        {"rewind": "later"},
    ],
)
def test_impossible_level_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        LevelConfig(**kwargs)


# --- devices and layouts ---------------------------------------------------------------------
# A CUDA run crashed at its first prune because a selection built a tensor on the CPU. Tensors on
# PyTorch's ``meta`` device have shapes and no data, and mixing them with CPU tensors raises the
# same "expected device" error as mixing CUDA and CPU ones: running the selection paths on
# ``meta`` catches that class of bug on a machine without a GPU.

META = torch.device("meta")


def meta_inputs() -> tuple[dict, dict, dict]:
    params = {
        "conv.weight": torch.empty(6, 3, 3, 3, device=META),
        "fc.weight": torch.empty(10, 24, device=META),
    }
    masks = {k: torch.empty(p.shape, dtype=torch.bool, device=META) for k, p in params.items()}
    scores = {k: torch.empty(p.shape, device=META) for k, p in params.items()}
    return params, masks, scores


def count_rules():
    from prune_cli.pruning.methods.sap import sap_count

    return {
        "fraction_of_total": fraction_of_total(0.5),
        "fraction_of_remaining": fraction_of_remaining(0.2),
        "sap": sap_count(0.5, 1.0, 0.0, 1.0, 0.9),
    }


@pytest.mark.parametrize("rule", ["fraction_of_total", "fraction_of_remaining", "sap"])
@pytest.mark.parametrize("scope", ["global", "layer", "neuron"])
def test_selection_stays_on_the_masks_device(scope, rule):
    params, masks, scores = meta_inputs()
    out = select(params, scores, masks, scope, count_rules()[rule])
    for k, m in out.items():
        assert m.device == META and m.dtype == torch.bool and m.shape == masks[k].shape


def test_the_old_global_size_on_the_cpu_is_caught_on_meta():
    """The regression itself: a group size made on the CPU fails against meta masks."""
    from prune_cli.pruning.scope import Groups

    _, masks, _ = meta_inputs()
    flat = torch.cat([m.reshape(-1) for m in masks.values()]).unsqueeze(0)
    groups = Groups(flat.float(), flat, flat.double(), torch.tensor([flat.numel()]))
    with pytest.raises(RuntimeError, match="device"):
        fraction_of_total(0.5)(groups)


def test_filter_keep_is_on_the_models_device_for_masked_and_unmasked_units():
    from types import SimpleNamespace

    from prune_cli.pruning.methods.filter_pruning import FilterConfig, FilterPruning
    from prune_cli.pruning.structured import Unit

    model = nn.Linear(3, 4, device=META)
    groups = SimpleNamespace(model=model, units=[Unit("a", 4), Unit("b", 5)])
    masks = Masks({"a.weight": torch.empty(4, 3, dtype=torch.bool, device=META)})
    keep = FilterPruning(FilterConfig()).keep_from(masks, groups)
    assert {k: (v.device, v.shape) for k, v in keep.items()} == {
        "a": (META, (4,)),
        "b": (META, (5,)),
    }


def channels_last_params() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 5, 3), nn.Flatten(), nn.Linear(20, 3))
    params = prunable_parameters(net.to(memory_format=torch.channels_last))
    assert params["0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert not params["0.weight"].is_contiguous()
    return params


def test_mask_multiplicands_follow_the_weights_layout():
    """Masks from a selection or a file have the default layout; what multiplies the weights
    must have the weights' strides (else the fused multiply runs one kernel per tensor)."""
    params = channels_last_params()
    masks = Masks.ones(params)
    assert masks["0.weight"].stride() == params["0.weight"].stride()  # ones_like keeps it
    new = {k: (torch.rand(p.shape) > 0.5).contiguous() for k, p in params.items()}
    masks.update(new)
    assert masks["0.weight"].stride() == params["0.weight"].stride()
    loaded = Masks(new)  # as read from a file: default layout
    expected = {k: p.detach() * new[k] for k, p in params.items()}
    loaded.apply_(params)
    for k, p in params.items():
        assert loaded._float[k].stride() == p.stride()
        assert torch.equal(p.detach(), expected[k])


def test_all_kept_masks_skip_the_multiply_and_the_flag_follows_changes(tmp_path):
    params = prunable_parameters(small_net())
    masks = Masks.ones(params)
    assert masks.all_kept()
    masks.apply_(params)
    assert masks._float is None  # nothing was built, nothing multiplied
    masks.update({"4.weight": torch.rand(params["4.weight"].shape) > 0.5})
    assert not masks.all_kept() and not masks.to("cpu").all_kept()
    masks.apply_(params)
    assert int((params["4.weight"] != 0).sum()) == int(masks["4.weight"].sum())
    masks.save(tmp_path / "m.pt")
    assert not Masks.load(tmp_path / "m.pt").all_kept()
    masks.update({"4.weight": torch.ones(params["4.weight"].shape, dtype=torch.bool)})
    assert masks.all_kept()
    assert Masks({k: torch.ones(p.shape, dtype=torch.bool) for k, p in params.items()}).all_kept()


def test_latency_on_the_cpu_is_positive_and_leaves_the_model_as_it_was():
    from prune_cli.pruning.structured import latency_ms

    net = small_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert latency_ms(net, torch.randn(4, 1, 8, 8), repeats=3) > 0
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
