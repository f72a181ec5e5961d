"""SequentialAttention++, ACDC and block-magnitude pruning (METHODS.md section 4)."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from prune_cli.callbacks import Callback
from prune_cli.errors import ConfigError
from prune_cli.pruning.blocks import BlockLayout, blocks_to_prune, from_matrix, matrix_view
from prune_cli.pruning.mask import Masks, prunable_parameters
from prune_cli.pruning.methods.sapp import (
    SappConfig,
    SequentialAttentionPP,
    attention_modules,
    exponential_sparsity,
    fold,
)
from prune_cli.pruning.phases import PAPER_PHASES, BlockPhases, PhaseSchedule


def small_net() -> nn.Module:
    # conv (6, 3, 3, 3): a 27 x 6 matrix; linear (10, 96): a 96 x 10 matrix
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 10))


# --- blocks ---------------------------------------------------------------------------------------
def test_conv_weight_maps_to_the_hwio_matrix_and_back():
    w = torch.randn(5, 3, 2, 4)  # (Cout, Cin, kh, kw)
    m = matrix_view(w)
    assert m.shape == (2 * 4 * 3, 5)
    # row (i, j, c) of the kh*kw*Cin rows, column o
    assert m[(1 * 4 + 2) * 3 + 1, 4] == w[4, 1, 1, 2]
    assert torch.equal(from_matrix(m, w.shape), w)
    lin = torch.randn(7, 9)
    assert torch.equal(matrix_view(lin), lin.T)
    assert torch.equal(from_matrix(matrix_view(lin), lin.shape), lin)


def test_block_counts_include_the_edge_blocks_with_their_real_size():
    layout = BlockLayout((6, 3, 3, 3), 4)  # 27 x 6: 7 x 2 blocks
    assert layout.grid == (7, 2) and layout.n_blocks == 14
    sizes = layout.sizes().reshape(7, 2)
    assert sizes[0].tolist() == [16, 8]  # the last column of blocks is 2 wide
    assert sizes[-1].tolist() == [12, 6]  # the last row of blocks is 3 high
    assert int(sizes.sum()) == 27 * 6
    # expand puts each block's value on exactly its weights
    ids = layout.expand(torch.arange(14.0))
    counts = torch.bincount(ids.long().reshape(-1), minlength=14)
    assert counts.tolist() == layout.sizes().tolist()
    assert int(matrix_view(ids)[26, 5]) == 13  # the corner weight is in the last block


def test_layers_with_too_few_blocks_stay_dense():
    method = SequentialAttentionPP(SappConfig(block_size=4, min_blocks=20))
    model = small_net()
    # conv: 14 blocks (< 20, dense); linear 96 x 10: 24 x 3 = 72 blocks
    assert method.eligible(model) == ["3.weight"]
    method.prepare(model, None)
    assert list(attention_modules(model)) == ["3.weight"]
    info = method.block_report(model, Masks.ones(method.prunable(model)))
    assert info["layers_skipped"] == ["0.weight"]
    assert info["layers"]["3.weight"]["blocks"] == 72


def test_block_selection_counts_real_weights_and_is_nested():
    sizes = {"a": torch.tensor([16, 8, 16, 8])}
    scores = {"a": torch.tensor([0.1, 0.2, 0.3, 0.4])}
    kept = {"a": torch.ones(4, dtype=torch.bool)}
    # 48 weights: 50% = 24 = the two lowest blocks (16 + 8)
    half = blocks_to_prune(scores, sizes, kept, 0.5, "layer")
    assert half["a"].tolist() == [False, False, True, True]
    # scores change, but what is pruned stays pruned
    more = blocks_to_prune({"a": torch.tensor([9.0, 9.0, 0.5, 0.1])}, sizes, half, 0.7, "layer")
    assert more["a"].tolist() == [False, False, True, False]  # +8 (32 <= 33.6), +16 too many


# --- attention ------------------------------------------------------------------------------------
def test_attention_is_one_at_initialisation_and_logits_are_not_prunable():
    method = SequentialAttentionPP(SappConfig(block_size=2, min_blocks=1))
    model = small_net()
    x = torch.randn(4, 3, 6, 6)
    dense = model(x)
    method.prepare(model, None)
    assert torch.equal(model(x), dense)
    for a in attention_modules(model).values():
        assert torch.allclose(a.attention(), torch.ones(a.logits.numel()))
    assert set(method.prunable(model)) == {"0.weight", "3.weight"}
    # the logits are 1-d parameters: in the optimizer (weight decay), never masked
    names = [k for k, _ in model.named_parameters()]
    assert "0.parametrizations.weight.0.logits" in names
    assert not any("logits" in k for k in prunable_parameters(model))


def test_attention_is_clipped_to_density_and_its_inverse():
    method = SequentialAttentionPP(SappConfig(block_size=2, min_blocks=1, sparsity=0.75))
    model = small_net()
    method.prepare(model, None)
    a = attention_modules(model)["3.weight"]
    with torch.no_grad():
        a.logits.normal_(0, 10)
    values = a.attention()
    assert values.min() >= 0.25 - 1e-6 and values.max() <= 4.0 + 1e-6


def test_folding_keeps_the_outputs_and_gives_a_plain_network():
    method = SequentialAttentionPP(SappConfig(block_size=2, min_blocks=1))
    model = small_net()
    method.prepare(model, None)
    masks = Masks.ones(method.prunable(model))
    with torch.no_grad():
        for k, a in attention_modules(model).items():
            a.logits.normal_()
            a.block_mask[::3] = False
            masks.update({k: a.layout.expand(a.block_mask)})
    masks.apply_(method.prunable(model))
    x = torch.randn(4, 3, 6, 6)
    before = model(x)
    fold(model)
    assert torch.allclose(model(x), before, atol=1e-6)
    plain = small_net()
    plain.load_state_dict(model.state_dict())  # the registered class loads it
    assert torch.allclose(plain(x), before, atol=1e-6)
    # a pruned block is exactly zero in the folded weight
    layout = BlockLayout((10, 96), 2)
    assert matrix_view(plain[3].weight)[:2, :2].abs().sum() == 0
    assert layout.n_blocks == 240


# --- phases ---------------------------------------------------------------------------------------
def test_sparsification_schedule_end_points_and_monotone():
    assert exponential_sparsity(0.0, 0.9, 4.0) == 0.0
    assert exponential_sparsity(1.0, 0.9, 4.0) == pytest.approx(0.9)
    values = [exponential_sparsity(t / 20, 0.9, 4.0) for t in range(21)]
    assert all(b > a for a, b in itertools.pairwise(values))
    # front-loaded: more than half of the target in the first quarter (1 - e^-1 over 1 - e^-4)
    assert values[5] == pytest.approx(0.9 * (1 - math.exp(-1)) / (1 - math.exp(-4)))


def test_paper_phases_are_the_resnet50_schedule():
    p = PAPER_PHASES
    assert p[0] == 0.10 and p[-1] == 0.85  # 10% dense at first, final 15% sparse
    segments = [b - a for a, b in zip([0, *p], [*p, 1.0], strict=True)]
    assert len(segments) == 16  # dense, 7 x (sparse, dense), sparse
    assert [round(s, 2) for s in segments[1:-2]] == [0.05] * 13
    assert round(segments[-2], 2) == 0.10  # the last dense phase is 5% longer
    assert round(segments[-1], 2) == 0.15


def test_phase_schedule_kinds_and_tau():
    schedule = PhaseSchedule([10, 30, 40], 60, 0.5)
    kinds = [schedule.at(d).kind for d in range(60)]
    assert kinds[:10] == ["dense"] * 10
    assert kinds[10:20] == ["sparsify"] * 10 and kinds[20:30] == ["sparse"] * 10
    assert kinds[30:40] == ["dense"] * 10
    assert kinds[40:50] == ["sparsify"] * 10 and kinds[50:] == ["sparse"] * 10
    assert schedule.at(15).tau == 0.5 and schedule.at(20).tau == 1.0
    with pytest.raises(ConfigError):
        SappConfig(phases=[0.1, 0.5])  # must end sparse: an odd number of boundaries


class Probe:
    """A SA++ callback on ``small_net`` driven step by step, without data."""

    def __init__(self, phases: list[float], steps: int, fraction: float = 0.5) -> None:
        cfg = SappConfig(
            block_size=2, min_blocks=50, sparsity=0.75, phases=phases, sparsify_fraction=fraction
        )
        self.method = SequentialAttentionPP(cfg)
        self.model = self.method.prepare(small_net(), None)
        self.params = self.method.prunable(self.model)
        self.masks = Masks.ones(self.params)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        (self.callback,) = self.method.callbacks(0, self.masks, None)
        self.callback.on_optimizer(self.optimizer)
        self.callback.on_level_start(self.model, steps, 1)

    def step(self, step: int) -> None:
        self.optimizer.zero_grad()
        self.model(torch.randn(2, 3, 6, 6)).square().mean().backward()
        self.optimizer.step()
        self.masks.apply_(self.params)
        self.callback.on_step_end(step, self.model)


def test_masks_are_nested_within_a_sparsification_and_reach_the_target():
    probe = Probe([0.2, 0.5, 0.7], steps=40)  # sparsify over steps 8..14, sparse 14..20
    layer = "3.weight"
    attention = attention_modules(probe.model)[layer]
    previous = probe.masks[layer].clone()
    sparsities = []
    for step in range(19):  # 19 steps done: still sparse (20 starts the dense phase)
        probe.step(step)
        current = probe.masks[layer]
        assert not bool((current & ~previous).any()), "a pruned weight came back"
        assert torch.equal(attention.layout.expand(attention.block_mask), current)
        previous = current.clone()
        sparsities.append(1 - float(current.float().mean()))
    assert sparsities[6] == 0.0  # still dense
    assert 0 < sparsities[9] < sparsities[12] < 0.75
    assert sparsities[13] == pytest.approx(0.75, abs=4 / 960)  # tau = 1: within one block
    assert probe.masks["0.weight"].all()  # too few blocks: dense throughout
    for step in range(19, 28):  # the dense phase brings every block back, at zero
        probe.step(step)
    assert probe.masks[layer].all()


def test_the_optimizer_state_is_empty_after_a_phase_change():
    probe = Probe([0.2, 0.5, 0.7], steps=40)
    for step in range(7):
        probe.step(step)
    assert probe.optimizer.state  # momentum buffers after dense steps
    probe.step(7)  # 8 steps done: the sparsification starts
    assert len(probe.optimizer.state) == 0 and probe.callback.resets == 1
    probe.step(8)
    assert probe.optimizer.state  # and refills with the next step


def test_the_trainer_hands_callbacks_the_optimizer():
    from prune_cli.training.loop import Trainer

    class Keep(Callback):
        optimizer = None

        def on_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer

    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    keep = Keep()
    data = SimpleNamespace(num_batches=lambda split, batch: 1)
    cfg = SimpleNamespace(
        channels_last=False,
        cudnn_benchmark=None,
        bf16=False,
        compile=False,
        compile_mode=None,
        cuda_graphs=None,
        batch_size=2,
    )
    Trainer(model, data, cfg, optimizer, None, None, [keep])
    assert keep.optimizer is optimizer


def test_callback_cache_is_rebuilt_from_the_masks_on_resume():
    probe = Probe([0.2, 0.5, 0.7], steps=40)
    for step in range(12):
        probe.step(step)
    again = BlockPhases(probe.method, probe.masks, probe.callback.steps_of, frozenset())
    again.on_level_start(probe.model, 40, 1)
    assert all(torch.equal(again.kept[k], v) for k, v in probe.callback.kept.items())


# --- ACDC and block magnitude --------------------------------------------------------------------
def test_acdc_compresses_at_once_and_resets_momentum_only_when_decompressing():
    from prune_cli.pruning.methods.acdc import Acdc, AcdcConfig

    method = Acdc(AcdcConfig(sparsity=0.8, phases=[1, 2, 3]))  # epochs: dense, C, D, C
    model = small_net()
    params = method.prunable(model)
    masks = Masks.ones(params)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    (callback,) = method.callbacks(0, masks, None)
    callback.on_optimizer(optimizer)
    callback.on_level_start(model, 5, 4)
    sparsity, resets = [], []
    for step in range(20):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 6, 6)).square().mean().backward()
        optimizer.step()
        masks.apply_(params)
        callback.on_step_end(step, model)
        sparsity.append(masks.sparsity())
        resets.append(callback.resets)
    assert sparsity[3] == 0 and sparsity[4] == pytest.approx(0.8, abs=1e-3)  # at epoch 1
    assert sparsity[9] == 0  # decompressed at epoch 2: every weight back, at zero
    weights = torch.cat([p.detach().reshape(-1) for p in params.values()])
    assert sparsity[14] == pytest.approx(0.8, abs=1e-3) and sparsity[19] == sparsity[14]
    assert float((weights == 0).float().mean()) == pytest.approx(0.8, abs=1e-3)
    assert resets[8] == 0 and resets[9] == 1 and resets[-1] == 1  # when decompressing only


def test_acdc_phases_must_end_before_the_last_epoch():
    from prune_cli.pruning.methods.acdc import Acdc, AcdcConfig

    method = Acdc(AcdcConfig(phases=[1, 2, 4]))
    (callback,) = method.callbacks(0, Masks.ones(method.prunable(small_net())), None)
    with pytest.raises(ConfigError, match="compressed phase"):
        callback.on_level_start(small_net(), 5, 4)


def test_block_magnitude_prunes_the_weakest_blocks_per_layer():
    from prune_cli.pruning.methods.acdc import BlockMagnitude, BlockMagnitudeConfig

    method = BlockMagnitude(BlockMagnitudeConfig(sparsity=0.5, block_size=2, min_blocks=50))
    model = small_net()
    with torch.no_grad():  # the linear layer's blocks: weaker the lower their first row
        w = matrix_view(model[3].weight.data)  # a view: 96 x 10
        w.copy_(torch.arange(96.0)[:, None].expand(96, 10) + 1)
    params = method.prunable(model)
    masks = method.prune(model, Masks.ones(params), None)
    kept = matrix_view(masks["3.weight"])
    assert not kept[:48].any() and kept[48:].all()  # the 24 low block rows of 48
    assert masks["0.weight"].all()  # 42 blocks < 50: dense


# --- the demos ----------------------------------------------------------------------------------
#: the demos as they are (15 epochs; 1.5-3 s each at one thread). A 6-epoch version gave SA++ 0.32
#: to 0.83 and ACDC 0.50 to 0.92 test accuracy by seed and thread count: too short to assert a
#: floor on. The demos gave SA++ 0.735-0.939 and ACDC 0.914-0.961 over seeds 0-3 at 1 and 2
#: threads (2026-12-06).
SHORT_DEMO = {"sapp": ["method=sapp"], "acdc": ["method=acdc"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHORT_DEMO))
def test_the_demo_gives_a_sparse_accurate_lenet5(tmp_path, name):
    from conftest import run_config

    from prune_cli.experiment import Experiment

    summary = Experiment(run_config([*SHORT_DEMO[name], "progress=false"]), tmp_path).run()
    level = summary["levels"][-1]
    # sapp: the classifier and the first convolution stay dense (< 100 blocks of 4 x 4)
    low = {"sapp": 0.84, "acdc": 0.899}[name]
    assert low <= level["sparsity"] <= 0.9
    # floors well below the lowest of seeds 0-3 at 1 and 2 threads (another CPU sums in another
    # order: a floor a few points under one machine's number fails there)
    floor = {"sapp": 0.6, "acdc": 0.8}[name]
    assert level["test_accuracy"] >= floor, level["test_accuracy"]
    if name == "sapp":
        info = summary["method_info"]
        assert info["layers_skipped"] == ["classifier.4.weight", "features.0.weight"]
        assert info["fold_max_output_difference"] < 1e-4
        assert (tmp_path / info["folded_model"]).exists()
        # the level file is the plain network too: plain keys, the folded weights
        from prune_cli.io import load_torch
        from prune_cli.paths import RunPaths

        level = load_torch(RunPaths(tmp_path).level_model(0))["model"]
        folded = load_torch(tmp_path / info["folded_model"])["state_dict"]
        assert not any(".parametrizations." in k for k in level)
        assert set(level) == set(folded)
        for k, v in folded.items():
            torch.testing.assert_close(level[k], v)


def test_block_methods_share_one_scope_setting_and_the_phase_hooks_are_required():
    from prune_cli.errors import ConfigError
    from prune_cli.pruning.methods.acdc import AcdcConfig, BlockMagnitudeConfig
    from prune_cli.pruning.phases import BlockPhaseConfig, BlockPhaseMethod

    assert (SappConfig().scope, AcdcConfig().scope, BlockMagnitudeConfig().scope) == (
        "layer",
        "global",
        "layer",
    )
    for config in (SappConfig, AcdcConfig, BlockMagnitudeConfig):
        with pytest.raises(ConfigError, match=r"method\.scope"):
            config(scope="neuron")
    with pytest.raises(TypeError, match="abstract"):
        BlockPhaseMethod(BlockPhaseConfig())  # target and block_scores must be given


def test_sapp_measures_the_network_it_evaluates_and_saves(tmp_path):
    """The level's PQI, Gini, sparsity and parameter counts are those of W * A * mask (the
    saved level file), not of the raw weights SA++ trains (issue 25)."""
    from conftest import run_config

    from prune_cli.experiment import Experiment
    from prune_cli.io import load_torch
    from prune_cli.metrics import gini_index, pq_index
    from prune_cli.paths import RunPaths

    cfg = run_config(["method=sapp", "method.min_blocks=1", "train.epochs=2", "progress=false"])
    summary = Experiment(cfg, tmp_path).run()
    level = summary["levels"][0]
    paths = RunPaths(tmp_path)
    saved = load_torch(paths.level_model(0))["model"]
    mask = load_torch(paths.level_mask(0))
    weights = torch.cat([saved[k].reshape(-1) for k in mask])
    kept = torch.cat([mask[k].reshape(-1) for k in mask])
    p, q = cfg.pqi_grid[0]
    # the attention is not 1 after training: raw W and W * A * mask have different PQIs
    assert level["pqi"] == pytest.approx(pq_index(weights, kept, p, q), rel=1e-6)
    assert level["gini"] == pytest.approx(gini_index(weights, kept), rel=1e-6)
    zeros = int((weights == 0).sum())
    assert level["sparsity"] == pytest.approx(zeros / weights.numel())
    # the saved network's parameters: no attention logits among them
    assert level["params"] == sum(
        v.numel()
        for k, v in saved.items()
        if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))
    )
