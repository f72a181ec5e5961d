"""Dynamic Network Surgery (Guo, Yao and Chen, NIPS 2016; METHODS.md section 3).

From the trained dense model (level 0), level 1 trains with masks T that change: the forward
pass uses W * T, and the gradient with respect to the masked weight is applied to *all* of W,
masked entries included (a straight-through update), so pruned connections keep learning and
can be spliced back. Per layer, with mu and sigma the mean and standard deviation of |W| at the
start of surgery,

    a = 0.9 * max(mu + c_rate * sigma, 0),   b = 1.1 * max(mu + c_rate * sigma, 0)
    T = 0 where |W| <= a,  T = 1 where |W| > b,  unchanged in between

and surgery happens at iteration i with probability (1 + gamma * i)^(-power) while i < iter_stop
(seeded by the run seed and i, so a resumed run draws the same). ``c_rates`` sets c_rate per
parameter name (the paper's LeNet-5: conv1 1, conv2 3, fc1 4, fc2 2.5).

Two conventions, ``include_biases``: null / false (prune-run's) takes mu and sigma over the
layer's weights, sigma the unbiased standard deviation, and never prunes a bias; true (the
authors' Caffe code, which ``experiment=dns_lenet5_mnist`` follows) takes them over the layer's
weights and bias together, sigma the population standard deviation, and masks the bias with the
same thresholds. ``finalize`` reports the compression both ways: ``compression`` over the
prunable weights, ``compression_all`` over every parameter of the network (the paper's 108x,
431,080 -> 3,993, counts biases).

How it runs in the loop: the model holds W * T outside the optimizer step (evaluation and
checkpoints see the pruned network); just before the step the callback puts the dense W back,
so the step updates it with the gradient taken at W * T; after the step it keeps the new dense
W, updates T, and writes W * T into the model again. The dense W and the thresholds are the
method's state (``state_dict``), saved with every checkpoint.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prune_cli.callbacks import Callback
from prune_cli.errors import ConfigError
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS, MethodConfig, PruneContext, PruningMethod
from prune_cli.pruning.results import Column, Results
from prune_cli.seeds import derive_seed


@dataclass
class DnsConfig(MethodConfig):
    name: str = "dns"
    #: c_rate of every layer not listed in ``c_rates``
    c_rate: float = 3.0
    #: c_rate per parameter name, for example {"features.0.weight": 1.0}
    c_rates: dict[str, float] = field(default_factory=dict)
    gamma: float = 1e-4
    power: float = 1.0
    #: no surgery from this iteration (optimizer step of the surgery level) on
    iter_stop: int = 10_000
    #: true: thresholds from weights and bias (population std) and the bias masked too, as the
    #: authors' Caffe code; null / false: weights only, unbiased std, biases never pruned
    include_biases: bool | None = None

    def __post_init__(self) -> None:
        if self.gamma < 0 or self.power < 0 or self.iter_stop < 0:
            raise ConfigError("method.gamma, method.power and method.iter_stop must be >= 0")


def thresholds(
    weight: Tensor, c_rate: float, bias: Tensor | None = None, population: bool = False
) -> tuple[float, float]:
    """(a, b) of a layer from the mean and standard deviation of |W| (with ``bias``: of |W|
    and |b| together); ``population``: the standard deviation divides by n, not n - 1."""
    parts = [weight.detach().reshape(-1)] + ([] if bias is None else [bias.detach().reshape(-1)])
    magnitude = torch.cat(parts).abs().to(torch.float64)
    spread = magnitude.std(correction=0 if population else 1)
    base = max(float(magnitude.mean() + c_rate * spread), 0.0)
    return 0.9 * base, 1.1 * base


def surgery(weight: Tensor, mask: Tensor, a: float, b: float) -> Tensor:
    """The new mask: off at or below a, on above b, unchanged in between."""
    magnitude = weight.detach().abs()
    return torch.where(magnitude <= a, False, torch.where(magnitude > b, True, mask))


def surgery_probability(step: int, gamma: float, power: float, iter_stop: int) -> float:
    return 0.0 if step >= iter_stop else (1.0 + gamma * step) ** (-power)


@METHODS.register("dns")
class DynamicNetworkSurgery(PruningMethod):
    Config = DnsConfig
    #: no target: its sparsity emerges from the surgery
    results = Results(
        columns=(
            Column("compression", "dns_compression_weights", heading="compression (weights)"),
            Column("compression_all", "dns_compression_all", heading="compression (all params)"),
        ),
        target=None,
    )
    cfg: DnsConfig
    #: masked weights must keep their values and updates: DNS applies the mask itself
    enforce_masks = False

    def __init__(self, cfg: DnsConfig) -> None:
        super().__init__(cfg)
        self.bounds: dict[str, tuple[float, float]] = {}
        self.dense: dict[str, Tensor] = {}
        #: masks of the biases (``include_biases``): not in the run's masks, which hold
        #: prunable weights only, so DNS keeps and applies them itself
        self.bias_masks: dict[str, Tensor] = {}

    def biases(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The bias of each prunable weight's layer, by the weight's name (``include_biases``;
        empty otherwise)."""
        if not self.cfg.include_biases:
            return {}
        named = dict(model.named_parameters())
        out = {}
        for k in self.prunable(model):
            bias = k.removesuffix("weight") + "bias"
            if k.endswith("weight") and bias in named:
                out[k] = named[bias]
        return out

    def num_levels(self) -> int:
        return 1

    def prune(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> Mapping[str, Tensor]:
        params = self.prunable(model)
        unknown = set(self.cfg.c_rates) - set(params)
        if unknown:
            raise ConfigError(
                f"method.c_rates names no prunable weight: {', '.join(sorted(unknown))}"
            )
        biases = self.biases(model)
        population = bool(self.cfg.include_biases)
        self.bounds = {
            k: thresholds(p, self.cfg.c_rates.get(k, self.cfg.c_rate), biases.get(k), population)
            for k, p in params.items()
        }
        self.dense = {k: p.detach().clone() for k, p in params.items()}
        for k, b in biases.items():
            self.dense[bias_key(k)] = b.detach().clone()
            self.bias_masks[k] = surgery(b, torch.ones_like(b, dtype=torch.bool), *self.bounds[k])
            with torch.no_grad():
                b.mul_(self.bias_masks[k])
        return {k: surgery(p, masks[k], *self.bounds[k]) for k, p in params.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "bounds": dict(self.bounds),
            "dense": {k: v.detach().cpu() for k, v in self.dense.items()},
            "bias_masks": {k: v.detach().cpu() for k, v in self.bias_masks.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bounds = dict(state.get("bounds", {}))
        self.dense = dict(state.get("dense", {}))
        self.bias_masks = dict(state.get("bias_masks", {}))

    def callbacks(self, level: int, masks: Masks, ctx: PruneContext) -> list[Callback]:
        return [Surgery(self, masks, ctx.seed)] if level == 1 else []

    def finalize(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> dict[str, Any]:
        params = self.prunable(model)
        layers = {}
        for k, p in params.items():
            nonzero = int(torch.count_nonzero(p))
            layers[k] = {
                "numel": p.numel(),
                "nonzero": nonzero,
                "compression": p.numel() / max(1, nonzero),
            }
        total = sum(v["numel"] for v in layers.values())
        nonzero = sum(v["nonzero"] for v in layers.values())
        every = sum(p.numel() for p in model.parameters())
        every_nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
        return {
            # prunable weights only: prune-run's convention for every method's sparsity
            "compression": total / max(1, nonzero),
            "weights_total": total,
            "weights_nonzero": nonzero,
            # every parameter (biases, normalisation): the paper's 108x counts this way
            "compression_all": every / max(1, every_nonzero),
            "params_total": every,
            "params_nonzero": every_nonzero,
            "include_biases": bool(self.cfg.include_biases),
            "layers": layers,
        }


class Surgery(Callback):
    def __init__(self, method: DynamicNetworkSurgery, masks: Masks, seed: int) -> None:
        self.method = method
        self.masks = masks
        self.seed = seed

    def _params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The prunable weights and, with ``include_biases``, the biases (under
        ``bias_key(weight name)``), each with its dense copy on its device."""
        params = self.method.prunable(model)
        params.update({bias_key(k): b for k, b in self.method.biases(model).items()})
        for k, p in params.items():  # after a resume the dense copy comes from the CPU
            if self.method.dense[k].device != p.device:
                self.method.dense[k] = self.method.dense[k].to(p.device)
        for k, m in self.method.bias_masks.items():
            if m.device != params[k].device:
                self.method.bias_masks[k] = m.to(params[k].device)
        return params

    @torch.no_grad()
    def on_after_backward(self, step: int, model: nn.Module) -> None:
        # the gradient was taken at W * T; the step must move the dense W
        for k, p in self._params(model).items():
            p.copy_(self.method.dense[k])

    @torch.no_grad()
    def on_step_end(self, step: int, model: nn.Module) -> None:
        cfg = self.method.cfg
        params = self._params(model)
        for k, p in params.items():
            self.method.dense[k].copy_(p)
        chance = surgery_probability(step, cfg.gamma, cfg.power, cfg.iter_stop)
        draw = random.Random(derive_seed(self.seed, "dns-surgery", step)).random()
        bias_masks = self.method.bias_masks
        if chance > 0 and draw < chance:
            bounds = self.method.bounds
            self.masks.update(
                {k: surgery(self.method.dense[k], self.masks[k], *bounds[k]) for k in self.masks}
            )
            for k in bias_masks:  # a bias is cut and spliced with its layer's thresholds
                bias_masks[k] = surgery(self.method.dense[bias_key(k)], bias_masks[k], *bounds[k])
        for k, p in params.items():
            mask = self.masks[k] if k in self.masks else bias_masks[k.removeprefix(BIAS)]
            p.copy_(self.method.dense[k] * mask)


#: the prefix of a bias's entry in the method's dense copies (keyed by its layer's weight)
BIAS = "bias:"


def bias_key(weight: str) -> str:
    """The dense-copy key of the bias of the layer whose weight is ``weight``."""
    return BIAS + weight
