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
from prune_cli.pruning.results import Results
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

    def __post_init__(self) -> None:
        if self.gamma < 0 or self.power < 0 or self.iter_stop < 0:
            raise ConfigError("method.gamma, method.power and method.iter_stop must be >= 0")


def thresholds(weight: Tensor, c_rate: float) -> tuple[float, float]:
    """(a, b) of a layer from the mean and standard deviation of |W|."""
    magnitude = weight.detach().abs().to(torch.float64)
    base = max(float(magnitude.mean() + c_rate * magnitude.std()), 0.0)
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
    results = Results(target=None)
    cfg: DnsConfig
    #: masked weights must keep their values and updates: DNS applies the mask itself
    enforce_masks = False

    def __init__(self, cfg: DnsConfig) -> None:
        super().__init__(cfg)
        self.bounds: dict[str, tuple[float, float]] = {}
        self.dense: dict[str, Tensor] = {}

    def num_levels(self) -> int:
        return 1

    def prune(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> Mapping[str, Tensor]:
        params = self.prunable(model)
        unknown = set(self.cfg.c_rates) - set(params)
        if unknown:
            raise ConfigError(
                f"method.c_rates names no prunable weight: {', '.join(sorted(unknown))}"
            )
        self.bounds = {
            k: thresholds(p, self.cfg.c_rates.get(k, self.cfg.c_rate)) for k, p in params.items()
        }
        self.dense = {k: p.detach().clone() for k, p in params.items()}
        return {k: surgery(p, masks[k], *self.bounds[k]) for k, p in params.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "bounds": dict(self.bounds),
            "dense": {k: v.detach().cpu() for k, v in self.dense.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bounds = dict(state.get("bounds", {}))
        self.dense = dict(state.get("dense", {}))

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
        return {
            "compression": total / max(1, nonzero),
            "weights_total": total,
            "weights_nonzero": nonzero,
            "layers": layers,
        }


class Surgery(Callback):
    def __init__(self, method: DynamicNetworkSurgery, masks: Masks, seed: int) -> None:
        self.method = method
        self.masks = masks
        self.seed = seed

    def _params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = self.method.prunable(model)
        for k, p in params.items():  # after a resume the dense copy comes from the CPU
            if self.method.dense[k].device != p.device:
                self.method.dense[k] = self.method.dense[k].to(p.device)
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
        if chance > 0 and draw < chance:
            self.masks.update(
                {
                    k: surgery(self.method.dense[k], self.masks[k], *self.method.bounds[k])
                    for k in params
                }
            )
        for k, p in params.items():
            p.copy_(self.method.dense[k] * self.masks[k])
