"""``channel_taylor`` (fields ``bn_taylor``, ``w_taylor``): per-batch, per-channel first-order
Taylor terms of the scoring loss, one row per batch of the scoring sample, by weight name.

================  ===========================================================================
field             what is computed, for a scored weight W (rows: its output channels c)
================  ===========================================================================
bn_taylor         (batches, C): gamma_c dL_b/dgamma_c + beta_c dL_b/dbeta_c of the BatchNorm
                  that reads W's layer's output directly, on each batch b (signed). Only for
                  the weights whose output a BatchNorm (with affine parameters) reads.
w_taylor          (batches, C): sum over W's row c of W * dL_b/dW on each batch b (signed)
================  ===========================================================================

They are kept per batch, signed, because HALP's group score (``measures.halp``) sums them over a
unit's layers *before* the absolute value and takes the absolute value *before* the mean over
batches: neither a mean gradient nor a per-layer absolute value can give it back.

``gamma g_gamma + beta g_beta`` is sum over the channel's positions of y dL/dy, y the BatchNorm
output: the first-order loss change of zeroing the channel. Which BatchNorm follows which layer
is found on the scoring pass itself: a BatchNorm whose input *is* the tensor a scored layer put
out (the conv -> BN of every CNN here; a BN behind a concatenation or another module reads none).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from prune_cli.pruning.derivatives import Request, Tables, provider, scoring_loss
from prune_cli.pruning.providers.gradients import derivative


def following_norms(
    model: nn.Module, weights: list[str]
) -> tuple[list[RemovableHandle], dict[str, list[_BatchNorm]]]:
    """Hooks that record, on the next forward pass, the affine BatchNorms reading each scored
    weight's layer output directly (by weight name; several BNs reading one output are all
    listed), and that table, filled as the pass runs. The caller removes the hooks after the
    pass: registered afresh per batch, one batch's outputs are never compared with another's."""
    modules = dict(model.named_modules())
    # output tensor -> weight name; the tensors are held (not their ids) so none is reused
    produced: list[tuple[Tensor, str]] = []
    follows: dict[str, list[_BatchNorm]] = {}

    def record(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, Tensor):
                produced.append((output, name))

        return hook

    def read(bn: nn.Module, inputs: tuple[object, ...]) -> None:
        if not inputs or getattr(bn, "weight", None) is None:
            return
        for out, name in produced:
            if inputs[0] is out:
                found = follows.setdefault(name, [])
                if all(b is not bn for b in found):  # a module called twice reads it once
                    found.append(bn)  # type: ignore[arg-type]

    handles = []
    for k in weights:
        owner, _, leaf = k.rpartition(".")
        if leaf == "weight" and owner in modules:
            handles.append(modules[owner].register_forward_hook(record(k)))
    handles += [
        m.register_forward_pre_hook(read) for m in model.modules() if isinstance(m, _BatchNorm)
    ]

    return handles, follows


def channel_taylor(r: Request) -> Tables:
    """The per-batch tables of the module docstring, on the drawn batches in the model's mode
    (``compute`` has set it and restores the buffers afterwards)."""
    names = list(r.params)
    bn_rows: dict[str, list[Tensor]] = {}
    w_rows: dict[str, list[Tensor]] = {k: [] for k in names}
    for batch in r.batches:
        handles, follows = following_norms(r.model, names)
        try:
            loss = scoring_loss(r.model, batch, r.sample.temperature, r.context)
        finally:
            for h in handles:
                h.remove()
        norms = [bn for k in names for bn in follows.get(k, [])]
        affine = [t for bn in norms for t in (bn.weight, bn.bias) if t is not None]
        grads = derivative(loss, [r.params[k] for k in names] + affine, unused_zero=True)
        by_tensor = {id(t): g for t, g in zip(affine, grads[len(names) :], strict=True)}
        for k, g in zip(names, grads[: len(names)], strict=True):
            w = r.params[k].detach()
            w_rows[k].append((w * g).reshape(w.shape[0], -1).sum(dim=1))  # (C,)
            if k not in follows:
                continue
            term = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
            for bn in follows[k]:
                term = term + bn.weight.detach() * by_tensor[id(bn.weight)]
                if bn.bias is not None:
                    term = term + bn.bias.detach() * by_tensor[id(bn.bias)]
            bn_rows.setdefault(k, []).append(term)
    # a weight whose BatchNorm the first batch found but a later one did not (cannot happen
    # on a fixed graph) would give rows of unequal count: keep only those seen on every batch
    n = len(r.batches)
    return {
        "bn_taylor": {k: torch.stack(v) for k, v in bn_rows.items() if len(v) == n},
        "w_taylor": {k: torch.stack(v) for k, v in w_rows.items()},
    }


@provider("channel_taylor", "bn_taylor", "w_taylor")
def _channel_taylor(r: Request) -> Tables:
    return channel_taylor(r)
