"""One experiment: train dense (level 0), then for each pruning level prune, rewind, retrain.

The loop reads like open_lth's runner: for each level, prune if not done, train the epochs not
done, then record the level. It knows nothing of any particular method (it calls the hooks of
:class:`~prune_cli.pruning.method.PruningMethod`, docs/ARCHITECTURE.md) and nothing of files:
the :class:`~prune_cli.store.RunStore` owns the run directory (lock, checkpoints, resume,
``dense_from``, results) and :mod:`prune_cli.recording.measure` turns evaluations into rows.

Every epoch ends in an atomic checkpoint, so re-running the same command continues where a
crash stopped and reaches the same results as an uninterrupted run: all randomness of an epoch
comes from a generator seeded by ``derive_seed(seed, "epoch", level, epoch)``.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
import platform
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

import prune_cli
from prune_cli import analysis, distributed, trackers
from prune_cli.config import RunConfig
from prune_cli.data import build_dataset
from prune_cli.distributed import World
from prune_cli.errors import ConfigError, RunFailed, UserError
from prune_cli.models import build_model, count_parameters
from prune_cli.pruning.mask import Masks
from prune_cli.pruning.method import METHODS, PruneContext, PruningMethod
from prune_cli.recording.console import ProgressBars, console, make_progress, show_results
from prune_cli.recording.measure import record_level, record_stage
from prune_cli.recording.records import RunRecords
from prune_cli.seeds import derive_seed
from prune_cli.spec import ImageData
from prune_cli.store import DenseSource, RunStore
from prune_cli.training.loop import EvalResult, Trainer, evaluate, resolve_device
from prune_cli.training.optim import build_optimizer, build_scheduler

#: checkpoint entries not handed to the other ranks with the checkpoint: rank 0's alone (results,
#: the selected state) or handed over anyway (``Experiment._shared``)
RANK0_ONLY = ("records", "best_state", "model", "masks", "method")

#: per-epoch and per-level lines: to ``run.log`` always, and to stdout through Hydra's logging
log = logging.getLogger("prune_cli.experiment")


@dataclass
class Cursor:
    """Where the run stands: level, epochs finished in it, and whether its pruning is done."""

    level: int = 0
    epoch: int = 0
    pruned: bool = False
    best: dict[str, Any] = field(default_factory=dict)  # {"score": float, "epoch": int}


@dataclass
class RunState:
    """Everything the loop changes, created in one place (:meth:`Experiment._start`)."""

    device: torch.device
    data: ImageData
    method: PruningMethod
    model: nn.Module
    params: dict[str, nn.Parameter]
    masks: Masks
    records: RunRecords
    cursor: Cursor
    dense: DenseSource | None = None  # ``dense_from``: the other run's dense level 0
    elapsed_before: float = 0.0  # wall time of earlier sessions of a resumed run
    resume: dict[str, Any] | None = None  # the checkpoint's training state, until consumed
    #: rows of each results table that the finished levels hold (durable in the files; the
    #: checkpoint carries only the rows past them)
    row_offset: dict[str, int] = field(default_factory=dict)


class Experiment:
    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        hydra_files: dict[str, str] | None = None,
        world: World | None = None,
    ) -> None:
        self.cfg = cfg
        #: data-parallel ranks (``prune_cli.distributed``): rank 0 alone touches ``run_dir``
        self.world = distributed.world() if world is None else world
        #: where metrics are mirrored (``logger=...``); rank 0 builds the chosen one in _lead
        self.tracker = trackers.Tracker()
        self._handed_over = False
        self.config = OmegaConf.to_container(OmegaConf.structured(cfg))
        self.store = RunStore(run_dir, self.config)
        self.hydra_files = hydra_files
        self.started = time.time()
        self.state: RunState | None = None

    # --- entry ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or resume, or show) the experiment; returns the final summary (rank 0; the
        other data-parallel ranks return {})."""
        if not self.world.main:
            return self._follow()
        try:
            return self._lead()
        finally:
            if self.world.parallel and not self._handed_over:
                self._hand_over(None)  # stopped before training: the other ranks stop too

    def _follow(self) -> dict[str, Any]:
        """A rank other than 0: build the same data, method and model, take the state rank 0
        hands over, and train the levels' steps with it; never open the run directory."""
        device, data, method, model, _ = self._build()
        handed = distributed.broadcast_object(None, device)
        if handed is None:  # rank 0 showed a finished run, or failed before training
            return {}
        self._make_state(device, data, method, model, None)
        self._apply(handed["state"])
        self._s.resume = handed["resume"]
        self._levels()
        return {}

    def _hand_over(self, handed: dict[str, Any] | None) -> None:
        self._handed_over = True
        distributed.broadcast_object(handed, self._s.device if handed else torch.device("cpu"))

    def _shared(self) -> dict[str, Any]:
        """What rank 0 decides and the other ranks take: weights, masks, method state, cursor."""
        s = self._s
        return {
            "cursor": asdict(s.cursor),
            "model": s.model.state_dict(),
            "masks": s.masks.state_dict(),
            "method": s.method.state_dict(),
        }

    def _apply(self, shared: dict[str, Any]) -> None:
        s = self._s
        s.cursor = Cursor(**shared["cursor"])
        s.model.load_state_dict(shared["model"])
        s.masks = Masks(shared["masks"])
        s.method.load_state_dict(shared["method"])

    def _sync(self) -> None:
        """Every rank takes rank 0's weights, masks, method state and cursor (data parallel)."""
        if self.world.parallel:
            shared = self._shared() if self.world.main else None
            shared = distributed.broadcast_object(shared, self._s.device)
            if not self.world.main:
                self._apply(shared)

    def _lead(self) -> dict[str, Any]:
        with self.store.lock():
            if not self.cfg.overwrite:
                self.store.refuse_other_config()
                self.store.tidy()
                existing = self.store.summary()
                if existing is not None and existing.get("status") == "completed":
                    self.store.verify(existing)
                    console.print(
                        f"[bold]{self.store.root}[/] is complete; showing its results "
                        "(overwrite=true runs it again)"
                    )
                    show_results(existing, self.store.root)
                    return existing
            self._start()
            self.tracker = trackers.build(
                self.cfg.logger, self.store.root, Path(self.cfg.output_root)
            )
            try:
                self.tracker.start(self.config, self.store.root.name)
                with self.store.log_file():
                    log.info("run %s in %s", self.store.hash, self.store.root)
                    self._levels()
                s = self._s
                info = s.method.finalize(s.model, s.masks, self._context(s.cursor.level))
                analyses = self._analyses()
            except KeyboardInterrupt:
                self._write_summary("interrupted", reason=self._where("interrupted"))
                self.tracker.finish("interrupted")
                raise
            except RunFailed as exc:
                self._write_summary("failed", reason=str(exc))
                self.tracker.finish("failed")
                raise
            except Exception as exc:
                self._write_summary("failed", reason=f"{type(exc).__name__}: {exc}")
                self.tracker.finish("failed")
                raise
            self.tracker.finish("completed")
            summary = self._write_summary(
                "completed",
                method_info=info,
                files=self.store.level_files(s.cursor.level),
                **({"analysis": analyses} if analyses else {}),
            )
            self.store.discard_checkpoint()  # the level models remain
        show_results(summary, self.store.root)
        return summary

    def _analyses(self) -> dict[str, Any]:
        """The analyses the config asks for (``analysis=[...]``), on the trained dense level 0;
        skipped, with the reason, when level 0 is already sparse (a method that prunes while it
        trains has no dense model to analyse)."""
        chosen = self.cfg.analysis or {}
        if not chosen:
            return {}
        s = self._s
        level0 = self.store.load_level(0, s.device)
        pruned = sum(int((~m.bool()).sum()) for m in level0["mask"].values())
        if pruned:
            reason = "level 0 is not dense: the method prunes while it trains"
            return {name: {"skipped": reason} for name in chosen}
        model = copy.deepcopy(s.model)
        model.load_state_dict(level0["model"])
        out: dict[str, Any] = {}
        for name, settings in chosen.items():
            folder = self.store.paths.analysis(name)
            folder.mkdir(parents=True, exist_ok=True)
            log.info("analysis %s on the dense level 0", name)
            run = analysis.ANALYSES[name].run
            out[name] = run(model, self._context(0), settings, folder.joinpath)
        return out

    @property
    def _s(self) -> RunState:
        assert self.state is not None, "the run has not started"
        return self.state

    def _where(self, what: str) -> str:
        c = self._s.cursor
        return f"{what} at level {c.level}, epoch {c.epoch}; re-run the same command to resume"

    # --- set-up -------------------------------------------------------------------------------
    def _build(self) -> tuple[torch.device, ImageData, PruningMethod, nn.Module, Any]:
        """Data, method, model (with its starting weights) and ``dense_from``'s source."""
        cfg = self.cfg
        device = resolve_device(distributed.training_device(cfg.device, self.world))
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
        if cfg.dense_from and self.world.main:
            dense = self.store.dense_source(Path(cfg.dense_from), device)
        # with its starting weights: a file that does not fit fails before the directory is
        # claimed (nothing above draws from the seeded generator, so initial weights are as
        # they always were)
        model = build_model(cfg.model, data.spec)
        return device, data, method, model, dense

    def _make_state(
        self,
        device: torch.device,
        data: ImageData,
        method: PruningMethod,
        model: nn.Module,
        dense: DenseSource | None,
    ) -> None:
        self.state = RunState(
            device=device,
            data=data,
            method=method,
            model=model,
            params={},
            masks=Masks({}),
            records=RunRecords(),
            cursor=Cursor(),
            dense=dense,
        )
        model = method.prepare(model, self._context(0)).to(device)
        if device.type == "cuda" and self.cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        s = self.state
        s.model, s.params = model, method.prunable(model)
        s.masks = Masks.ones(s.params)

    def _start(self) -> None:
        """Build data, method and model, then claim the directory (clear it if overwriting)."""
        cfg = self.cfg
        try:
            device, data, method, model, dense = self._build()
            # the method's ``prepare`` may refuse the model (filters it cannot group): before
            # the directory is claimed, like every other set-up failure
            self._make_state(device, data, method, model, dense)
        except UserError as exc:
            # A set-up failure is recorded in a directory that holds nothing (so a sweep's report
            # lists the job); an existing run, or one about to be overwritten, stays untouched.
            if not self.store.has_results():
                self._write_header("failed", reason=str(exc), device=cfg.device)
            raise
        if cfg.overwrite:
            self.store.clear()
        self.store.write_config(OmegaConf.to_yaml(OmegaConf.structured(cfg)), self.hydra_files)
        s = self._s
        model = s.model
        if dense is not None:
            self.store.adopt_init(dense.init_path)
        init = self.store.load_init(device)
        if init is None:
            self.store.save_init(model.state_dict())
        else:
            model.load_state_dict(init)
        s.resume = self.store.load_checkpoint(device)
        if s.resume is not None:
            ck = s.resume
            s.records = RunRecords.from_checkpoint(ck["records"], self.store.paths)
            s.row_offset = dict(ck["records"].get("offset", {}))
            s.cursor = Cursor(**ck["cursor"])
            s.elapsed_before = float(ck.get("wall_time_s", 0.0))
            s.masks = Masks(ck["masks"]).to(device)
            model.load_state_dict(ck["model"])
            method.load_state_dict(ck.get("method", {}))
            console.print(
                f"resuming {self.store.root} at level {s.cursor.level}, epoch {s.cursor.epoch}"
            )
        self._write_summary("running")
        if self.world.parallel:
            # the other ranks start from this state; of a checkpoint, what training resumes from
            resume = s.resume and {k: None if k in RANK0_ONLY else v for k, v in s.resume.items()}
            self._hand_over({"state": self._shared(), "resume": resume})

    def _context(self, level: int) -> PruneContext:
        s = self._s

        def batches(n: int) -> Iterator[tuple[Tensor, Tensor]]:
            gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "score-batches", level))
            stream = s.data.batches("train", self.cfg.train.batch_size, shuffle=True, generator=gen)
            return itertools.islice(stream, n)

        def load_state(name: str) -> dict[str, Tensor]:
            if name == "init":
                init = self.store.load_init(s.device)
                assert init is not None, "init.pt is written before training starts"
                return init
            return self.store.load_level(int(name.removeprefix("level_")), s.device)["model"]

        def evaluate_split(model: nn.Module, split: str) -> tuple[float, float]:
            if s.data.size(split) == 0:  # not (0, 0): that would read as a measured accuracy
                return math.nan, math.nan
            result = evaluate(model, s.data, split, self.cfg.train)
            return result.loss, result.accuracy

        return PruneContext(
            level=level,
            seed=self.cfg.seed,
            device=s.device,
            batches=batches,
            loss_fn=F.cross_entropy,
            weight_decay=self.cfg.train.weight_decay,
            num_classes=s.data.spec.num_classes,
            load_state=load_state,
            artifact_path=self.store.artifact,
            model_name=self.cfg.model.name,
            evaluate=evaluate_split,
        )

    # --- the levels ---------------------------------------------------------------------------
    def _levels(self) -> None:
        s = self._s
        with make_progress(self.cfg.progress and self.world.main) as progress:
            while s.cursor.level <= s.method.num_levels():
                level = s.cursor.level
                if level > 0 and not s.cursor.pruned:
                    self._prune(level)
                if level == 0 and self.cfg.dense_from:
                    self._reuse_dense()
                else:
                    self._train(level, progress)
                self._finish_level(level)

    def _prune(self, level: int) -> None:
        """Prune and rewind on rank 0 (the only one), which hands the result to the others."""
        if self.world.main:
            self._prune_here(level)
        self._sync()

    def _prune_here(self, level: int) -> None:
        s = self._s
        previous = self.store.load_level(level - 1, s.device)
        s.model.load_state_dict(previous["model"])
        s.masks = Masks(previous["mask"]).to(s.device)
        s.masks.update(s.method.prune(s.model, s.masks, self._context(level)))
        s.masks.apply_(s.params)
        self._record_stage(level, "pruned", self._evaluate("test"))
        rewind = s.method.rewind()
        if rewind.kind == "init":
            s.model.load_state_dict(self._context(level).load_state("init"))
        elif rewind.kind == "epoch":
            s.model.load_state_dict(self.store.load_rewind(s.device))
        s.masks.apply_(s.params)
        s.cursor = Cursor(level=level, epoch=0, pruned=True)
        self._save_checkpoint()

    def _reuse_dense(self) -> None:
        """Level 0 from ``dense_from``: the other run's selected dense model, not retrained."""
        s = self._s
        if self.world.main:
            assert s.dense is not None
            s.model.load_state_dict(s.dense.level0["model"])
            s.masks = Masks(s.dense.level0["mask"]).to(s.device)
            s.masks.apply_(s.params)
            s.records.metrics.extend(s.dense.metrics)
            s.cursor.epoch = self.cfg.train.epochs
        self._sync()

    def _train(self, level: int, progress: Any) -> None:
        s = self._s
        cfg = self.cfg.train.for_level(level)
        optimizer = s.method.optimizer(s.model, cfg.lr) or build_optimizer(
            s.model.parameters(), cfg, cfg.lr
        )
        steps = s.data.num_batches("train", cfg.batch_size)
        scheduler = build_scheduler(optimizer, cfg, steps, cfg.epochs)
        callbacks = s.method.callbacks(level, s.masks, self._context(level))
        best_state: dict[str, Tensor] | None = None
        ck, s.resume = s.resume, None
        if ck is not None and ck["cursor"]["level"] == level and ck.get("optimizer") is not None:
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            for cb, state in zip(callbacks, ck["callbacks"], strict=True):
                cb.load_state_dict(state)
            best_state = ck["best_state"]
        enforce = (lambda: s.masks.apply_(s.params)) if s.method.enforce_masks else None
        bars = ProgressBars(progress, level, s.cursor.epoch, s.method.num_levels())
        trainer = Trainer(
            s.model, s.data, cfg, optimizer, scheduler, enforce, [*callbacks, bars], self.world
        )
        for cb in trainer.callbacks:
            cb.on_level_start(s.model, steps, cfg.epochs)
        has_val = s.data.size("val") > 0
        while s.cursor.epoch < cfg.epochs:
            epoch, mask_version, started = s.cursor.epoch, s.masks.version, time.time()
            seed = derive_seed(self.cfg.seed, "epoch", level, epoch)
            torch.manual_seed(seed)
            try:
                stats = trainer.train_epoch(epoch, torch.Generator().manual_seed(seed))
            except RunFailed as exc:
                raise RunFailed(f"level {level}: {exc}") from None
            if not self.world.main:  # rank 0 evaluates, selects and saves
                s.cursor.epoch += 1
                continue
            rows = [(level, epoch + 1, "train", k, v) for k, v in stats.items()]
            rows.append((level, epoch + 1, "train", "lr", optimizer.param_groups[0]["lr"]))
            score = float(epoch)
            if has_val:
                val = trainer.evaluate("val")
                rows += [
                    (level, epoch + 1, "val", "loss", val.loss),
                    (level, epoch + 1, "val", "accuracy", val.accuracy),
                ]
                score = {"val_accuracy": val.accuracy, "val_loss": -val.loss}.get(cfg.select, score)
            s.records.metrics.extend(rows)
            self.tracker.epoch(level, epoch + 1, {f"{sp}_{k}": v for _, _, sp, k, v in rows})
            s.cursor.epoch += 1
            log.info(
                "level %d/%d epoch %d/%d %s (%.1f s)",
                level,
                s.method.num_levels(),
                s.cursor.epoch,
                cfg.epochs,
                " ".join(f"{split}_{k}={v:.4g}" for _, _, split, k, v in rows),
                time.time() - started,
            )
            if s.masks.version != mask_version:
                s.cursor.best = {}  # earlier epochs had other masks: not selectable
            if not s.cursor.best or score >= s.cursor.best["score"]:
                s.cursor.best = {"score": score, "epoch": s.cursor.epoch}
                best_state = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
            rewind = s.method.rewind()
            if level == 0 and rewind.kind == "epoch" and s.cursor.epoch == rewind.epoch:
                self.store.save_rewind(s.model.state_dict())
            if s.cursor.epoch % self.cfg.checkpoint_every == 0 or s.cursor.epoch == cfg.epochs:
                self._save_checkpoint(optimizer, scheduler, callbacks, best_state)
                self.store.write_results(s.records)
        if best_state is not None:
            s.model.load_state_dict(best_state)
        self._sync()  # the selected epoch's weights on every rank

    def _finish_level(self, level: int) -> None:
        """Evaluate the selected model of the level, record it, save it, move on."""
        s = self._s
        if not self.world.main:
            s.cursor = Cursor(level=level + 1)
            return
        val = self._evaluate("val") if s.data.size("val") > 0 else None
        test = self._evaluate("test")
        self._record_stage(level, "trained", test)
        record_level(
            s.records,
            level,
            s.model,
            s.params,
            s.masks,
            val,
            test,
            self.cfg.pqi_grid,
            input_shape=s.data.spec.input_shape,
            selected_epoch=s.cursor.best.get("epoch"),
            epochs=self.cfg.train.for_level(level).epochs,
        )
        spec = s.data.spec
        self.store.save_level(
            level,
            s.method.level_state(s.model),
            s.masks.state_dict(),
            {
                "name": self.cfg.model.name,
                "settings": self.config["model"],
                "channels": spec.channels,
                "num_classes": spec.num_classes,
                "image_size": spec.image_size,
            },
        )
        entry = s.records.levels[-1]
        self.tracker.level(
            level, {k: v for k, v in entry.items() if isinstance(v, int | float) and k != "level"}
        )
        log.info(
            "level %d done: sparsity %.4f, val accuracy %s, test accuracy %.4f",
            level,
            entry["sparsity"],
            "-" if val is None else f"{val.accuracy:.4f}",
            test.accuracy,
        )
        # the finished level's rows go to the disk before the checkpoint that stops carrying
        # them (a crash in between resumes from the older checkpoint, which still does)
        self.store.write_results(s.records, durable=True)
        s.row_offset = s.records.counts()
        s.cursor = Cursor(level=level + 1)
        self._save_checkpoint()
        self._write_summary("running")

    # --- measurements -------------------------------------------------------------------------
    def _evaluate(self, split: str) -> EvalResult:
        return evaluate(self._s.model, self._s.data, split, self.cfg.train)

    def _record_stage(self, level: int, stage: str, evaluation: EvalResult) -> None:
        s = self._s
        record_stage(
            s.records,
            level,
            stage,
            evaluation,
            s.data.class_names,
            s.params,
            s.masks,
            self.cfg.pqi_grid,
        )

    # --- persistence --------------------------------------------------------------------------
    def _save_checkpoint(
        self,
        optimizer: Any = None,
        scheduler: Any = None,
        callbacks: list | None = None,
        best_state: dict[str, Tensor] | None = None,
    ) -> None:
        s = self._s
        self.store.save_checkpoint(
            {
                "cursor": asdict(s.cursor),
                "model": s.model.state_dict(),
                "masks": s.masks.state_dict(),
                "optimizer": None if optimizer is None else optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "callbacks": [cb.state_dict() for cb in callbacks or []],
                "best_state": best_state,
                "records": s.records.checkpoint_state(s.row_offset),
                "method": s.method.state_dict(),
                "wall_time_s": self._elapsed(),
            }
        )

    def _elapsed(self) -> float:
        before = 0.0 if self.state is None else self.state.elapsed_before
        return round(before + time.time() - self.started, 3)

    def _write_header(self, status: str, **extra: Any) -> dict[str, Any]:
        cfg = self.cfg
        summary = {
            "status": status,
            "config_hash": self.store.hash,
            "model": cfg.model.name,
            "dataset": cfg.dataset.name,
            "method": cfg.method.name,
            "seed": cfg.seed,
            "wall_time_s": self._elapsed(),
            "versions": dict(versions()),
            **extra,
        }
        summary.setdefault("levels", [])
        self.store.write_summary(summary)
        return summary

    def _write_summary(self, status: str, **extra: Any) -> dict[str, Any]:
        s = self._s
        return self._write_header(
            status,
            device=str(s.device),
            # CPU results are bit-for-bit repeatable only at the same thread count (it changes
            # the order of float reductions); a parallel launcher gives each job its share
            threads=torch.get_num_threads(),
            params_total=count_parameters(s.model),
            params_prunable=sum(p.numel() for p in s.params.values()),
            **extra,
            levels=s.records.levels,
        )


@functools.cache
def versions() -> dict[str, str | None]:
    """Versions that produced a run; looked up once per process (``git`` runs once, not per
    summary write)."""
    try:
        torch_pruning: str | None = metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        torch_pruning = None
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(prune_cli.__file__).parent,
        )
        commit = done.stdout.strip() if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "prune_run": prune_cli.__version__,
        "torch": torch.__version__,
        "torch_pruning": torch_pruning,
        "python": platform.python_version(),
        "git_commit": commit,
    }


def run_experiment(
    cfg: RunConfig,
    run_dir: Path,
    hydra_files: dict[str, str] | None = None,
    world: World | None = None,
) -> dict[str, Any]:
    return Experiment(cfg, run_dir, hydra_files, world).run()
