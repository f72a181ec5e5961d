"""``activations`` (field ``activation``): the mean |output| of each output channel of the modules
whose weights are scored, over the scoring sample, by weight name.

The channel is the output's dimension that the weight's rows make: dimension 1 of a convolution's
(B, C, ...) output, the last one of a linear layer's (..., out_features) output. A linear layer
of a token-mixing network (MLP-Mixer, a transformer block) maps (B, T, C) to (B, T, out), so
dimension 1 there is the tokens, not the channels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from prune_cli.pruning.derivatives import Request, Tables, provider
from prune_cli.pruning.method import Batch


def channel_dim(module: nn.Module) -> int:
    """The dimension of ``module``'s output that holds its output channels."""
    return -1 if isinstance(module, nn.Linear) else 1


def channel_activations(
    model: nn.Module, params: Mapping[str, Tensor], batches: list[Batch]
) -> dict[str, Tensor]:
    """Mean |output| of every output channel of the modules owning ``params`` (over the batch
    and every other position: a convolution's pixels, a linear layer's tokens), by weight name."""
    modules = dict(model.named_modules())
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str, dim: int) -> Callable[[nn.Module, object, Tensor], None]:
        def record(module: nn.Module, inputs: object, output: Tensor) -> None:
            channels = output.shape[dim]
            a = output.detach().abs().movedim(dim, 0).reshape(channels, -1)  # (out, rest)
            sums[name] = sums.get(name, 0) + a.sum(dim=1)
            counts[name] = counts.get(name, 0) + a.shape[1]

        return record

    # the owner of ``weight`` alone is the model itself (a bare layer): rpartition gives ""
    owners = {k: modules[k.rpartition(".")[0]] for k in params if k.rpartition(".")[2] == "weight"}
    handles = [m.register_forward_hook(hook(k, channel_dim(m))) for k, m in owners.items()]
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {k: sums[k] / counts[k] for k in sums}


@provider("activations", "activation")
def _activations(r: Request) -> Tables:
    return {"activation": channel_activations(r.model, r.params, r.batches)}
