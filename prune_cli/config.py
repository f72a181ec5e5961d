"""The run's typed config: a schema for each group, stored in Hydra's ConfigStore.

``model``, ``dataset`` and ``train`` are single dataclasses; each method has its own config
dataclass (registered with the method), which the method's YAML extends through its defaults
list (``- /schema/method@_here_: <name>``). So a misspelt key or a wrong type fails when Hydra
composes the config, and impossible values fail in ``__post_init__`` when
:func:`to_run_config` turns the composed config into objects, before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prune_cli.data import DatasetConfig
from prune_cli.errors import ConfigError
from prune_cli.pruning.method import METHODS, MethodConfig
from prune_cli.pruning.methods import __name__ as _methods  # noqa: F401  (registers methods)
from prune_cli.training.config import TrainConfig

#: keys that do not change results: left out of the config hash
NON_RESULT_KEYS = ("overwrite", "progress", "output_root", "device")


@dataclass
class ModelConfig:
    name: str = MISSING


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: Any = MISSING
    seed: int = 0
    #: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:<n>``
    device: str = "auto"
    #: start afresh in a run directory that holds results (they are deleted)
    overwrite: bool = False
    #: rich progress bars for epochs and batches
    progress: bool = True
    #: (p, q) pairs of the PQ index logged in pqi.csv
    pqi_grid: list[Any] = field(default_factory=lambda: [[0.5, 1.0], [1.0, 2.0]])
    output_root: str = "outputs"
    #: reuse the dense level 0 of another run directory (same model, dataset, train, seed):
    #: prune one trained model with many methods and ratios without training it again
    dense_from: str | None = None

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:<n>, got {self.device!r}")
        grid = []
        for pair in self.pqi_grid:
            try:
                p, q = (float(v) for v in pair)
            except (TypeError, ValueError):
                raise ConfigError(f"pqi_grid entries must be [p, q] pairs, got {pair}") from None
            if not 0 < p < q:
                raise ConfigError(f"pqi_grid entries must be [p, q] with 0 < p < q, got {pair}")
            grid.append([p, q])
        self.pqi_grid = grid
        if not isinstance(self.method, MethodConfig):
            raise ConfigError("method must be chosen from the method config group (method=NAME)")


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for name in METHODS:
        cs.store(group="schema/method", name=name, node=METHODS.get(name).Config)


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Turn the composed config into dataclasses, running every ``__post_init__`` check."""
    try:
        run = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from None
        raise ConfigError(str(exc).splitlines()[0]) from exc
    assert isinstance(run, RunConfig)
    return run


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def config_hash(cfg: DictConfig | RunConfig) -> str:
    """Short hash of everything that changes results (not device, paths or display).

    Null values are left out, so a new setting whose default is null (changes nothing) keeps
    the hashes of existing runs valid (open_lth's rule).
    """
    container = OmegaConf.to_container(
        cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg), resolve=True
    )
    assert isinstance(container, dict)
    for key in NON_RESULT_KEYS:
        container.pop(key, None)
    blob = json.dumps(_without_nulls(container), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
