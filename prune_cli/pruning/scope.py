"""Selection within a scope: which entries to prune, given scores, the mask and a count rule.

Scopes (METHODS.md, notation):
- ``global``: one ranking over all prunable weights;
- ``layer``: each tensor on its own;
- ``neuron``: each output unit, i.e. each row of ``W.view(out, -1)``, on its own.

Every scope is reduced to the same shape: a matrix of groups (G, n) whose rows are ranked on their
own. The count rule sees each group's size and its unmasked weights and says how many *more*
entries to prune there; the rest is one vectorised sort. Already-masked entries rank first, so
masks only shrink, and the number pruned is exact (ties are broken by position, stably).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

SCOPES = ("global", "layer", "neuron")


@dataclass(frozen=True)
class Groups:
    """Weights, mask and scores of the groups of one scope, laid out as (G, n)."""

    weights: Tensor  # (G, n) the parameter values (for count rules such as SAP's PQI)
    mask: Tensor  # (G, n) True = kept
    scores: Tensor  # (G, n)
    size: Tensor  # (G,) entries per group (n for every row)


#: count rule: Groups -> (G,) number of additional entries to prune in each group
CountRule = Callable[[Groups], Tensor]


def _select_rows(groups: Groups, extra: Tensor) -> Tensor:
    """New (G, n) mask that prunes ``extra`` more of the lowest-scored kept entries per row."""
    kept = groups.mask.sum(dim=1)
    already = groups.size.to(kept.device) - kept
    to_prune = already + torch.minimum(extra.to(kept.device).clamp(min=0), kept)
    # Kept entries get finite keys (NaN and -inf scores become the lowest finite value), masked
    # entries -inf, so every masked entry ranks before every kept one; ties keep their position.
    lowest = torch.finfo(torch.float64).min
    finite = torch.nan_to_num(groups.scores.to(torch.float64), nan=lowest, neginf=lowest)
    keyed = torch.where(groups.mask, finite, float("-inf"))
    order = torch.argsort(keyed, dim=1, stable=True)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    return (ranks >= to_prune.unsqueeze(1)) & groups.mask


def select(
    params: Mapping[str, Tensor],
    scores: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    scope: str,
    count: CountRule,
) -> dict[str, Tensor]:
    """Prune within ``scope`` the entries the ``count`` rule asks for; returns new masks."""
    names = list(masks)
    if scope == "global":
        groups = Groups(
            weights=torch.cat([params[k].detach().reshape(-1) for k in names]).unsqueeze(0),
            mask=torch.cat([masks[k].reshape(-1) for k in names]).unsqueeze(0),
            scores=torch.cat([scores[k].reshape(-1).to(torch.float64) for k in names]).unsqueeze(0),
            size=torch.tensor(
                [sum(masks[k].numel() for k in names)], device=masks[names[0]].device
            ),
        )
        flat = _select_rows(groups, count(groups).reshape(1))[0]
        out, start = {}, 0
        for k in names:
            n = masks[k].numel()
            out[k] = flat[start : start + n].reshape(masks[k].shape)
            start += n
        return out
    if scope in ("layer", "neuron"):
        out = {}
        for k in names:
            rows = 1 if scope == "layer" else masks[k].shape[0]  # one row per tensor / per unit
            out[k] = _select_one(
                params[k].reshape(rows, -1),
                scores[k].reshape(rows, -1),
                masks[k].reshape(rows, -1),
                count,
            ).reshape(masks[k].shape)
        return out
    raise ValueError(f"unknown scope {scope!r}; valid scopes: {', '.join(SCOPES)}")


def _select_one(weights: Tensor, scores: Tensor, mask: Tensor, count: CountRule) -> Tensor:
    g = Groups(
        weights=weights.detach(),
        mask=mask,
        scores=scores.to(torch.float64),
        size=torch.full((mask.shape[0],), mask.shape[1], device=mask.device),
    )
    return _select_rows(g, count(g).to(mask.device))


def fraction_of_total(target: float) -> CountRule:
    """Prune so that each group ends with round(target * size) entries masked in all."""

    def rule(groups: Groups) -> Tensor:
        want = torch.round(groups.size.to(torch.float64) * target).to(torch.long)
        already = groups.size - groups.mask.sum(dim=1)
        return (want.to(already.device) - already).clamp(min=0)

    return rule


def fraction_of_remaining(fraction: float) -> CountRule:
    """Prune round(fraction * unmasked) more entries in each group."""

    def rule(groups: Groups) -> Tensor:
        kept = groups.mask.sum(dim=1).to(torch.float64)
        return torch.round(kept * fraction).to(torch.long)

    return rule
