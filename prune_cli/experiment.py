"""One experiment: train dense (level 0), then for each pruning level prune, rewind, retrain.

The loop reads like open_lth's runner: for each level, prune if not done, train the epochs not
done, then record the level. It knows nothing of any particular method (it calls the hooks of
:class:`~prune_cli.pruning.method.PruningMethod`, docs/ARCHITECTURE.md) and nothing of files:
the :class:`~prune_cli.store.RunStore` owns the run directory (lock, checkpoints, resume,
``dense_from``, results, provenance), :mod:`prune_cli.run_state` builds what the loop works on,
:mod:`prune_cli.ranks` hands rank 0's decisions to the other ranks of a data-parallel run, and
:mod:`prune_cli.recording.measure` turns evaluations into rows.

Every epoch ends in an atomic checkpoint (:class:`~prune_cli.checkpoint.Checkpoint`), so
re-running the same command continues where a crash stopped and reaches the same results as an
uninterrupted run: all randomness of an epoch comes from a generator seeded by
``derive_seed(seed, "epoch", level, epoch)``. While the levels train, the store writes the files
behind the training (:meth:`~prune_cli.store.RunStore.background_writes`): everything is on the
disk before the run records how it ended, puts an overwritten run back or releases its lock.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from rich.markup import escape
from torch import Tensor

from prune_cli import analysis, distributed, shared_dense, trackers
from prune_cli.checkpoint import selection_score
from prune_cli.config import RunConfig
from prune_cli.distributed import World
from prune_cli.errors import RunFailed, UserError
from prune_cli.io import DiskFull, interrupt_reason, interrupts_deferred
from prune_cli.level_digests import LevelDigests
from prune_cli.pruning.mask import Masks
from prune_cli.ranks import Ranks
from prune_cli.recording.console import ProgressBars, console, make_progress, show_results
from prune_cli.run_state import RunState, build, make_state
from prune_cli.seeds import derive_seed
from prune_cli.store import RunStore
from prune_cli.training.loop import Trainer
from prune_cli.training.optim import build_optimizer, build_scheduler

#: per-epoch and per-level lines: to ``run.log`` always, and to stdout through Hydra's logging
log = logging.getLogger("prune_cli.experiment")

#: how many runs of this process are inside :func:`start_up_frozen` (a shared dense run nests)
_frozen_depth = 0
#: whether a run of this process has ended (its garbage may still wait for a collection)
_ran_before = False


@contextlib.contextmanager
def start_up_frozen() -> Iterator[None]:
    """Keep the objects that exist when the run begins out of the cyclic garbage collector's
    passes until it ends (``gc.freeze``).

    Why: by then torch, Hydra and the registries have made some 350,000 objects that live as
    long as the process, and each full collection walked them all: 0.1-0.3 s each, six in a
    bare run (``torch._dynamo``'s import, at the first optimizer, sets off several), about 8%
    of its CPU time. Frozen, a collection walks only what the run has made since. They are
    unfrozen when the outermost run ends, so that a process that runs many (the tests, a
    sweep's in-process jobs) frees what earlier runs left behind in its next collections.
    """
    global _frozen_depth, _ran_before
    if _frozen_depth == 0:
        if _ran_before:  # an earlier run's cycles (models, optimizers) would be frozen too
            gc.collect()
        gc.freeze()
    _frozen_depth += 1
    try:
        yield
    finally:
        _frozen_depth -= 1
        if _frozen_depth == 0:
            gc.unfreeze()
            _ran_before = True


class Experiment:
    """One run: rank 0 leads it (owns the directory, decides), the other ranks follow."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        hydra_files: dict[str, str] | None = None,
        world: World | None = None,
        record_setup_failure: bool = False,
    ) -> None:
        self.cfg = cfg
        #: a sweep's job records a set-up failure in its (otherwise empty) directory, so that
        #: the sweep's report lists it; a single run leaves no directory behind (bad input)
        self.record_setup_failure = record_setup_failure
        #: data-parallel ranks (``prune_cli.distributed``): rank 0 alone touches ``run_dir``
        self.world = distributed.world() if world is None else world
        self.ranks = Ranks(self.world)
        #: where metrics are mirrored (``logger=...``); rank 0 builds the chosen one in _lead
        self.tracker = trackers.Tracker()
        #: the config as an OmegaConf node, made once (about 8 ms): the dict and config.yaml
        self._node = OmegaConf.structured(cfg)
        self.config = OmegaConf.to_container(self._node)
        self.store = RunStore(run_dir, self.config)
        #: each level file's digest, taken when it is written (summary ``files``)
        self.digests = LevelDigests(self.store.paths)
        self.hydra_files = hydra_files
        self.started = time.time()
        self.state: RunState | None = None
        #: whether the run has written into its directory (set up and past the checks)
        self.claimed = False

    @property
    def _s(self) -> RunState:
        assert self.state is not None, "the run has not started"
        return self.state

    # --- entry ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or resume, or show) the experiment; returns the final summary (rank 0; the
        other data-parallel ranks return {})."""
        with start_up_frozen():
            if not self.world.main:
                return self._follow()
            try:
                return self._lead()
            finally:
                self.ranks.stop()  # stopped before training: the other ranks stop too

    def _follow(self) -> dict[str, Any]:
        """A rank other than 0: build the same parts, take the state rank 0 hands over, and
        train the levels' steps with it; never open the run directory."""
        parts = build(self.cfg, self.world, self.store)
        handed = self.ranks.receive(parts.device)
        if handed is None:  # rank 0 showed a finished run, or failed before training
            return {}
        self.state = make_state(self.cfg, self.store, parts)
        self._s.resume = handed.apply(self._s)
        self._levels()
        return {}

    def _lead(self) -> dict[str, Any]:
        with self.store.lock():
            existing = None if self.cfg.overwrite else self.store.completed()
            if existing is not None:
                console.print(  # never wrapped: the path is copied from the terminal
                    f"[bold]{escape(str(self.store.root))}[/] is complete; showing its results "
                    "(overwrite=true runs it again)",
                    soft_wrap=True,
                )
                show_results(existing, self.store.root)
                root, output_root = self.store.root, Path(self.cfg.output_root)
                if line := trackers.log_completed(self.cfg.logger, root, output_root, self.config):
                    # sent to the tracker from its files, or already there
                    console.print(line, soft_wrap=True, markup=False, highlight=False)
                return existing
            try:
                self._start()
            except BaseException:
                if not self.claimed and not self.record_setup_failure:
                    # refused while being set up: the directory made for the run goes again if
                    # it holds nothing but our lock (never what the user or an earlier run had)
                    self.store.remove_if_empty()
                self._put_back()
                raise
            self.tracker = trackers.build(
                self.cfg.logger, self.store.root, Path(self.cfg.output_root)
            )
            try:
                self.tracker.start(self.config, self.store.root.name)
                with self.store.log_file():
                    log.info("run %s in %s", self.store.hash, self.store.root)
                    self._levels()
                s = self._s
                info = s.method.finalize(s.model, s.masks, s.context(s.cursor.level))
                analyses = self._analyses()
            except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP (io.SignalInterrupt)
                # a second Ctrl-C waits until the interrupt is recorded and the old run is back
                with interrupts_deferred():
                    self._stopped("interrupted", self._where(interrupt_reason(exc)))
                    self._put_back()
                raise
            except Exception as exc:
                known = isinstance(exc, RunFailed | UserError)  # their message is the reason
                reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
                self._stopped("failed", reason)
                self._put_back()
                raise
            damage = self.digests.problem()
            if damage is not None:  # changed since written: never recorded as intact
                self._stopped("damaged", damage)
                self.digests.check()
            summary = self._write_summary(
                "completed",
                method_info=info,
                files=self.digests.for_summary(self.store.level_files(s.cursor.level)),
                **({"analysis": analyses} if analyses else {}),
            )
            self.tracker.finish("completed")  # after the summary: it is one of the artifacts
            self.store.discard_checkpoint()  # the level models remain
        show_results(summary, self.store.root)
        return summary

    def _start(self) -> None:
        """Build the run's parts, claim the directory (clear it if overwriting), resume its
        checkpoint if it has one, and start the other ranks from the result."""
        cfg, store = self.cfg, self.store
        try:
            # the method's ``prepare`` may refuse the model (filters it cannot group): before
            # the directory is claimed, like every other set-up failure
            self.state = make_state(cfg, store, build(cfg, self.world, store))
        except UserError as exc:
            # A set-up failure is recorded in a directory that holds nothing (so a sweep's report
            # lists the job); an existing run, or one about to be overwritten, stays untouched.
            if self.record_setup_failure and not store.has_results():
                self._write_summary("failed", reason=str(exc), device=cfg.device)
            raise
        self._share_dense()
        self.claimed = True
        if cfg.overwrite:  # kept aside until this run's level 0 is written (store.set_aside)
            store.set_aside(self._s.declared().files)
        store.write_config(OmegaConf.to_yaml(self._node), self.hydra_files)
        s = self._s
        s.take_init()
        previous = store.summary() if store.paths.summary.exists() else None
        ck = store.load_checkpoint(s.device)
        if ck is not None:
            s.restore(ck)
            # the finished levels' files must be as the earlier sessions wrote them
            self.digests.resume(previous, ck.cursor.level)
            self.digests.check()
            if ck.cursor.level > 0 and previous and previous.get("dense_shared"):
                # past a shared level 0: the summary goes on saying where it came from
                s.shared = shared_dense.SharedDense(Path(previous["dense_shared"]), None)
            console.print(
                f"resuming {store.root} at level {s.cursor.level}, epoch {s.cursor.epoch}",
                soft_wrap=True,
                markup=False,
            )
        self._write_summary("running")
        self.ranks.start(s, s.resume)

    def _share_dense(self) -> None:
        """Take this run's level 0 from the shared dense level (:mod:`prune_cli.shared_dense`:
        found, trained here, or waited for) where its method's level 0 is the plain dense
        training and the run has not begun training its own (a checkpoint resumes as it was)."""
        s, store = self._s, self.store
        sharing = shared_dense.shares(self.cfg, self.world, store.root)
        if not sharing or store.paths.checkpoint.exists():
            return
        try:
            s.shared = shared_dense.obtain(self.cfg, self.world)
            s.dense = store.dense_source(s.shared.root, s.device)
        except (UserError, RunFailed) as exc:
            if self.record_setup_failure and not store.has_results():
                # listed by a sweep's report, like a set-up failure
                self._write_summary("failed", reason=f"shared dense model: {exc}")
            raise

    # --- the levels ---------------------------------------------------------------------------
    def _levels(self) -> None:
        s = self._s
        progress_on = self.cfg.progress and self.world.main
        # the files are written behind the training, all of them before this returns or raises
        with (
            self.store.background_writes(),
            make_progress(progress_on, self.cfg.heartbeat_s) as progress,
        ):
            while s.cursor.level <= s.method.num_levels():
                level = s.cursor.level
                if level > 0 and not s.cursor.pruned:
                    self._prune(level)
                if level == 0 and (self.cfg.dense_from or s.dense is not None):
                    self._reuse_dense()
                else:
                    self._train(level, progress)
                self._finish_level(level)

    def _prune(self, level: int) -> None:
        """Prune the previous level's selected model and rewind, on rank 0 (the only one),
        which hands the result to the others."""
        s = self._s
        if self.world.main:
            previous = self.store.load_level(level - 1, s.device)
            s.model.load_state_dict(previous["model"])
            s.masks = Masks(previous["mask"]).to(s.device)
            s.masks.update(s.method.prune(s.model, s.masks, s.context(level)))
            s.masks.apply_(s.params)
            s.record_stage(level, "pruned", s.evaluate("test"))
            rewind = s.method.rewind()
            if rewind.kind == "init":
                s.model.load_state_dict(s.context(level).load_state("init"))
            elif rewind.kind == "epoch":
                s.model.load_state_dict(self.store.load_rewind(s.device))
            s.masks.apply_(s.params)
            s.cursor.mark_pruned()
            self.store.save_checkpoint(s.checkpoint(self._elapsed()))
        self.ranks.sync(s)

    def _reuse_dense(self) -> None:
        """Level 0 from ``dense_from`` or the shared dense level: the other run's selected dense
        model, not retrained."""
        s = self._s
        if self.world.main:
            assert s.dense is not None
            s.model.load_state_dict(s.dense.level0["model"])
            s.masks = Masks(s.dense.level0["mask"]).to(s.device)
            s.masks.apply_(s.params)
            s.records.metrics.extend(s.dense.metrics)
            # as if trained here: a tracker shows the same with and without sharing
            trackers.mirror_epochs(self.tracker, s.dense.metrics)
            if s.shared is not None and s.shared.selected_epoch is not None:
                # shared: the level is this run's own training, done elsewhere, so its entry
                # names the epoch that training selected, as if trained here
                s.cursor.skip_training(s.shared.selected_epoch)
                s.cursor.select(0.0)
            s.cursor.skip_training(self.cfg.train.epochs)
        self.ranks.sync(s)

    def _train(self, level: int, progress: Any) -> None:
        """Train the level's remaining epochs; rank 0 records, selects and checkpoints each."""
        s, cfg = self._s, self.cfg.train.for_level(level)
        optimizer = s.method.optimizer(s.model, cfg.lr) or build_optimizer(
            s.model.parameters(), cfg, cfg.lr
        )
        steps = s.data.num_batches("train", cfg.batch_size)
        scheduler = build_scheduler(optimizer, cfg, steps, cfg.epochs)
        # every rank runs the callbacks: a choice they make from a timing is rank 0's on all
        agree = functools.partial(self.ranks.agree, device=s.device)
        callbacks = s.method.callbacks(level, s.masks, s.context(level, agree))
        ck, s.resume = s.resume, None  # the checkpoint's training state, used once
        best_state: dict[str, Tensor] | None = None
        if ck is not None and ck.resumes(level):
            best_state = ck.resume_training(optimizer, scheduler, callbacks)
        enforce = (lambda: s.masks.apply_(s.params)) if s.method.enforce_masks else None
        bars = ProgressBars(progress, level, s.cursor.epoch, s.method.num_levels(), cfg.batch_size)
        trainer = Trainer(
            s.model, s.data, cfg, optimizer, scheduler, enforce, [*callbacks, bars], self.world
        )
        for cb in trainer.callbacks:
            cb.on_level_start(s.model, steps, cfg.epochs)
        while s.cursor.epoch < cfg.epochs:
            epoch, mask_version, started = s.cursor.epoch, s.masks.version, time.time()
            seed = derive_seed(self.cfg.seed, "epoch", level, epoch)
            torch.manual_seed(seed)
            try:
                stats = trainer.train_epoch(epoch, torch.Generator().manual_seed(seed))
            except RunFailed as exc:
                raise RunFailed(f"level {level}: {exc}") from None
            if not self.world.main:  # rank 0 evaluates, selects and saves
                s.cursor.epoch_done()
                continue
            val = trainer.evaluate("val") if s.data.size("val") > 0 else None
            rows = s.record_epoch(level, epoch + 1, stats, optimizer.param_groups[0]["lr"], val)
            self.tracker.epoch(level, epoch + 1, {f"{sp}_{k}": v for _, _, sp, k, v in rows})
            s.cursor.epoch_done()
            measured = " ".join(f"{split}_{k}={v:.4g}" for _, _, split, k, v in rows)
            log.info(
                "level %d/%d epoch %d/%d %s (%.1f s)",
                *(level, s.method.num_levels(), s.cursor.epoch, cfg.epochs, measured),
                time.time() - started,
            )
            if s.masks.version != mask_version:
                s.cursor.forget_best()
            if s.cursor.select(selection_score(val, cfg.select, epoch)):
                best_state = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
            rewind = s.method.rewind()
            if level == 0 and rewind.kind == "epoch" and s.cursor.epoch == rewind.epoch:
                self.store.save_rewind(s.model.state_dict())
            if s.cursor.epoch % self.cfg.checkpoint_every == 0 or s.cursor.epoch == cfg.epochs:
                training = (optimizer, scheduler, callbacks, best_state)
                self.store.save_checkpoint(s.checkpoint(self._elapsed(), *training))
                self.store.write_results(s.records)
        if best_state is not None:
            s.model.load_state_dict(best_state)
        self.ranks.sync(s)  # the selected epoch's weights on every rank

    def _finish_level(self, level: int) -> None:
        """Evaluate the selected model of the level, record it, save it, move on."""
        s = self._s
        if not self.world.main:
            s.cursor.next_level()
            return
        val = s.evaluate("val") if s.data.size("val") > 0 else None
        test = s.evaluate("test")
        s.record_stage(level, "trained", test)
        entry = s.record_level(level, val, test)
        model_state = s.method.level_state(s.model)
        # the digests of the bytes written: the files may still be on their way to the disk
        written = self.store.save_level(level, model_state, s.masks.state_dict(), s.model_info())
        self.digests.files.update(written)
        self.tracker.level(
            level, {k: v for k, v in entry.items() if isinstance(v, int | float) and k != "level"}
        )
        # a level 0 taken from a shared dense run was reported "done" by that run (on this
        # console too, when this job trained it): say where it came from, not "done" twice.
        # The path repeats the terminal's "level 0 from the shared dense model in ..." line,
        # which comes before this run's log file exists: run.log has it only here
        done = "done" if level > 0 or s.shared is None else f"from {s.shared.root}"
        log.info(
            "level %d %s: sparsity %.4f, val accuracy %s, test accuracy %.4f",
            *(level, done, entry["sparsity"], "-" if val is None else f"{val.accuracy:.4f}"),
            test.accuracy,
        )
        # the finished level's rows go to the disk before the checkpoint that stops carrying
        # them (a crash in between resumes from the older checkpoint, which still does)
        self.store.write_results(s.records, durable=True)
        s.row_offset = s.records.counts()
        s.cursor.next_level()
        self.store.save_checkpoint(s.checkpoint(self._elapsed()))
        self._write_summary("running")
        if level == 0:
            self.store.drop_aside()  # overwrite=true: the new run now stands on its own

    # --- after the levels -----------------------------------------------------------------------
    def _analyses(self) -> dict[str, Any]:
        """The analyses the config asks for (``analysis=[...]``), on the trained dense level 0."""
        if not self.cfg.analysis:
            return {}
        s = self._s
        level0 = self.store.load_level(0, s.device)
        return analysis.run_chosen(
            self.cfg.analysis, s.model, level0, s.context(0), self.store.paths.analysis
        )

    # --- the summary --------------------------------------------------------------------------
    def _write_summary(self, status: str, **extra: Any) -> dict[str, Any]:
        """``summary.json``, the one place the run writes it: what the run knows so far (the
        store adds the run's identity and provenance)."""
        s = self.state
        if s is not None:  # none after a set-up failure: the reason alone
            files = {"files": dict(self.digests.files)} if self.digests.files else {}
            extra = {**s.summary_fields(), **files, **extra, "levels": s.records.levels}
        return self.store.write_summary(status, self._elapsed(), **extra)

    def _put_back(self) -> None:
        """``overwrite=true`` ended before the new run's level 0: the earlier run comes back."""
        if self.world.main and self.store.restore_aside():
            console.print(
                f"{self.store.root}: the overwrite did not finish; the earlier run is kept",
                soft_wrap=True,
                markup=False,
            )

    def _stopped(self, status: str, reason: str) -> None:
        with contextlib.suppress(DiskFull):  # the error being raised says so, in one line
            self._write_summary(status, reason=reason)
        self.tracker.finish(status)

    def _where(self, what: str) -> str:
        c = self._s.cursor
        return f"{what} at level {c.level}, epoch {c.epoch}; re-run the same command to resume"

    def _elapsed(self) -> float:
        before = 0.0 if self.state is None else self.state.elapsed_before
        return round(before + time.time() - self.started, 3)


def run_experiment(
    cfg: RunConfig,
    run_dir: Path,
    hydra_files: dict[str, str] | None = None,
    world: World | None = None,
    record_setup_failure: bool = False,
) -> dict[str, Any]:
    return Experiment(cfg, run_dir, hydra_files, world, record_setup_failure).run()
