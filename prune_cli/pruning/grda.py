"""gRDA: generalized regularized dual averaging (Chao et al., "Directional Pruning of Deep
Neural Networks", NeurIPS 2020; METHODS.md section 7), as a ``torch.optim.Optimizer``.

    w_{n+1} = S_{g(n, lr)}( w_0 - lr * sum_{i=0..n} grad f(w_i; Z_{i+1}) )
    S_g(v)  = sign(v) * max(|v| - g, 0),     g(n, lr) = c * lr^(1/2) * (n lr)^mu

So that it is right under any learning-rate schedule, the sum and the threshold accumulate per
step n = 1, 2, ... with that step's learning rate lr_n:

    acc  <- acc - lr_n * grad              (acc starts at w_0)
    l1   <- l1 + c * lr_n^(mu + 1/2) * (n^mu - (n - 1)^mu)
    w    <- S_l1(acc)

which for a constant lr gives l1 = c lr^(mu+1/2) n^mu = g(n, lr). No momentum, no weight decay;
sparsity appears as exact zeros. With c = 0 it is plain SGD without momentum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor


class GRDA(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 0.01,
        c: float = 0.0,
        mu: float = 0.7,
    ) -> None:
        if lr <= 0 or c < 0 or mu <= 0:
            raise ValueError(f"gRDA needs lr > 0, c >= 0, mu > 0; got lr={lr}, c={c}, mu={mu}")
        super().__init__(params, {"lr": lr, "c": c, "mu": mu})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, c, mu = group["lr"], group["c"], group["mu"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["l1"] = 0.0
                    state["acc"] = p.detach().clone()  # the accumulator starts at w_0
                state["step"] += 1
                n = state["step"]
                state["l1"] += c * lr ** (mu + 0.5) * (n**mu - (n - 1) ** mu)
                acc = state["acc"]
                acc.add_(p.grad, alpha=-lr)
                p.copy_(acc.sign() * (acc.abs() - state["l1"]).clamp(min=0.0))
        return loss
