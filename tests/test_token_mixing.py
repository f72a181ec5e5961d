"""Issue 22: the activation measure on token-mixing networks, whose linear layers see (B, T, C)
inputs. A channel is the last dimension of a linear layer's output (dimension 1 of a
convolution's), so ``method=filter method.measure=activation`` scores a token-mixing model's
units by their own widths, and a ``model=custom`` MLP-Mixer runs end to end."""

from __future__ import annotations

import torch
from conftest import prune_context, run_config
from torch import Tensor, nn

from prune_cli.experiment import Experiment
from prune_cli.io import load_torch
from prune_cli.paths import RunPaths
from prune_cli.pruning.derivatives import Sample, compute
from prune_cli.pruning.method import METHODS
from prune_cli.pruning.methods.filter_pruning import FilterConfig
from prune_cli.spec import DataSpec

DIGITS = DataSpec(channels=1, num_classes=10, image_size=8)


class MixerBlock(nn.Module):
    """One MLP-Mixer block on (B, T, C): a token-mixing MLP over T (on the transposed tokens),
    then a channel-mixing MLP over C, each with a residual connection."""

    def __init__(self, tokens: int, channels: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.token1 = nn.Linear(tokens, token_hidden)
        self.token2 = nn.Linear(token_hidden, tokens)
        self.norm2 = nn.LayerNorm(channels)
        self.channel1 = nn.Linear(channels, channel_hidden)
        self.channel2 = nn.Linear(channel_hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x).transpose(1, 2)  # (B, C, T): token1 sees C rows of T tokens
        x = x + self.token2(torch.relu(self.token1(y))).transpose(1, 2)
        return x + self.channel2(torch.relu(self.channel1(self.norm2(x))))


class Mixer(nn.Module):
    """Patches of ``patch`` x ``patch`` pixels as tokens, a linear embedding, one mixer block,
    the mean over tokens and a linear classifier. Every width differs from the token count, so
    a channel read off the wrong dimension cannot go unnoticed."""

    def __init__(self, spec: DataSpec, patch: int = 4, channels: int = 12) -> None:
        super().__init__()
        self.patch = patch
        tokens = (spec.image_size // patch) ** 2
        self.embed = nn.Linear(spec.channels * patch * patch, channels)
        self.block = MixerBlock(tokens, channels, token_hidden=6, channel_hidden=20)
        self.head = nn.Linear(channels, spec.num_classes)

    def tokens(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images as (B, T, C * patch^2) patch tokens."""
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.embed(self.tokens(x))).mean(dim=1))


def mixer(spec: DataSpec, patch: int = 4, channels: int = 12) -> nn.Module:
    """``model=custom``'s builder (``model.target=test_token_mixing:mixer``)."""
    return Mixer(spec, patch, channels)


def labels(n: int) -> Tensor:
    return torch.arange(n) % 10


def test_a_linear_layers_channels_are_the_last_dimension_of_its_output():
    # (B, T, C) inputs with T = 6 tokens: no width of the network is 6
    net = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 7))
    batches = [(torch.randn(4, 6, 5), labels(4)), (torch.randn(2, 6, 5), labels(2))]
    params = {k: p for k, p in net.named_parameters() if p.dim() > 1}
    d = compute(frozenset({"activations"}), net, params, prune_context(batches), Sample(batches=2))
    with torch.no_grad():
        hidden = torch.cat([net[0](x) for x, _ in batches])  # (6, 6, 3)
        out = net[2](net[1](hidden))  # (6, 6, 7)
    # the mean over every example and every token, the batches weighted by their sizes
    assert d.activation["0.weight"].shape == (3,) and d.activation["2.weight"].shape == (7,)
    assert torch.allclose(d.activation["0.weight"], hidden.abs().mean(dim=(0, 1)), atol=1e-6)
    assert torch.allclose(d.activation["2.weight"], out.abs().mean(dim=(0, 1)), atol=1e-6)
    # a linear layer on (B, C) inputs: the mean over the batch, as before
    flat = [(torch.randn(5, 5), labels(5))]
    d = compute(frozenset({"activations"}), net, params, prune_context(flat), Sample(batches=1))
    with torch.no_grad():
        expected = net[0](flat[0][0]).abs().mean(dim=0)
    assert torch.allclose(d.activation["0.weight"], expected, atol=1e-6)
    # a bare linear layer (its weight is ``weight``, owned by the model itself) on (B, T, C)
    bare = nn.Linear(5, 3)
    d = compute(
        frozenset({"activations"}),
        bare,
        {"weight": bare.weight},
        prune_context(batches),
        Sample(batches=1),
    )
    with torch.no_grad():
        expected = bare(batches[0][0]).abs().mean(dim=(0, 1))
    assert torch.allclose(d.activation["weight"], expected, atol=1e-6)


def test_the_mixers_units_are_its_hidden_layers_and_their_scores_are_per_channel():
    """The token- and channel-mixing hidden layers are the units (the residual stream feeds the
    unpruned embedding); the layers after them consume their channels and are not producers.
    Each unit's activation scores have its own width, the mean |output| over batch and tokens."""
    model = mixer(DIGITS).eval()
    x = torch.randn(16, 1, 8, 8)
    method = METHODS.get("filter")(FilterConfig(measure="activation", samples=16))
    ctx = prune_context([(x, labels(16))], num_classes=10)
    groups = method.units(model, ctx)
    assert {u.root: u.weights for u in groups.units} == {
        "block.token1": ["block.token1.weight"],
        "block.channel1": ["block.channel1.weight"],
    }
    scores = method.channel_scores(model, groups, ctx)
    with torch.no_grad():
        tokens = model.embed(model.tokens(x))  # (16, 4, 12)
        block = model.block
        token1 = block.token1(block.norm1(tokens).transpose(1, 2))  # (16, 12, 6)
        mixed = tokens + block.token2(torch.relu(token1)).transpose(1, 2)
        channel1 = block.channel1(block.norm2(mixed))  # (16, 4, 20)
    assert torch.allclose(scores["block.token1"], token1.abs().mean(dim=(0, 1)), atol=1e-6)
    assert torch.allclose(scores["block.channel1"], channel1.abs().mean(dim=(0, 1)), atol=1e-6)


def test_activation_filter_pruning_of_a_custom_token_mixing_model_runs_end_to_end(tmp_path):
    cfg = run_config(
        [
            "model=custom",
            f"model.target={__name__}:mixer",
            "method=filter",
            "method.measure=activation",
            "method.rounds=1",  # the early schedule in one round: p after the first epoch
            "method.latency_repeats=1",
            "train.epochs=1",
            "progress=false",
        ]
    )
    summary = Experiment(cfg, tmp_path / "run").run()
    assert summary["status"] == "completed"
    info = summary["method_info"]
    # 6 token-mixing + 20 channel-mixing filters, half of them gone in one global ranking
    assert info["filters_prunable"] == 26 and info["filters_kept"] == 13
    assert info["max_output_difference"] < 1e-4  # the thinner network computes the masked one
    thin = load_torch(RunPaths(tmp_path / "run").extra("final_model.pt"))
    removed = thin["removed"]
    assert set(removed) == {"block.token1", "block.channel1"}
    assert sum(len(v) for v in removed.values()) == 13
    assert thin["state_dict"]["block.channel1.weight"].shape[0] == 20 - len(
        removed["block.channel1"]
    )
    assert thin["state_dict"]["block.token1.weight"].shape[0] == 6 - len(removed["block.token1"])
