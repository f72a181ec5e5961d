"""The method interface: every pruning method, whatever its kind, is one ``PruningMethod``.

The experiment loop runs ``levels + 1`` training rounds (level 0 = dense) and calls these hooks;
a method overrides only the ones it needs, so no method is a special case in the loop:

=====================  ========================================================================
hook                   used by
=====================  ========================================================================
``num_levels``         iterative methods (SAP, lottery ticket: T levels); 0 for train-only ones
``prepare``            extra trainable parameters or re-parametrisation (SequentialAttention++
                       block logits, DNS's masked forward) before training starts; checks of
                       the model that should fail before any training (filter pruning's units)
``optimizer``          a sparsifying optimizer in place of SGD/Adam (gRDA, no mask at all)
``callbacks``          masks that change during training (gradual magnitude, DNS with splicing),
                       training phases (SequentialAttention++ dense/sparse phases)
``prune``              score -> select (scope) -> new mask at the start of each level k >= 1,
                       from the model selected at the end of level k - 1 (SAP, LT, one-shot)
``rewind``             where surviving weights restart after pruning (init, an epoch, none)
``enforce_masks``      False for methods whose masked weights must keep learning (DNS)
``state_dict``         state a method keeps between hooks (DNS's dense weights and thresholds),
                       saved with every checkpoint
``shares_dense``       True where level 0 is the plain dense training (no level-0 callbacks,
                       optimizer or re-parametrisation): its trained dense level is shared
                       with every run of the same model, data, training and seed
``finalize``           after the last level: analyses of the trained model (pruning-limit
                       prediction, metric search) and structured removal of whole filters
                       (a physically thinner network saved beside the run)
=====================  ========================================================================

Each method has a typed config dataclass (``Config``) validated when the run's config is
composed; it is registered with its method by ``@METHODS.register(name)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import MISSING
from torch import Tensor, nn

from prune_cli.callbacks import Callback
from prune_cli.errors import ConfigError
from prune_cli.pruning.mask import Masks, prunable_parameters
from prune_cli.pruning.results import Results, target_of
from prune_cli.pruning.schedule import RewindPoint
from prune_cli.registry import Registry

Batch = tuple[Tensor, Tensor]


@dataclass
class MethodConfig:
    """Settings every method has. Subclasses add their own typed fields."""

    name: str = MISSING
    #: shell-style patterns of parameter names that stay dense (``["conv1.weight", "fc.*"]``)
    ignore: list[str] = field(default_factory=list)


def _bound(value: float) -> str:
    """A bound as the messages write it: ``0`` and ``1``, not ``0.0`` and ``1.0``."""
    return f"{value:g}"


def check_range(
    key: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = True,
    nullable: bool = False,
) -> None:
    """Refuse ``method.<key>`` outside the interval from ``low`` to ``high`` in one line.

    The interval is half open by default, ``[low, high)``, the shape of every sparsity; a
    missing bound leaves that side free (``low=1`` alone: ``>= 1``). ``nullable`` admits None,
    a setting's "not set". The comparisons are written so that NaN fails every one of them,
    and the message names the setting as the user spells it in an override.
    """
    if value is None:
        if nullable:
            return
        raise ConfigError(f"method.{key} must be set, got null")
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    if above and below:
        return
    if low is not None and high is not None:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        wanted = f"in {left}{_bound(low)}, {_bound(high)}{right}"
    elif low is not None:
        wanted = f"{'>' if low_open else '>='} {_bound(low)}"
    else:
        assert high is not None, "check_range needs a bound"
        wanted = f"{'<' if high_open else '<='} {_bound(high)}"
    null = " or null" if nullable else ""
    raise ConfigError(f"method.{key} must be {wanted}{null}, got {value}")


def unchanged(value: Any) -> Any:
    """``PruneContext.agree`` in one process: every rank there is rank 0."""
    return value


@dataclass
class PruneContext:
    """What a method may use besides the model: never a dataset or a model class.

    ``batches(n)`` yields ``n`` training batches already on ``device`` (without augmentation),
    for scores that need gradients. ``load_state(name)`` returns a saved state dict: ``"init"``
    (the weights at initialisation) or ``"level_<k>"`` (the model selected at the end of level k).
    ``artifact_path(name)`` is where the method may write a file of its own in the run directory.
    ``evaluate(model, split)`` returns the (mean loss, accuracy) of ``model`` on a split
    (``"val"`` or ``"test"``) as the run evaluates it, for analyses of pruned copies without
    fine-tuning (the pruning-limit sweep), (nan, nan) for a split with no samples; None where
    no data is at hand (unit tests). ``cache_dir`` is where measurements shared across runs
    are kept (None: not kept). ``agree(value)`` is rank 0's ``value`` on every rank of a
    data-parallel run, for a choice made inside training from a measurement each rank makes
    for itself (a latency timing): the ranks then prune alike. In one process, and outside the
    training callbacks (where rank 0 alone prunes), it returns ``value``.
    """

    level: int
    seed: int
    device: torch.device
    batches: Callable[[int], Iterator[Batch]]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    weight_decay: float
    num_classes: int
    load_state: Callable[[str], dict[str, Tensor]]
    #: where a method saves its own artifacts (``artifact_path("final_model.pt")``)
    artifact_path: Callable[[str], Path] = Path
    #: the registered model's name, recorded beside artifacts that rebuild it (never used to
    #: import the model here)
    model_name: str | None = None
    #: (loss, accuracy) of a model on a split, evaluated like the run's own evaluations
    evaluate: Callable[[nn.Module, str], tuple[float, float]] | None = None
    #: a folder shared by the runs under one ``output_root`` for what is measured once and
    #: reused (the latency tables of ``method.latency_target``); None: nothing is cached
    cache_dir: Path | None = None
    #: rank 0's value on every rank (training callbacks of a data-parallel run); else itself
    agree: Callable[[Any], Any] = unchanged


class PruningMethod:
    """Base class: a method that trains densely and prunes nothing. Override what you need."""

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: False for methods whose masked weights must keep receiving updates (DNS splicing)
    enforce_masks: ClassVar[bool] = True
    #: what the method adds to the results: its report columns, tables and figure lines, the
    #: files it writes, the networks it saves, what its target counts (``pruning/results.py``);
    #: written into every summary.json, so the report side reads it from the run
    results: ClassVar[Results] = Results()

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    def nominal_target(self) -> dict[str, Any]:
        """The run's nominal target for ``summary.json``: ``{"unit": ..., "ratio": t}``, t the
        ratio before / after of the final level in the declared unit (``sparsity``, ``ratio``,
        ``rate`` and ``levels`` of the method's settings; None without a target)."""
        settings = {k: getattr(self.cfg, k) for k in vars(self.cfg)}
        return target_of(self.results.target, settings)

    def num_levels(self) -> int:
        """Pruning levels after the dense level 0 (one-shot = 1)."""
        return 0

    def shares_dense(self) -> bool:
        """Whether level 0 is the plain dense training, the same whatever the method: no
        level-0 callback, optimizer, re-parametrisation or epoch to save for rewinding. Such a
        run may take a dense level trained once for its model, data, training and seed
        (:mod:`prune_cli.shared_dense`); False, the safe default, trains its own."""
        return False

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return prunable_parameters(model, self.cfg.ignore)

    def prepare(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        return model

    def optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer | None:
        """Return an optimizer to use instead of the run's ``train.optimizer``; None keeps it."""
        del model, lr
        return None

    def callbacks(self, level: int, masks: Masks, ctx: PruneContext) -> list[Callback]:
        del level, masks, ctx
        return []

    def prune(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> Mapping[str, Tensor]:
        """New masks for level ``ctx.level`` >= 1; ``model`` holds the previous level's weights."""
        del model, ctx
        return dict(masks)

    def rewind(self) -> RewindPoint:
        return RewindPoint("none")

    def state_dict(self) -> dict[str, Any]:
        """State the method keeps between hooks (saved in every checkpoint, for resuming)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def level_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The weights a level's ``model.pt`` holds: the plain network's state dict, which loads
        into the registered model class. A method that reparametrises weights while it trains
        returns the weights its parametrisation computes, under the plain names."""
        return model.state_dict()

    def finalize(self, model: nn.Module, masks: Masks, ctx: PruneContext) -> dict[str, Any]:
        """After the last level; returns entries added to ``summary.json`` under ``method``."""
        del model, masks, ctx
        return {}


METHODS: Registry[type[PruningMethod]] = Registry("method")
