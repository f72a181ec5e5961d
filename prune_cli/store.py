"""The run store: the one owner of a run directory (lock, checkpoints, resume, results).

The experiment loop asks the store to save or load states and results; it never builds a path
or opens a file itself. The store keeps a run directory whole:

- **one writer**: an exclusive lock (``.lock``, ``flock``) is held for the whole run, so a second
  ``prune-run`` into the same directory is refused instead of mixing its files with the first's;
- **one config**: the directory belongs to the config whose hash its summary, checkpoint or
  ``config.yaml`` carries; another config is refused with the keys that differ, and a checkpoint
  is resumed only by the config that wrote it;
- **nothing lost**: ``overwrite=true`` sets the old results aside (``.overwritten/``) once the
  new run has built its data and model, puts them back if it fails, is interrupted or killed
  before its level 0 is written, and deletes them then; a refused run writes nothing (not
  even Hydra's ``.hydra/``, nor the directory itself);
- **nothing stale**: leftover temporaries are removed, a completed run keeps no checkpoint, and
  the level models' sizes and digests are recorded so that a truncated one is detected;
- **safe reads**: every torch file goes through :func:`prune_cli.io.load_torch`
  (``weights_only=True``);
- **written behind the training**: while the levels train (:meth:`RunStore.background_writes`)
  the files go to disk on one background thread, in order, each atomic and ``fsync``'d; a read
  of a file still being written gets its bytes, and the block ends only when all are written;
- **one format**: a checkpoint is written and read as a typed
  :class:`~prune_cli.checkpoint.Checkpoint`, stored as the plain dict every earlier version
  wrote; every ``summary.json`` starts with the run's identity (config hash, model, dataset,
  method, seed) and the versions that produced it (:mod:`prune_cli.provenance`).

Layout: see :mod:`prune_cli.paths`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from prune_cli.checkpoint import Checkpoint
from prune_cli.errors import UserError
from prune_cli.identity import config_hash, differing_keys
from prune_cli.io import (
    BackgroundWriter,
    interrupts_deferred,
    json_text,
    load_json_mapping,
    load_torch,
    remove_stale_temporaries,
    save_bytes,
    save_json,
    save_text,
    torch_bytes,
)
from prune_cli.paths import RESULT_DIRS, RESULT_FILES, RunPaths
from prune_cli.provenance import versions
from prune_cli.pruning.results import stored_results
from prune_cli.rundir import (  # noqa: F401  (check_location, file_digest: the store's API too)
    LOCK_NAME,
    NoFollowFileHandler,
    check_location,
    directory_lock,
    file_digest,
    refuse_links,
    shows_only,
    verify_files,
)

log = logging.getLogger("prune_cli.store")


#: the hidden folder that holds an overwritten run's results until the new run has its level 0
ASIDE = ".overwritten"


@dataclass
class DenseSource:
    """The trained dense level of another run, for ``dense_from``."""

    level0: dict[str, Any]  # {"model": state dict, "mask": mask state}
    init_path: Path
    metrics: list[tuple]  # the level-0 rows of its metrics.csv


class RunStore:
    """Everything a run reads from or writes to its directory."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.paths = RunPaths(Path(root))
        self.config = config
        self.hash = config_hash(config)
        #: rows of each results table already in its file in this session (None: rewrite all)
        self._written: dict[str, int] | None = None
        #: a completed run on read-only storage, held for showing only (``lock``)
        self._read_only = False
        #: the thread that writes the files while the levels train (None: written at once)
        self._writer: BackgroundWriter | None = None

    @property
    def root(self) -> Path:
        return self.paths.root

    # --- ownership ----------------------------------------------------------------------------
    def lock(self) -> contextlib.AbstractContextManager[None]:
        check_location(self.root)
        if self.root.is_dir() and not os.access(self.root, os.W_OK | os.X_OK):
            return self._read_only_lock()
        return self._writer_lock()

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        with directory_lock(self.root):
            refuse_links(self.root)  # after the lock: its own file is opened without following
            # an overwrite killed (kill -9) before the new run's level 0 left the old run aside
            if self.restore_aside():
                log.warning(
                    "%s: an interrupted overwrite was undone; the earlier run is back", self.root
                )
            yield

    @contextlib.contextmanager
    def _read_only_lock(self) -> Iterator[None]:
        """A completed run on read-only storage (``check_location`` let it through): shown
        without a lock (nobody can write it), refused if the run would write."""
        self._read_only = True
        refuse_links(self.root)
        if self.config.get("overwrite"):
            raise self._cannot_write()
        try:
            yield
        finally:
            self._read_only = False

    def _cannot_write(self) -> UserError:
        return UserError(
            f"run directory {self.root} cannot be written ({self.root} is read-only); choose "
            "another hydra.run.dir or fix its permissions"
        )

    def summary(self) -> dict[str, Any] | None:
        self._settle(self.paths.summary)
        if not self.paths.summary.exists():
            return None
        return load_json_mapping(self.paths.summary, "summary")

    def owner(self) -> tuple[str, dict[str, Any] | None] | None:
        """(hash, config) of the run this directory holds, from its summary, checkpoint or
        ``config.yaml``; None for an empty directory."""
        stored_config = None
        if self.paths.config.is_file():
            try:
                stored_config = yaml.safe_load(self.paths.config.read_text())
            except (OSError, yaml.YAMLError):
                stored_config = None
        summary = self.summary()
        if summary is not None:
            return str(summary.get("config_hash")), stored_config
        if self.paths.checkpoint.exists():
            # mapped, not read: the resume reads the weights once, in load_checkpoint
            ck = load_torch(self.paths.checkpoint, what="checkpoint", mmap=True)
            return str(ck.get("config_hash")), ck.get("config")
        if isinstance(stored_config, dict):
            return config_hash(stored_config), stored_config
        return None

    def completed(self) -> dict[str, Any] | None:
        """The summary of the completed run this directory holds, its level files checked as
        written; None for an empty directory or an unfinished run of this config (tidied, to be
        resumed). A run of another config is refused."""
        self.refuse_other_config()
        if self._read_only:
            summary = self.summary()
            if summary is None or summary.get("status") != "completed":
                raise self._cannot_write()  # changed since check_location looked
            self.verify(summary)  # nothing to tidy: a read-only run keeps what it holds
            return summary
        self.tidy()
        summary = self.summary()
        if summary is None or summary.get("status") != "completed":
            return None
        self.verify(summary)
        return summary

    def refuse_other_config(self) -> None:
        owner = self.owner()
        if owner is None or owner[0] == self.hash:
            return
        theirs = owner[1]
        differ = differing_keys(theirs, self.config) if isinstance(theirs, dict) else []
        if differ:
            detail = f" ({', '.join(differ[:6])}{', ...' if len(differ) > 6 else ''} differ)"
        elif isinstance(theirs, dict):
            detail = " (the same settings, hashed by another prune-run version)"
        else:
            detail = ""
        raise UserError(
            f"{self.root} holds a run of another config{detail}; choose another "
            "hydra.run.dir or pass overwrite=true to replace it"
        )

    def has_results(self) -> bool:
        return any((self.root / n).exists() for n in RESULT_FILES) or any(
            (self.root / d).exists() for d in RESULT_DIRS
        )

    def remove_if_empty(self) -> None:
        """Remove the run directory if it holds nothing but its lock (a run refused while being
        set up); called with the lock held, so no other run is using the directory."""
        # a directory that cannot be listed or removed (another process has just added a
        # file, its permissions changed) is left as it is: the refusal's line is what counts
        with contextlib.suppress(OSError):
            if {p.name for p in self.root.iterdir()} - {LOCK_NAME}:
                return
            (self.root / LOCK_NAME).unlink(missing_ok=True)
            self.root.rmdir()

    def _result_names(self, declared: tuple[str, ...]) -> tuple[list[str], tuple[str, ...]]:
        """(files, folders) of a run's results: every run's files, the files the new run's
        method declares and those the stored run's declared; what ``overwrite=true`` replaces."""
        names = [*RESULT_FILES, *declared]
        old = self.summary() if self.paths.summary.is_file() else None
        with contextlib.suppress(ValueError, UserError):  # a bad declaration names nothing
            names += stored_results(old).files if old is not None else ()
        safe = [n for n in dict.fromkeys(names) if not Path(n).is_absolute()]
        # a crafted summary does not reach outside the run directory
        return [n for n in safe if ".." not in Path(n).parts], (*RESULT_DIRS, ".hydra")

    def clear(self, declared: tuple[str, ...] = ()) -> None:
        """Delete the results of the run this directory holds (see :meth:`_result_names`)."""
        files, folders = self._result_names(declared)
        for name in files:
            with contextlib.suppress(IsADirectoryError):  # not a file the run wrote
                (self.root / name).unlink(missing_ok=True)
        for name in folders:
            shutil.rmtree(self.root / name, ignore_errors=True)

    # --- overwrite=true: the old run stays recoverable until the new one has its level 0 -------
    @property
    def _aside(self) -> Path:
        return self.root / ASIDE

    @property
    def _aside_partial(self) -> Path:
        return self.root / f"{ASIDE}.partial"

    def set_aside(self, declared: tuple[str, ...] = ()) -> None:
        """Move the old run's results into a hidden folder (``overwrite=true``): put back by
        :meth:`restore_aside` if the new run fails or is interrupted (or killed: the next start
        does it), deleted by :meth:`drop_aside` once the new run's level 0 is written.

        The moves go into ``.overwritten.partial`` first, renamed when all are done, so a kill
        in between leaves a folder that is plainly put back, with nothing of the new run."""
        files, folders = self._result_names(declared)
        partial = self._aside_partial
        partial.mkdir(exist_ok=True)
        for name in [*files, *folders]:
            source = self.root / name
            if source.exists() or source.is_symlink():
                (partial / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, partial / name)
        os.replace(partial, self._aside)

    def restore_aside(self) -> bool:
        """Put the old run back (the new run's results removed); whether there was one."""
        if self._aside_partial.is_dir():  # interrupted while setting aside: nothing new yet
            self._move_back(self._aside_partial)
        if not self._aside.is_dir():
            return False
        self._written = None
        self.clear()
        self._move_back(self._aside)
        return True

    def _move_back(self, folder: Path) -> None:
        for source in sorted(p for p in folder.rglob("*") if not p.is_dir() or p.is_symlink()):
            target = self.root / source.relative_to(folder)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # the new run's, where the old run had a file
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        shutil.rmtree(folder)

    def drop_aside(self) -> None:
        """The new run has written its level 0: the old run's results go, once the new run's
        level 0 is on the disk (the writes before this one are waited for)."""
        if self._aside.is_dir():
            self.flush()
        shutil.rmtree(self._aside, ignore_errors=True)

    def tidy(self) -> None:
        """Remove what a killed run leaves behind: temporaries, a completed run's checkpoint."""
        remove_stale_temporaries(self.root)
        summary = self.summary()
        if summary is not None and summary.get("status") == "completed":
            self.paths.checkpoint.unlink(missing_ok=True)

    def verify(self, summary: dict[str, Any]) -> None:
        """A completed run's level files must be as it wrote them."""
        problem = verify_files(self.root, summary.get("files", {}))
        if problem is not None:
            raise UserError(
                f"{self.root} is complete but {problem}; re-run with overwrite=true to recompute it"
            )

    @contextlib.contextmanager
    def log_file(self) -> Iterator[None]:
        """Send the ``prune_cli`` log to ``run.log`` while the run holds the directory."""
        handler = NoFollowFileHandler(self.paths.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger = logging.getLogger("prune_cli")
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            handler.close()

    def write_config(self, config_yaml: str, hydra_files: dict[str, str] | None) -> None:
        """The resolved config, and Hydra's copies (written here, after the checks)."""
        save_text(config_yaml, self.paths.config)
        for name, text in (hydra_files or {}).items():
            save_text(text, self.root / ".hydra" / name)

    # --- writing behind the training ---------------------------------------------------------
    @contextlib.contextmanager
    def background_writes(self) -> Iterator[None]:
        """Write the run's files on a background thread while the block runs (the levels'
        training), so that the disk's ``fsync`` overlaps the next epoch (:class:`BackgroundWriter`:
        in order, each atomic and durable before the next). However the block ends, every file
        handed over is on the disk before it returns (a second Ctrl-C waits): the summary of an
        interrupted or failed run, the restored overwrite and the lock's release come after.

        A write that failed (a full disk) is raised here or at the next write, as the one-line
        error it is; when the block already ends with an exception (Ctrl-C), that one is kept.
        """
        writer = self._writer = BackgroundWriter()
        try:
            yield
        except BaseException:
            with interrupts_deferred():
                self._writer = None
                # the exception in flight is what the run reports (its summary says why)
                with contextlib.suppress(Exception):
                    writer.close()
            raise
        with interrupts_deferred():
            self._writer = None
            writer.close()

    def flush(self) -> None:
        """Wait until every file handed to the background writer is on the disk."""
        if self._writer is not None:
            self._writer.drain()

    def _settle(self, path: Path) -> None:
        """Before ``path`` is read, changed or removed: its pending write done."""
        if self._writer is not None and self._writer.touches(path):
            self._writer.drain()

    def _pending(self, path: Path) -> bytes | None:
        """The bytes of a write of ``path`` not yet done (a read takes them, not the file)."""
        return None if self._writer is None else self._writer.pending(path)

    def _write_bytes(self, data: bytes, path: Path) -> None:
        if self._writer is not None:
            self._writer.submit_bytes(data, path)
        else:
            save_bytes(data, path)

    def _save_torch(self, obj: Any, path: Path) -> bytes:
        """Save ``obj`` at ``path`` (in the background while the levels train); its bytes."""
        data = torch_bytes(obj, path)  # now: training goes on changing the tensors
        self._write_bytes(data, path)
        return data

    def _load_torch(self, path: Path, device: torch.device, what: str) -> Any:
        return load_torch(path, device, what=what, data=self._pending(path))

    def _exists(self, path: Path) -> bool:
        return self._pending(path) is not None or path.exists()

    # --- states -------------------------------------------------------------------------------
    def load_init(self, device: torch.device) -> dict[str, torch.Tensor] | None:
        if not self._exists(self.paths.init_state):
            return None
        return self._load_torch(self.paths.init_state, device, "initial weights")

    def save_init(self, state: dict[str, torch.Tensor]) -> None:
        self._save_torch(state, self.paths.init_state)

    def save_rewind(self, state: dict[str, torch.Tensor]) -> None:
        self._save_torch(state, self.paths.rewind_state)

    def load_rewind(self, device: torch.device) -> dict[str, torch.Tensor]:
        return self._load_torch(self.paths.rewind_state, device, "rewind weights")

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        self._save_torch(
            {**checkpoint.to_dict(), "config_hash": self.hash, "config": self.config},
            self.paths.checkpoint,
        )

    def load_checkpoint(self, device: torch.device) -> Checkpoint | None:
        """The resumable state, if this config wrote one (another config's is refused); a
        file of this or an earlier version (:meth:`Checkpoint.from_dict`)."""
        if not self._exists(self.paths.checkpoint):
            return None
        ck = self._load_torch(self.paths.checkpoint, device, "checkpoint")
        if not isinstance(ck, dict) or "cursor" not in ck:
            raise self._not_a_checkpoint()
        if ck.get("config_hash") != self.hash:
            differ = differing_keys(ck.get("config") or {}, self.config)
            raise UserError(
                f"checkpoint {self.paths.checkpoint} was written by another config "
                f"({', '.join(differ[:6]) or 'hash ' + str(ck.get('config_hash'))} differ); "
                "choose another hydra.run.dir or pass overwrite=true"
            )
        try:
            return Checkpoint.from_dict(ck)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise self._not_a_checkpoint(f" ({type(exc).__name__}: {exc})") from None

    def _not_a_checkpoint(self, detail: str = "") -> UserError:
        return UserError(
            f"checkpoint {self.paths.checkpoint} is not a prune-run checkpoint{detail}; delete "
            "it or re-run with overwrite=true"
        )

    def discard_checkpoint(self) -> None:
        self._settle(self.paths.checkpoint)  # a checkpoint still to be written would come back
        self.paths.checkpoint.unlink(missing_ok=True)

    def save_level(
        self, level: int, model: dict, mask: dict, model_info: dict
    ) -> dict[str, dict[str, Any]]:
        """The selected model of a level, with what rebuilds it, and its mask; returns the two
        files' sizes and SHA-256 (:func:`~prune_cli.rundir.file_digest`'s form), taken from the
        bytes written, so that a file damaged once on the disk is never recorded as intact."""
        state = {
            "model": model,
            "mask": mask,
            "config": self.config,
            "model_info": model_info,
            "level": level,
        }
        digests = {}
        for obj, path in (
            (state, self.paths.level_model(level)),
            (mask, self.paths.level_mask(level)),
        ):
            data = self._save_torch(obj, path)
            digests[str(path.relative_to(self.root))] = {
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        return digests

    def load_level(self, level: int, device: torch.device) -> dict[str, Any]:
        return self._level_file(
            self.paths, level, device, self._pending(self.paths.level_model(level))
        )

    @staticmethod
    def _level_file(
        paths: RunPaths, level: int, device: torch.device, data: bytes | None = None
    ) -> dict[str, Any]:
        state = load_torch(paths.level_model(level), device, what=f"level {level} model", data=data)
        if not isinstance(state, dict) or not {"model", "mask"} <= state.keys():
            raise UserError(
                f"{paths.level_model(level)} is a plain state dict, not a prune-run level model; "
                "point dense_from at the directory of a prune-run run"
            )
        return state

    def level_files(self, levels: int) -> dict[str, Any]:
        """Sizes and digests of the level files, recorded in the summary."""
        self.flush()
        out = {}
        for k in range(levels):
            for path in (self.paths.level_model(k), self.paths.level_mask(k)):
                if path.exists():
                    out[str(path.relative_to(self.root))] = file_digest(path)
        return out

    # --- dense_from ---------------------------------------------------------------------------
    def dense_source(self, source_dir: Path, device: torch.device) -> DenseSource:
        """The other run's dense level 0, refused unless model, data, training and seed match."""
        source = RunPaths(Path(source_dir))
        if not source.level_model(0).exists() or not source.init_state.exists():
            raise UserError(
                f"dense_from: {source.root} has no finished dense level (levels/level_0/model.pt "
                "and init.pt); run it first, or point dense_from at a run directory"
            )
        level0 = self._level_file(source, 0, device)
        theirs = level0.get("config")
        if not isinstance(theirs, dict):
            raise UserError(
                f"dense_from: {source.level_model(0)} carries no config; it was not written by "
                "prune-run"
            )
        differ = sorted(
            {
                k.split(".")[0]
                for k in differing_keys(theirs, self.config)
                if k.split(".")[0] in ("model", "dataset", "train", "seed")
                and not k.startswith("train.retrain")
            }
        )
        if differ:
            raise UserError(
                f"dense_from: {source.root} was trained with other {', '.join(differ)} settings; "
                "reuse only a dense model of the same model, dataset, train and seed"
            )
        load_torch(source.init_state, device, what="dense_from initial weights")  # readable
        rows: list[tuple] = []
        if source.metrics.exists():
            try:
                with open(source.metrics) as fh:
                    for lv, e, split, metric, v in list(csv.reader(fh))[1:]:
                        if lv == "0":
                            rows.append((0, int(e), split, metric, float(v)))
            except (OSError, ValueError) as exc:
                raise UserError(
                    f"dense_from: {source.metrics} is unreadable ({type(exc).__name__}); "
                    "re-run the dense run"
                ) from None
        return DenseSource(level0=level0, init_path=source.init_state, metrics=rows)

    def adopt_init(self, path: Path) -> None:
        if not self._exists(self.paths.init_state):
            # an atomic copy: a dangling link planted as init.pt is refused, not written through
            self._write_bytes(Path(path).read_bytes(), self.paths.init_state)

    # --- results ------------------------------------------------------------------------------
    def write_results(self, records: Any, durable: bool = False) -> None:
        """Bring the CSV files up to ``records``: rewrite them the first time in a session (a
        resumed run's files may hold rows past its checkpoint), then append the new rows only.

        The checkpoint carries the rows of the level in progress, so those need no fsync: a
        crash, even in the middle of an append, is repaired by the rewrite that starts the next
        session. The rows of a finished level are in the files alone once the next checkpoint
        is written, so the level's end writes them ``durable`` (and so does the rewrite); the
        background writer writes them before that checkpoint, in the order they were handed over.
        """
        written = self._written
        if self._writer is not None:
            # the rows as they are now (the run goes on adding to its lists); rows are tuples
            rows = {f.name: list(getattr(records, f.name)) for f in dataclasses.fields(records)}
            snapshot = dataclasses.replace(records, **rows)
            p = self.paths
            tables = (p.metrics, p.per_class_recall, p.pqi, p.gini, p.sparsity, p.recall_distortion)
            if written is None:
                self._writer.submit(tables, lambda: snapshot.write(self.paths, durable=True))
            else:
                self._writer.submit(tables, lambda: snapshot.append(self.paths, written, durable))
        elif written is None:
            records.write(self.paths, durable=True)
        else:
            records.append(self.paths, written, durable)
        self._written = records.counts()

    def write_summary(self, status: str, wall_time_s: float, **fields: Any) -> dict[str, Any]:
        """``summary.json``: the status, the run's identity and provenance, then ``fields``
        (what the experiment knows: device, sizes, levels, ...); returns what it wrote."""
        config = self.config
        summary = {
            "status": status,
            "config_hash": self.hash,
            "model": config["model"]["name"],
            "dataset": config["dataset"]["name"],
            "method": config["method"]["name"],
            "seed": config["seed"],
            "wall_time_s": wall_time_s,
            "versions": dict(versions()),
            **fields,
        }
        summary.setdefault("levels", [])
        if self._writer is not None:
            text = json_text(summary)  # now: the run goes on changing what it holds
            self._writer.submit((self.paths.summary,), lambda: save_text(text, self.paths.summary))
        else:
            save_json(summary, self.paths.summary)
        return summary

    def artifact(self, name: str) -> Path:
        return self.paths.extra(name)
