"""One experiment: train dense (level 0), then for each pruning level prune, rewind, retrain.

The loop knows nothing of any particular method: it calls the hooks of
:class:`~prune_cli.pruning.method.PruningMethod` (see docs/ARCHITECTURE.md). Every epoch ends in
an atomic checkpoint (model, optimizer, scheduler, masks, selected state, callback states and the
result rows), so re-running the same command continues where a crash stopped and reaches the
same results as an uninterrupted run: all randomness of an epoch comes from a generator seeded
by (seed, level, epoch).
"""

from __future__ import annotations

import copy
import csv
import itertools
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor

import prune_cli
from prune_cli.config import RunConfig, config_hash
from prune_cli.data import build_dataset
from prune_cli.errors import ConfigError, RunFailed, UserError
from prune_cli.io import load_json, load_torch, save_text, save_torch
from prune_cli.metrics import per_class_recall, pq_index, pq_index_rows
from prune_cli.models import build_model, count_parameters
from prune_cli.paths import RESULT_DIRS, RESULT_FILES, RunPaths
from prune_cli.pruning.mask import Masks, nonzero_counts
from prune_cli.pruning.method import METHODS, PruneContext, PruningMethod
from prune_cli.reporting.console import ProgressBars, console, make_progress, show_results
from prune_cli.reporting.distortion import distortion_rows
from prune_cli.reporting.records import RunRecords
from prune_cli.spec import ImageData
from prune_cli.training.loop import EvalResult, Trainer, evaluate, resolve_device
from prune_cli.training.optim import build_optimizer, build_scheduler


def epoch_seed(seed: int, level: int, epoch: int) -> int:
    """Seed of all randomness in one epoch (shuffling, augmentation, dropout)."""
    return (seed * 1_000_003 + level * 10_007 + epoch) % (2**63)


@dataclass
class Cursor:
    """Where the run stands: level, epochs finished in it, and whether its pruning is done."""

    level: int = 0
    epoch: int = 0
    pruned: bool = False
    best: dict[str, Any] = field(default_factory=dict)  # {"score": float, "epoch": int}


class Experiment:
    def __init__(self, cfg: RunConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.paths = RunPaths(run_dir)
        self.hash = config_hash(cfg)
        self.config_container = OmegaConf.to_container(OmegaConf.structured(cfg))
        self.started = time.time()
        self.elapsed_before = 0.0  # wall time of earlier sessions of a resumed run

    # --- entry ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or resume, or show) the experiment; returns the final summary."""
        existing = self._existing_summary()
        if existing is not None and existing.get("status") == "completed":
            console.print(
                f"[bold]{self.paths.root}[/] is complete; showing its results "
                "(overwrite=true runs it again)"
            )
            show_results(existing)
            return existing
        self._setup()
        try:
            self._train_levels()
            info = self.method.finalize(self.model, self.masks, self._context(self.cursor.level))
        except (RunFailed, KeyboardInterrupt) as exc:
            reason = str(exc) or type(exc).__name__
            self._write_summary("failed", reason=reason)
            raise
        except Exception as exc:
            self._write_summary("failed", reason=f"{type(exc).__name__}: {exc}")
            raise
        summary = self._write_summary("completed", method_info=info)
        self.paths.checkpoint.unlink(missing_ok=True)  # the level models remain
        show_results(summary)
        return summary

    def _existing_summary(self) -> dict[str, Any] | None:
        if self.cfg.overwrite:
            for name in RESULT_FILES:
                (self.paths.root / name).unlink(missing_ok=True)
            for name in RESULT_DIRS:
                shutil.rmtree(self.paths.root / name, ignore_errors=True)
            return None
        if not self.paths.summary.exists():
            return None
        summary = load_json(self.paths.summary)
        if summary.get("config_hash") != self.hash:
            raise UserError(
                f"{self.paths.root} holds a run of another config (hash "
                f"{summary.get('config_hash')}, this one {self.hash}); choose another "
                "hydra.run.dir or pass overwrite=true to replace it"
            )
        return summary

    # --- set-up -------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("device=cuda was asked for but no CUDA GPU is visible; use device=auto")
        torch.manual_seed(cfg.seed)
        self.data: ImageData = build_dataset(cfg.dataset, self.device)
        self.method: PruningMethod = METHODS.get(cfg.method.name)(cfg.method)
        self.rewind = self.method.rewind()
        if self.rewind.kind == "epoch" and self.rewind.epoch > cfg.train.epochs:
            raise ConfigError(
                f"method.rewind={cfg.method.rewind} is later than train.epochs={cfg.train.epochs}"
            )
        model = build_model(cfg.model.name, self.data.spec)
        self.model = self.method.prepare(model, self._context(0)).to(self.device)
        if self.device.type == "cuda" and cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.params = self.method.prunable(self.model)
        self.masks = Masks.ones(self.params)
        self.records = RunRecords()
        self.cursor = Cursor()
        self.paths.root.mkdir(parents=True, exist_ok=True)
        if cfg.dense_from:
            self._check_dense_from()
        if not self.paths.config.exists():
            save_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)), self.paths.config)
        if self.paths.init_state.exists():
            self.model.load_state_dict(load_torch(self.paths.init_state, self.device))
        else:
            save_torch(self.model.state_dict(), self.paths.init_state)
        self.checkpoint: dict[str, Any] | None = None
        if self.paths.checkpoint.exists():
            self.checkpoint = load_torch(self.paths.checkpoint, self.device)
            self.records = RunRecords.from_state(self.checkpoint["records"])
            self.cursor = Cursor(**self.checkpoint["cursor"])
            self.elapsed_before = float(self.checkpoint.get("wall_time_s", 0.0))
            self.masks = Masks(self.checkpoint["masks"]).to(self.device)
            self.model.load_state_dict(self.checkpoint["model"])
            self.method.load_state_dict(self.checkpoint.get("method", {}))
            console.print(
                f"resuming {self.paths.root} at level {self.cursor.level}, "
                f"epoch {self.cursor.epoch}"
            )
        self.params_total = count_parameters(self.model)
        self._write_summary("running")

    def _context(self, level: int) -> PruneContext:
        def batches(n: int) -> Iterator[tuple[Tensor, Tensor]]:
            gen = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, level, 999_983))
            stream = self.data.batches(
                "train", self.cfg.train.batch_size, shuffle=True, generator=gen
            )
            return itertools.islice(stream, n)

        def load_state(name: str) -> dict[str, Tensor]:
            if name == "init":
                return load_torch(self.paths.init_state, self.device)
            k = int(name.removeprefix("level_"))
            return load_torch(self.paths.level_model(k), self.device)["model"]

        return PruneContext(
            level=level,
            seed=self.cfg.seed,
            device=self.device,
            batches=batches,
            loss_fn=F.cross_entropy,
            weight_decay=self.cfg.train.weight_decay,
            num_classes=self.data.spec.num_classes,
            load_state=load_state,
            artifact_path=self.paths.extra,
        )

    # --- the levels ---------------------------------------------------------------------------
    def _train_levels(self) -> None:
        with make_progress(self.cfg.progress) as progress:
            while self.cursor.level <= self.method.num_levels():
                level = self.cursor.level
                if level > 0 and not self.cursor.pruned:
                    self._prune(level)
                self._train(level, progress)
                self._finish_level(level)

    def _prune(self, level: int) -> None:
        previous = load_torch(self.paths.level_model(level - 1), self.device)
        self.model.load_state_dict(previous["model"])
        self.masks = Masks(previous["mask"]).to(self.device)
        new = self.method.prune(self.model, self.masks, self._context(level))
        self.masks.update(new)
        self.masks.apply_(self.params)
        self._record_stage(level, "pruned", self._evaluate("test"))
        if self.rewind.kind == "init":
            self.model.load_state_dict(load_torch(self.paths.init_state, self.device))
        elif self.rewind.kind == "epoch":
            self.model.load_state_dict(load_torch(self.paths.rewind_state, self.device))
        self.masks.apply_(self.params)
        self.cursor = Cursor(level=level, epoch=0, pruned=True)
        self._save_checkpoint(optimizer=None, scheduler=None, callbacks=[], best_state=None)

    def _reuse_dense(self) -> None:
        """Level 0 from ``dense_from``: the other run's selected dense model, not retrained."""
        source = RunPaths(Path(self.cfg.dense_from))
        state = load_torch(source.level_model(0), self.device)
        self.model.load_state_dict(state["model"])
        self.masks = Masks(state["mask"]).to(self.device)
        self.masks.apply_(self.params)
        if source.metrics.exists():
            with open(source.metrics) as fh:
                rows = [r for r in csv.reader(fh)][1:]
            self.records.metrics.extend(
                (0, int(e), split, metric, float(v))
                for lv, e, split, metric, v in rows
                if lv == "0"
            )
        self.cursor.epoch = self.cfg.train.epochs

    def _check_dense_from(self) -> None:
        """The reused dense model must come from the same model, data, seed and training."""
        source = RunPaths(Path(self.cfg.dense_from))
        if not source.level_model(0).exists() or not source.init_state.exists():
            raise UserError(
                f"dense_from: {source.root} has no finished dense level (levels/level_0/model.pt "
                "and init.pt); run it first, or point dense_from at a run directory"
            )
        theirs = load_torch(source.level_model(0))["config"]
        ours = copy.deepcopy(self.config_container)
        for part in (theirs, ours):
            part["train"].pop("retrain", None)
        differ = [k for k in ("model", "dataset", "train", "seed") if theirs[k] != ours[k]]
        if differ:
            raise UserError(
                f"dense_from: {source.root} was trained with other {', '.join(differ)} settings; "
                "reuse only a dense model of the same model, dataset, train and seed"
            )
        if not self.paths.init_state.exists():
            shutil.copyfile(source.init_state, self.paths.init_state)

    def _train(self, level: int, progress: Any) -> None:
        if level == 0 and self.cfg.dense_from:
            self._reuse_dense()
            return
        cfg = self.cfg.train.for_level(level)
        epochs, lr = cfg.epochs, cfg.lr
        optimizer = self.method.optimizer(self.model, lr) or build_optimizer(
            self.model.parameters(), cfg, lr
        )
        steps = self.data.num_batches("train", cfg.batch_size)
        scheduler = build_scheduler(optimizer, cfg, steps, epochs)
        callbacks = self.method.callbacks(level, self.masks, self._context(level))
        best_state: dict[str, Tensor] | None = None
        ck = self.checkpoint
        if ck is not None and ck["cursor"]["level"] == level and ck.get("optimizer") is not None:
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            for cb, state in zip(callbacks, ck["callbacks"], strict=True):
                cb.load_state_dict(state)
            best_state = ck["best_state"]
        self.checkpoint = None
        enforce = (lambda: self.masks.apply_(self.params)) if self.method.enforce_masks else None
        bars = ProgressBars(progress, level, self.cursor.epoch)
        trainer = Trainer(
            self.model, self.data, cfg, optimizer, scheduler, enforce, [*callbacks, bars]
        )
        for cb in trainer.callbacks:
            cb.on_level_start(self.model, steps, epochs)
        has_val = self.data.size("val") > 0
        while self.cursor.epoch < epochs:
            epoch = self.cursor.epoch
            mask_version = self.masks.version
            seed = epoch_seed(self.cfg.seed, level, epoch)
            torch.manual_seed(seed)
            stats = trainer.train_epoch(epoch, torch.Generator().manual_seed(seed))
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
            self.records.metrics.extend(rows)
            self.cursor.epoch += 1
            if self.masks.version != mask_version:
                self.cursor.best = {}  # earlier epochs had other masks: not selectable
            if not self.cursor.best or score >= self.cursor.best["score"]:
                self.cursor.best = {"score": score, "epoch": self.cursor.epoch}
                best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if (
                level == 0
                and self.rewind.kind == "epoch"
                and self.cursor.epoch == self.rewind.epoch
            ):
                save_torch(self.model.state_dict(), self.paths.rewind_state)
            self._save_checkpoint(optimizer, scheduler, callbacks, best_state)
            self.records.write(self.paths)
        if best_state is not None:
            self.model.load_state_dict(best_state)

    def _finish_level(self, level: int) -> None:
        """Evaluate the selected model of the level, record it, save it, move on."""
        val = self._evaluate("val") if self.data.size("val") > 0 else None
        test = self._evaluate("test")
        self._record_stage(level, "trained", test)
        counts = nonzero_counts(self.params)
        for name, (numel, nonzero) in counts.items():
            self.records.sparsity.append((level, name, numel, nonzero, 1.0 - nonzero / numel))
        prunable = sum(n for n, _ in counts.values())
        zeros = sum(n - nz for n, nz in counts.values())
        entry = {
            "level": level,
            "sparsity": zeros / max(1, prunable),
            "params_nonzero": sum(int(torch.count_nonzero(t)) for t in self.model.parameters()),
            "val_accuracy": None if val is None else val.accuracy,
            "val_loss": None if val is None else val.loss,
            "test_accuracy": test.accuracy,
            "test_loss": test.loss,
            "pruned_test_accuracy": self._recorded_pruned_accuracy(level),
            "mask_sparsity": self.masks.sparsity(),
            "selected_epoch": self.cursor.best.get("epoch"),
            "epochs": self.cfg.train.for_level(level).epochs,
            "pqi": self._recorded_global_pqi(level),
        }
        entry["alpha"] = self._record_distortion(level, test.accuracy)
        self.records.levels.append(entry)
        save_torch(
            {
                "model": self.model.state_dict(),
                "mask": self.masks.state_dict(),
                "config": self.config_container,
                "level": level,
            },
            self.paths.level_model(level),
        )
        self.masks.save(self.paths.level_mask(level))
        self.cursor = Cursor(level=level + 1)
        self._save_checkpoint(None, None, [], None)
        self.records.write(self.paths)
        self._write_summary("running")

    def _recorded_global_pqi(self, level: int) -> float | None:
        """The trained model's global PQI at the first (p, q) of the grid, as just recorded."""
        if not self.cfg.pqi_grid:
            return None
        p, q = self.cfg.pqi_grid[0]
        key = (level, "trained", "global", "all", p, q)
        return next(r[6] for r in reversed(self.records.pqi) if tuple(r[:6]) == key)

    def _record_distortion(self, level: int, accuracy: float) -> float | None:
        """Recall distortion of level k against the dense level 0 (None for level 0)."""
        if level == 0 or not self.records.levels:
            return None
        dense = self.records.levels[0]
        rows, value = distortion_rows(
            level,
            self.records.recall_of(0, "trained"),
            dense["test_accuracy"],
            self.records.recall_of(level, "trained"),
            accuracy,
        )
        self.records.distortion.extend(rows)
        return value

    def _recorded_pruned_accuracy(self, level: int) -> float | None:
        """Test accuracy right after pruning: the support-weighted mean of its recall rows."""
        rows = [r for r in self.records.recall if r[0] == level and r[1] == "pruned"]
        if not rows:
            return None
        return sum(r[4] * r[5] for r in rows) / max(1, sum(r[4] for r in rows))

    # --- measurements -------------------------------------------------------------------------
    def _evaluate(self, split: str) -> EvalResult:
        return evaluate(self.model, self.data, split, self.cfg.train)

    def _pqi_global(self, p: float, q: float) -> float:
        weights = torch.cat([v.detach().reshape(-1) for v in self.params.values()])
        mask = torch.cat([self.masks[k].reshape(-1) for k in self.params])
        return pq_index(weights, mask, p, q)

    def _record_stage(self, level: int, stage: str, evaluation: EvalResult) -> None:
        recall, support = per_class_recall(evaluation.confusion)
        for c, name in enumerate(self.data.class_names):
            self.records.recall.append((level, stage, c, name, int(support[c]), float(recall[c])))
        for p, q in self.cfg.pqi_grid:
            self.records.pqi.append((level, stage, "global", "all", p, q, self._pqi_global(p, q)))
            for name, w in self.params.items():
                value = pq_index_rows(w.reshape(1, -1), self.masks[name].reshape(1, -1), p, q)
                self.records.pqi.append((level, stage, "layer", name, p, q, float(value[0])))

    # --- persistence --------------------------------------------------------------------------
    def _save_checkpoint(
        self, optimizer: Any, scheduler: Any, callbacks: list, best_state: dict[str, Tensor] | None
    ) -> None:
        save_torch(
            {
                "cursor": self.cursor.__dict__,
                "model": self.model.state_dict(),
                "masks": self.masks.state_dict(),
                "optimizer": None if optimizer is None else optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "callbacks": [cb.state_dict() for cb in callbacks],
                "best_state": best_state,
                "records": self.records.state_dict(),
                "method": self.method.state_dict(),
                "config_hash": self.hash,
                "config": self.config_container,
                "wall_time_s": self._elapsed(),
            },
            self.paths.checkpoint,
        )

    def _elapsed(self) -> float:
        return round(self.elapsed_before + time.time() - self.started, 3)

    def _write_summary(self, status: str, **extra: Any) -> dict[str, Any]:
        cfg = self.cfg
        header = {
            "status": status,
            "config_hash": self.hash,
            "model": cfg.model.name,
            "dataset": cfg.dataset.name,
            "method": cfg.method.name,
            "seed": cfg.seed,
            "device": str(getattr(self, "device", cfg.device)),
            "params_total": getattr(self, "params_total", None),
            "params_prunable": sum(p.numel() for p in getattr(self, "params", {}).values()),
            "wall_time_s": self._elapsed(),
            "versions": versions(),
        }
        return self.records.write_summary(self.paths, header, **extra)


def versions() -> dict[str, str | None]:
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
        "python": platform.python_version(),
        "git_commit": commit,
    }


def run_experiment(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    return Experiment(cfg, run_dir).run()
