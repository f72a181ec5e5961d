"""``synflow`` (field ``synflow``): dR/dtheta of R = 1^T f(1; |theta|), the all-ones input
through the network with every parameter and buffer replaced by its absolute value, in eval mode
and in float64 (Tanaka et al. 2020). Data-free: only the input's shape is read off one batch."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from prune_cli.pruning.derivatives import Request, Tables, provider


def synflow_gradient(
    model: nn.Module, params: Mapping[str, Tensor], input_shape: torch.Size
) -> dict[str, Tensor]:
    """dR/dtheta for R = sum of the outputs of the all-ones input through |theta| (SynFlow).

    A float64 copy of the model in eval mode, every floating parameter and buffer replaced by its
    absolute value (the authors linearise in place and restore the signs; a copy leaves the model
    as it was). float64 because R is a product over the depth: 100 rounds on a deep network
    overflow float32.
    """
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    own = dict(net.named_parameters())
    names = list(params)
    device = next(iter(params.values())).device
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    grads = torch.autograd.grad(net(ones).sum(), [own[k] for k in names])
    return {k: g.to(params[k].dtype) for k, g in zip(names, grads, strict=True)}


@provider("synflow", "synflow", sample=False)
def _synflow(r: Request) -> Tables:
    x, _ = next(iter(r.context.batches(1)))
    return {"synflow": synflow_gradient(r.model, r.params, x.shape[1:])}
