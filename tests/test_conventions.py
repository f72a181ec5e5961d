"""The conventions the papers report in (issue 25): DNS's two statistics and its two
compression ratios, and one MAC count (conv + linear) for filter pruning's thin network."""

from __future__ import annotations

import pytest
import torch
from conftest import prune_context
from torch import nn

from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS
from prune_cli.pruning.methods.dns import DnsConfig, thresholds
from prune_cli.pruning.structured import macs_and_params
from prune_cli.recording.cost import module_macs


def _dns_net() -> nn.Module:
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        # hand-chosen magnitudes: what is cut is known without running the statistics
        net[0].weight.copy_(torch.tensor([[0.01, 2.0, 0.02, 3.0]] * 3))
        net[0].bias.copy_(torch.tensor([0.001, 4.0, 0.003]))
        net[2].weight.copy_(torch.tensor([[5.0, 0.004, 6.0], [0.002, 7.0, 8.0]]))
        net[2].bias.copy_(torch.tensor([9.0, 0.005]))
    return net


def test_dns_thresholds_follow_the_chosen_statistics():
    w, b = torch.tensor([[1.0, -3.0]]), torch.tensor([5.0])
    # weights only, unbiased: mean 2, std sqrt(2); weights and bias, population: mean 3,
    # std sqrt(8 / 3)
    assert thresholds(w, 1.0)[0] == pytest.approx(0.9 * (2 + 2**0.5))
    assert thresholds(w, 1.0, b, population=True)[0] == pytest.approx(0.9 * (3 + (8 / 3) ** 0.5))


@pytest.mark.parametrize("include_biases", [None, True])
def test_dns_reports_both_compression_ratios_against_a_hand_count(include_biases):
    net = _dns_net()
    # c_rate -0.6: thresholds a = 0.37-0.40 (first layer), 2.01 (second), both conventions:
    # only the tiny entries (< 0.03) are at or below a
    cfg = DnsConfig(c_rate=-0.6, include_biases=include_biases)
    method = METHODS.get("dns")(cfg)
    masks = Masks.ones(method.prunable(net))
    ctx = prune_context([(torch.randn(4, 4), torch.tensor([0, 1, 0, 1]))], num_classes=2)
    masks.update(method.prune(net, masks, ctx))
    masks.apply_(method.prunable(net))
    info = method.finalize(net, masks, ctx)
    # 6 of 12 + 2 of 6 weights are tiny (< 0.03): 8 of 18 cut in both conventions
    assert info["weights_total"] == 18 and info["weights_nonzero"] == 10
    assert info["compression"] == pytest.approx(18 / 10)
    assert info["params_total"] == 23
    if include_biases:  # the tiny biases (0.001, 0.003, 0.005) are cut too
        assert info["params_nonzero"] == 12
        assert info["compression_all"] == pytest.approx(23 / 12)
    else:  # biases are never pruned
        assert info["params_nonzero"] == 15
        assert info["compression_all"] == pytest.approx(23 / 15)
    columns = {c.key for c in method.results.columns}
    assert {"compression", "compression_all"} <= columns


def test_dns_surgery_keeps_the_bias_masked():
    net = _dns_net()
    method = METHODS.get("dns")(DnsConfig(c_rate=-0.6, include_biases=True))
    masks = Masks.ones(method.prunable(net))
    ctx = prune_context([(torch.randn(4, 4), torch.tensor([0, 1, 0, 1]))], num_classes=2)
    masks.update(method.prune(net, masks, ctx))
    (callback,) = method.callbacks(1, masks, ctx)
    with torch.no_grad():
        net[0].bias.add_(0.5)  # an optimizer step moved every bias
    callback.on_step_end(10**6, net)  # past iter_stop: no surgery, the masks only applied
    assert net[0].bias[0].item() == 0.0 and net[0].bias[1].item() == pytest.approx(4.5)


def test_filter_macs_count_convolutions_and_linear_layers_like_every_level():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    # by hand: conv 4 x (1 * 3 * 3) x 6 x 6 output positions, linear 144 x 3; BN not counted
    hand = 4 * 9 * 36 + 144 * 3
    macs, params = macs_and_params(net, torch.zeros(1, 1, 8, 8))
    assert macs == hand == module_macs(net, (1, 8, 8))[0]
    assert params == sum(p.numel() for p in net.parameters())


def test_l1_layer_count_keeps_int_n_one_minus_p_with_kept():
    from prune_cli.pruning.methods.filter_pruning import layer_pruned

    # n = 10, p = 0.25: int(2.5) = 2 pruned; the reference keeps int(7.5) = 7, prunes 3
    assert layer_pruned(10, 0.25, None) == layer_pruned(10, 0.25, "pruned") == 2
    assert layer_pruned(10, 0.25, "kept") == 3
    # whole products agree (0.3 * 10 is 3.0000000000000004 in floats)
    assert layer_pruned(10, 0.3, None) == layer_pruned(10, 0.3, "kept") == 3


def test_synflow_round_count_rounds_or_floors():
    from prune_cli.pruning.methods.flow_pruning import floor_of_total
    from prune_cli.pruning.scope import Groups, fraction_of_total

    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 0] = False  # one entry of the second group already masked
    g = Groups(
        weights=torch.zeros(2, 7), mask=mask, scores=torch.zeros(2, 7), size=torch.full((2,), 7)
    )
    # target 0.5 of 7 = 3.5: round (to even) 4 masked in all, floor 3
    assert fraction_of_total(0.5)(g).tolist() == [4, 3]
    assert floor_of_total(0.5)(g).tolist() == [3, 2]
