"""Compute cost of a level: parameters and multiply-accumulates, dense and unstructured-sparse.

The dense count comes from :class:`torch.utils.flop_counter.FlopCounterMode` on one forward pass
of one sample (batch 1, the data's input shape): it counts the matrix products and convolutions
(FLOPs = 2 x MACs for both) per module, so no layer type is counted by hand. Normalisation,
activations and pooling are not counted, as in ShrinkBench and torch-pruning.

The sparse count is what an unstructured-sparse kernel would need: each weight of a convolution
or linear layer is used once per output position, so a layer's MACs scale with its non-zero
weights, ``macs_l x nonzero_l / numel_l`` = non-zero weights x output positions (ShrinkBench's
"theoretical speedup" is ``macs_dense / macs_sparse``). Layers that are not prunable count dense.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


def module_macs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """(total MACs, MACs per module path) of one forward pass of one sample of ``input_shape``
    (C, H, W). The module paths are ``named_modules()`` names; a module's count includes its
    children's."""
    from torch.utils.flop_counter import FlopCounterMode  # imported when a level is measured

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    example = torch.zeros(1, *input_shape, device=device)
    was_training = model.training
    model.eval()  # batch 1: BatchNorm must use its running statistics
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    root = type(model).__name__
    per_module: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        path = "" if key == root else key.removeprefix(f"{root}.")
        per_module[path] = sum(int(v) for v in ops.values()) // 2
    return int(counter.get_total_flops()) // 2, per_module


def network_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The parameters of the network ``model`` computes with, by their plain names.

    A layer re-parametrised with ``torch.nn.utils.parametrize`` (SequentialAttention++'s
    ``W * A * mask``) computes with the parametrised tensor, not with the raw one it trains:
    that tensor is what the run evaluates and saves as the level's ``model.pt``, so it is what a
    level's measures describe; the parametrisation's own parameters (attention logits) are not
    parameters of that network. A model without parametrisations gives its named parameters.
    """
    from torch.nn.utils import parametrize

    out: dict[str, Tensor] = {}
    for path, module in model.named_modules():
        if "parametrizations" in path.split("."):
            continue  # the raw tensors and the parametrisations' own parameters
        prefix = f"{path}." if path else ""
        for name, p in module.named_parameters(recurse=False):
            out[prefix + name] = p.detach()
        if parametrize.is_parametrized(module):
            for name in module.parametrizations:
                out[prefix + name] = getattr(module, name).detach()
    return out


def evaluated_weights(model: nn.Module, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``params`` (prunable tensors by plain name) as the network computes with them: a
    parametrised layer's weight as its parametrisation gives it (see
    :func:`network_parameters`), any other as it is."""
    network = network_parameters(model)
    return {k: network.get(k, v.detach()) for k, v in params.items()}


def level_cost(
    model: nn.Module, params: Mapping[str, Tensor], input_shape: tuple[int, ...]
) -> dict[str, Any]:
    """``params`` (all parameters), ``macs_dense`` and ``macs_sparse`` of the model as it is.

    ``params``: the prunable tensors by name (``<module path>.weight``); their zeros are what
    the sparse count removes.
    """
    total, per_module = module_macs(model, input_shape)
    saved = 0.0
    for name, weight in params.items():
        macs = per_module.get(name.rsplit(".", 1)[0] if "." in name else "")
        if not macs or weight.numel() == 0:
            continue  # not reached by the forward pass (or a root parameter): counted dense
        zeros = weight.numel() - int(torch.count_nonzero(weight))
        saved += macs * zeros / weight.numel()
    return {
        "params": sum(p.numel() for p in network_parameters(model).values()),
        "macs_dense": total,
        "macs_sparse": round(total - saved),
    }
