"""What a run's level loop works on, and how it is built from the config.

:func:`build` turns the config into the run's parts (device, data, method, model with its
starting weights, ``dense_from``'s source) and refuses what cannot run, before the run directory
is claimed; :func:`make_state` lets the method prepare the model and gathers everything the loop
changes into one :class:`RunState`. Every rank builds the same parts from the same seed, so the
ranks of a data-parallel run start alike (:mod:`prune_cli.ranks`).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prune_cli import analysis, distributed, paths
from prune_cli.callbacks import Callback
from prune_cli.checkpoint import Checkpoint, Cursor
from prune_cli.config import RunConfig
from prune_cli.data import build_dataset
from prune_cli.distributed import World
from prune_cli.errors import ConfigError, UserError
from prune_cli.models import build_model, count_parameters
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS, PruneContext, PruningMethod, unchanged
from prune_cli.pruning.results import Results
from prune_cli.recording.measure import record_level, record_stage
from prune_cli.recording.records import RunRecords
from prune_cli.seeds import derive_seed
from prune_cli.shared_dense import SharedDense
from prune_cli.spec import ImageData
from prune_cli.store import DenseSource, RunStore
from prune_cli.training import optim
from prune_cli.training.loop import EvalResult, evaluate, resolve_device


class Parts(NamedTuple):
    """A run's parts before the method has prepared the model."""

    device: torch.device
    data: ImageData
    method: PruningMethod
    model: nn.Module
    dense: DenseSource | None  # ``dense_from``: the other run's dense level 0 (rank 0 only)


@dataclass
class RunState:
    """Everything the loop changes, with the config and store it reads them through."""

    cfg: RunConfig
    store: RunStore
    device: torch.device
    data: ImageData
    method: PruningMethod
    model: nn.Module
    params: dict[str, nn.Parameter]
    masks: Masks
    records: RunRecords = field(default_factory=RunRecords)
    #: the run's one cursor: moved by its own methods, restored from a checkpoint or rank 0
    cursor: Cursor = field(default_factory=Cursor)
    dense: DenseSource | None = None
    #: the shared dense level (``shared_dense``) this run's level 0 comes from, if any
    shared: SharedDense | None = None
    elapsed_before: float = 0.0  # wall time of earlier sessions of a resumed run
    resume: Checkpoint | None = None  # the checkpoint training resumes from, until consumed
    #: rows of each results table that the finished levels hold (durable in the files; the
    #: checkpoint carries only the rows past them)
    row_offset: dict[str, int] = field(default_factory=dict)

    def context(self, level: int, agree: Callable[[Any], Any] | None = None) -> PruneContext:
        """What a method's hooks may use at ``level`` besides the model and masks; ``agree``:
        how the ranks agree on a measured value (the training callbacks' context, which every
        rank of a data-parallel run holds), else each value is taken as it is."""
        cfg, store = self.cfg, self.store

        def batches(n: int) -> Iterator[tuple[Tensor, Tensor]]:
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "score-batches", level))
            stream = self.data.batches("train", cfg.train.batch_size, shuffle=True, generator=gen)
            return itertools.islice(stream, n)

        def load_state(name: str) -> dict[str, Tensor]:
            if name == "init":
                init = store.load_init(self.device)
                assert init is not None, "init.pt is written before training starts"
                return init
            return store.load_level(int(name.removeprefix("level_")), self.device)["model"]

        def evaluate_split(model: nn.Module, split: str) -> tuple[float, float]:
            if self.data.size(split) == 0:  # not (0, 0): that would read as a measured accuracy
                return math.nan, math.nan
            result = evaluate(model, self.data, split, cfg.train)
            return result.loss, result.accuracy

        return PruneContext(
            level=level,
            seed=cfg.seed,
            device=self.device,
            batches=batches,
            loss_fn=F.cross_entropy,
            weight_decay=cfg.train.weight_decay,
            num_classes=self.data.spec.num_classes,
            load_state=load_state,
            artifact_path=store.artifact,
            model_name=cfg.model.name,
            evaluate=evaluate_split,
            cache_dir=paths.shared_cache_dir(Path(cfg.output_root)),
            agree=agree or unchanged,
        )

    def evaluate(self, split: str) -> EvalResult:
        return evaluate(self.model, self.data, split, self.cfg.train)

    # --- records --------------------------------------------------------------------------------
    def record_epoch(
        self, level: int, epoch: int, stats: dict[str, float], lr: float, val: EvalResult | None
    ) -> list[tuple]:
        """The metrics rows of an epoch just trained (``epoch`` counts from 1): the training
        statistics, the learning rate, and the validation loss and accuracy if measured."""
        rows = [(level, epoch, "train", k, v) for k, v in stats.items()]
        rows.append((level, epoch, "train", "lr", lr))
        if val is not None:
            rows.append((level, epoch, "val", "loss", val.loss))
            rows.append((level, epoch, "val", "accuracy", val.accuracy))
        self.records.metrics.extend(rows)
        return rows

    def record_stage(self, level: int, stage: str, evaluation: EvalResult) -> None:
        """Per-class recall and PQI rows of the level's ``pruned`` or ``trained`` stage."""
        names, grid, model = self.data.class_names, self.cfg.pqi_grid, self.model
        record_stage(
            self.records, level, stage, evaluation, names, self.params, self.masks, grid, model
        )

    def record_level(self, level: int, val: EvalResult | None, test: EvalResult) -> dict[str, Any]:
        """The level's sparsity rows and summary entry, of its selected model."""
        return record_level(
            self.records,
            level,
            self.model,
            self.params,
            self.masks,
            val,
            test,
            self.cfg.pqi_grid,
            input_shape=self.data.spec.input_shape,
            selected_epoch=self.cursor.selected_epoch,
            epochs=self.cfg.train.for_level(level).epochs,
        )

    def declared(self) -> Results:
        """What the run's method and analyses add to its results (``pruning/results.py``)."""
        return analysis.declared(self.method.results, self.cfg.analysis)

    def summary_fields(self) -> dict[str, Any]:
        """What the summary says of the run's device and network (before its levels), and what
        the report needs to read the run without its method: the method's declaration and
        the run's nominal target."""
        return {
            "device": str(self.device),
            # CPU results are bit-for-bit repeatable only at the same thread count (it changes
            # the order of float reductions); a parallel launcher gives each job its share
            "threads": torch.get_num_threads(),
            "params_total": count_parameters(self.model),
            "params_prunable": sum(p.numel() for p in self.params.values()),
            "results": self.declared().to_dict(),
            "target": self.method.nominal_target(),
            # where level 0 came from when it was shared (its rows are this run's own too)
            **({"dense_shared": str(self.shared.root)} if self.shared is not None else {}),
        }

    # --- checkpoints ----------------------------------------------------------------------------
    def checkpoint(
        self,
        wall_time_s: float,
        optimizer: Any = None,
        scheduler: Any = None,
        callbacks: Sequence[Callback] = (),
        best_state: dict[str, Tensor] | None = None,
    ) -> Checkpoint:
        """Where the run stands; with the training state when written between two epochs."""
        return Checkpoint(
            cursor=copy.copy(self.cursor),  # a snapshot: the run's own cursor moves on
            model=self.model.state_dict(),
            masks=self.masks.state_dict(),
            optimizer=None if optimizer is None else optimizer.state_dict(),
            scheduler=None if scheduler is None else scheduler.state_dict(),
            callbacks=[cb.state_dict() for cb in callbacks],
            best_state=best_state,
            records=self.records.checkpoint_state(self.row_offset),
            method=self.method.state_dict(),
            wall_time_s=wall_time_s,
        )

    def take_init(self) -> None:
        """The run's initial weights: ``init.pt`` if the run has one (``dense_from``'s is copied
        first), else the model's own, which it saves; the ``init`` rewind returns to them."""
        if self.dense is not None:
            self.store.adopt_init(self.dense.init_path)
        init = self.store.load_init(self.device)
        if init is None:
            self.store.save_init(self.model.state_dict())
        else:
            self.model.load_state_dict(init)

    def restore(self, ck: Checkpoint) -> None:
        """Take up a resumed run where its checkpoint stands (its training state waits in
        ``resume`` for the level's training)."""
        self.records = RunRecords.from_checkpoint(ck.records, self.store.paths)
        self.row_offset = dict(ck.records.get("offset", {}))
        self.cursor.restore(ck.cursor)
        self.elapsed_before = ck.wall_time_s
        self.masks = Masks(ck.masks).to(self.device)
        self.model.load_state_dict(ck.model)
        self.method.load_state_dict(ck.method)
        self.resume = ck

    def model_info(self) -> dict[str, Any]:
        """What rebuilds the network of a saved level (the model's settings and data shape)."""
        spec = self.data.spec
        return {
            "name": self.cfg.model.name,
            "settings": self.store.config["model"],
            "channels": spec.channels,
            "num_classes": spec.num_classes,
            "image_size": spec.image_size,
        }


def build(cfg: RunConfig, world: World, store: RunStore) -> Parts:
    """Data, method, model (with its starting weights) and ``dense_from``'s source; a config
    that cannot run is refused here, before the run directory is claimed."""
    optim.new_run()  # its warnings are its own (a warm-up capped at every level: one line)
    device = resolve_device(distributed.training_device(cfg.device, world))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda was asked for but no CUDA GPU is visible; use device=auto")
    torch.manual_seed(cfg.seed)
    data = build_dataset(cfg.dataset, device)
    if cfg.train.select != "last" and data.size("val") == 0:
        # it would fall back to the last epoch while the config says otherwise
        raise ConfigError(
            f"train.select={cfg.train.select} needs a validation split, and this dataset "
            "has none (dataset.val_size); set dataset.val_size > 0 or train.select=last"
        )
    method = METHODS.get(cfg.method.name)(cfg.method)
    rewind = method.rewind()
    if rewind.kind == "epoch" and rewind.epoch > cfg.train.epochs:
        raise ConfigError(
            f"method.rewind={cfg.method.rewind} is later than train.epochs={cfg.train.epochs}"
        )
    dense = None
    if cfg.dense_from and world.main:
        dense = store.dense_source(Path(cfg.dense_from), device)
    # with its starting weights: a file that does not fit fails before the directory is
    # claimed (nothing above draws from the seeded generator, so initial weights are as
    # they always were)
    model = build_model(cfg.model, data.spec)
    return Parts(device, data, method, model, dense)


def make_state(cfg: RunConfig, store: RunStore, parts: Parts) -> RunState:
    """The state of a fresh run: the model as the method prepares it (it may refuse it, with a
    UserError), on the device, every prunable weight unmasked."""
    device, data, method, model, dense = parts
    state = RunState(cfg, store, device, data, method, model, {}, Masks({}), dense=dense)
    model = method.prepare(model, state.context(0)).to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state.model, state.params = model, method.prunable(model)
    state.masks = Masks.ones(state.params)
    return state
