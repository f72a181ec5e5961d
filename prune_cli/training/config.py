"""Training settings (the ``train`` config group), validated when the config is composed."""

from __future__ import annotations

from dataclasses import dataclass, field

from prune_cli.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "multistep", "constant")
SELECTIONS = ("val_accuracy", "val_loss", "last")


@dataclass
class TrainConfig:
    #: epochs of the dense level 0
    epochs: int = 15
    #: epochs of each level >= 1 (retraining or fine-tuning); null = ``epochs``
    retrain_epochs: int | None = None
    batch_size: int = 64
    eval_batch_size: int = 1000
    optimizer: str = "sgd"
    lr: float = 0.05
    #: learning rate of levels >= 1; null = ``lr``
    retrain_lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    #: ``cosine`` (to 0), ``multistep`` (times ``gamma`` at each milestone) or ``constant``
    schedule: str = "cosine"
    #: multistep milestones, in epochs (fractions allowed)
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    #: linear warm-up from 0, in epochs
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    #: gradient-norm clipping; null = none
    grad_clip: float | None = None
    #: which epoch's weights end a level: best validation accuracy, lowest validation loss, last
    select: str = "val_accuracy"
    #: bf16 autocast and channels-last memory format (CUDA only; ignored on the CPU)
    bf16: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        for key in ("epochs", "retrain_epochs"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {value}")
        for key in ("batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "retrain_lr"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"train.{key} must be > 0, got {value}")
        if self.weight_decay < 0 or self.momentum < 0 or self.warmup_epochs < 0:
            raise ConfigError(
                "train.weight_decay, train.momentum and train.warmup_epochs must be >= 0"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be > 0 or null, got {self.grad_clip}")
        choices = (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("select", SELECTIONS))
        for key, valid in choices:
            if getattr(self, key) not in valid:
                raise ConfigError(
                    f"train.{key} must be one of {', '.join(valid)}, got {getattr(self, key)!r}"
                )

    def level_epochs(self, level: int) -> int:
        return self.epochs if level == 0 or self.retrain_epochs is None else self.retrain_epochs

    def level_lr(self, level: int) -> float:
        return self.lr if level == 0 or self.retrain_lr is None else self.retrain_lr
