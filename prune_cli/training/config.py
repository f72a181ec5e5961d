"""Training settings (the ``train`` config group), validated when the config is composed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from prune_cli.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "multistep", "piecewise", "constant")
SELECTIONS = ("val_accuracy", "val_loss", "last")
#: ``torch.compile`` modes; ``reduce-overhead`` adds CUDA graphs (on CUDA)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class RetrainConfig:
    """How levels >= 1 train (retraining or fine-tuning); every null keeps the dense setting."""

    epochs: int | None = None
    lr: float | None = None
    schedule: str | None = None
    milestones: list[float] | None = None
    lr_values: list[float] | None = None
    gamma: float | None = None
    warmup_epochs: float | None = None


@dataclass
class TrainConfig:
    #: epochs of the dense level 0
    epochs: int = 15
    batch_size: int = 64
    eval_batch_size: int = 1000
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    #: ``cosine`` (to 0), ``multistep`` (times ``gamma`` at each milestone), ``piecewise``
    #: (``lr_values[i]`` from milestone i on: the papers' hand-made schedules) or ``constant``
    schedule: str = "cosine"
    #: multistep and piecewise milestones, in epochs (fractions allowed)
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    #: piecewise: the learning rate before the first milestone, then after each one
    lr_values: list[float] = field(default_factory=list)
    #: linear warm-up from 0, in epochs
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    #: the training loss is cross-entropy of logits / temperature (Lubana and Dick train with
    #: T = 5, METHODS.md section 6); null = 1, and null so that the hashes of runs made before
    #: it stay valid. Evaluation losses and accuracies are of the plain logits.
    temperature: float | None = None
    #: gradient-norm clipping; null = none
    grad_clip: float | None = None
    #: which epoch's weights end a level: best validation accuracy, lowest validation loss, last
    select: str = "val_accuracy"
    #: bf16 autocast and channels-last memory format (CUDA only; ignored on the CPU)
    bf16: bool = True
    channels_last: bool = True
    #: compile the forward pass and the loss with ``torch.compile`` (and with them the backward
    #: pass). Null = false: the speed settings below default to null so that adding them left
    #: the config hashes of existing runs unchanged. On the CPU it needs a C++ compiler.
    compile: bool | None = None
    #: ``torch.compile`` mode (null = ``default``): ``reduce-overhead`` replays CUDA graphs
    compile_mode: str | None = None
    #: on CUDA, capture the whole training step (forward, backward, optimizer, masks) as one
    #: CUDA graph and replay it (null = false). Steps that callbacks act inside run eagerly.
    cuda_graphs: bool | None = None
    #: on CUDA, let cuDNN time its algorithms and keep the fastest (null = true)
    cudnn_benchmark: bool | None = None
    #: overrides for levels >= 1 (for example a shorter fine-tuning schedule)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def __post_init__(self) -> None:
        # Float settings must be finite: NaN passes every comparison below (nan <= 0 is False)
        # and inf passes the lower bounds; either would train on silently to a NaN loss.
        floats = ("lr", "momentum", "weight_decay", "gamma", "warmup_epochs", "label_smoothing")
        for key in floats:
            if not math.isfinite(getattr(self, key)):
                raise ConfigError(f"train.{key} must be a finite number, got {getattr(self, key)}")
        if self.grad_clip is not None and not math.isfinite(self.grad_clip):
            raise ConfigError(
                f"train.grad_clip must be a finite number or null, got {self.grad_clip}"
            )
        for key in ("milestones", "lr_values"):
            if not all(math.isfinite(v) for v in getattr(self, key)):
                raise ConfigError(
                    f"train.{key} must be finite numbers, got {list(getattr(self, key))}"
                )
        if self.epochs < 0:
            raise ConfigError(f"train.epochs must be >= 0, got {self.epochs}")
        for key in ("batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.momentum < 0 or self.warmup_epochs < 0:
            raise ConfigError(
                "train.weight_decay, train.momentum and train.warmup_epochs must be >= 0"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if self.temperature is not None and not (
            math.isfinite(self.temperature) and self.temperature > 0
        ):
            raise ConfigError(f"train.temperature must be > 0 or null, got {self.temperature}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be > 0 or null, got {self.grad_clip}")
        choices = (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("select", SELECTIONS))
        for key, valid in choices:
            if getattr(self, key) not in valid:
                raise ConfigError(
                    f"train.{key} must be one of {', '.join(valid)}, got {getattr(self, key)!r}"
                )
        if self.schedule == "piecewise" and len(self.lr_values) != len(self.milestones) + 1:
            raise ConfigError(
                "train.schedule=piecewise needs one more train.lr_values than train.milestones "
                f"(got {len(self.lr_values)} values, {len(self.milestones)} milestones)"
            )
        if any(v <= 0 for v in self.lr_values):
            raise ConfigError("train.lr_values must be > 0")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ConfigError(
                f"train.compile_mode must be one of {', '.join(COMPILE_MODES)}, "
                f"got {self.compile_mode!r}"
            )
        if self.cuda_graphs and self.compile and self.compile_mode == "reduce-overhead":
            raise ConfigError(
                "train.cuda_graphs captures the whole step already: use it with "
                "train.compile_mode=default (or no compile), not reduce-overhead"
            )
        if self.retrain != RetrainConfig():
            self.for_level(1)  # validates the retraining settings as a whole

    def for_level(self, level: int) -> TrainConfig:
        """The settings of ``level``: the dense ones, with ``retrain`` applied for levels >= 1."""
        if level == 0:
            return self
        changes = {
            f.name: getattr(self.retrain, f.name)
            for f in fields(RetrainConfig)
            if getattr(self.retrain, f.name) is not None
        }
        if not changes:
            return self
        try:
            return replace(self, retrain=RetrainConfig(), **changes)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in train.retrain)") from None
