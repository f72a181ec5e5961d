"""Where a run stands (:class:`Cursor`) and what resumes it (:class:`Checkpoint`).

Every epoch ends in a checkpoint (``checkpoint.pt``, written and read by
:class:`~prune_cli.store.RunStore`), so that re-running a crashed command continues where it
stopped. On disk a checkpoint is a plain dict of state dicts, saved with ``torch.save`` and read
with ``weights_only=True``; its keys are fixed, because runs written by earlier versions must
still resume. :meth:`Checkpoint.to_dict` and :meth:`Checkpoint.from_dict` are the one place that
knows them; the loop sees typed fields only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prune_cli.training.loop import EvalResult

#: a state dict as ``torch.save`` writes it (tensors, numbers, nested dicts and lists)
StateDict = dict[str, Any]


class Stateful(Protocol):
    """What a checkpoint restores: an optimizer, an LR scheduler, a callback."""

    def load_state_dict(self, state: Any, /) -> Any: ...


#: the keys of a checkpoint file, in the order it is written (the store adds ``config_hash``
#: and ``config``, which say whose run it is)
KEYS = (
    "cursor",
    "model",
    "masks",
    "optimizer",
    "scheduler",
    "callbacks",
    "best_state",
    "records",
    "method",
    "wall_time_s",
)


@dataclass(frozen=True)
class Best:
    """The epoch the level has selected so far, and its selection score (higher is better)."""

    score: float
    epoch: int

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "epoch": self.epoch}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Best | None:
        """None for ``{}``, which is how a checkpoint says that no epoch is selectable yet."""
        return cls(float(d["score"]), int(d["epoch"])) if d else None


def selection_score(val: EvalResult | None, select: str, epoch: int) -> float:
    """An epoch's score for :meth:`Cursor.select` under ``train.select`` (higher is better);
    for ``last``, or without a validation split, the epoch itself, so the latest is selected."""
    if val is None:
        return float(epoch)
    return {"val_accuracy": val.accuracy, "val_loss": -val.loss}.get(select, float(epoch))


@dataclass
class Cursor:
    """Where the run stands: the level, the epochs finished in it, whether its pruning is done,
    and the epoch it has selected so far.

    The run keeps one cursor for its whole life and moves it only through the methods below,
    so that every change of place is one named step of the loop.
    """

    level: int = 0
    epoch: int = 0
    pruned: bool = False
    best: Best | None = None

    @property
    def selected_epoch(self) -> int | None:
        return None if self.best is None else self.best.epoch

    def mark_pruned(self) -> None:
        """The level is pruned and rewound: its training starts at epoch 0, nothing selected."""
        self.epoch, self.pruned, self.best = 0, True, None

    def epoch_done(self) -> None:
        self.epoch += 1

    def skip_training(self, epochs: int) -> None:
        """The level's training comes from elsewhere (``dense_from``): all its epochs are done
        and none of them is this run's to select."""
        self.epoch = epochs

    def select(self, score: float) -> bool:
        """Select the epoch just finished if it scores at least as well as the best so far (of
        equal scores, the later); whether it was selected."""
        # written as the comparison it replaces: a nan score never displaces a selected epoch
        if self.best is None or score >= self.best.score:
            self.best = Best(score, self.epoch)
            return True
        return False

    def forget_best(self) -> None:
        """The masks changed: earlier epochs trained another network and cannot be selected."""
        self.best = None

    def next_level(self) -> None:
        self.level, self.epoch, self.pruned, self.best = self.level + 1, 0, False, None

    def restore(self, other: Cursor) -> None:
        """Take the place of another cursor (a checkpoint's, or rank 0's)."""
        self.level, self.epoch, self.pruned, self.best = (
            other.level,
            other.epoch,
            other.pruned,
            other.best,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "epoch": self.epoch,
            "pruned": self.pruned,
            "best": {} if self.best is None else self.best.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cursor:
        return cls(
            level=int(d.get("level", 0)),
            epoch=int(d.get("epoch", 0)),
            pruned=bool(d.get("pruned", False)),
            best=Best.from_dict(d.get("best") or {}),
        )


@dataclass
class Checkpoint:
    """What a run resumes from: its cursor, weights, masks and method state, the training state
    of the level in progress (None between levels and right after pruning), the result rows
    the files do not hold yet, and the wall time of its earlier sessions."""

    cursor: Cursor
    model: StateDict
    masks: StateDict
    optimizer: StateDict | None = None
    scheduler: StateDict | None = None
    callbacks: list[StateDict] = field(default_factory=list)
    #: the weights of the level's selected epoch (None: none selected yet)
    best_state: StateDict | None = None
    #: :meth:`~prune_cli.recording.records.RunRecords.checkpoint_state`
    records: dict[str, Any] = field(default_factory=dict)
    method: StateDict = field(default_factory=dict)
    wall_time_s: float = 0.0

    def resumes(self, level: int) -> bool:
        """Whether the training of ``level`` continues from here: a checkpoint written between
        two of its epochs (one written at a level's start or end holds no optimizer)."""
        return self.cursor.level == level and self.optimizer is not None

    def resume_training(
        self, optimizer: Stateful, scheduler: Stateful, callbacks: Sequence[Stateful]
    ) -> StateDict | None:
        """Give the level's fresh optimizer, scheduler and callbacks the states they had (only
        where :meth:`resumes`); returns the selected epoch's weights."""
        assert self.optimizer is not None and self.scheduler is not None
        optimizer.load_state_dict(self.optimizer)
        scheduler.load_state_dict(self.scheduler)
        for cb, state in zip(callbacks, self.callbacks, strict=True):
            cb.load_state_dict(state)
        return self.best_state

    def to_dict(self) -> dict[str, Any]:
        """The file's dict: the fixed keys (:data:`KEYS`), plain values only."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["cursor"] = self.cursor.to_dict()
        assert tuple(out) == KEYS, "the fields and the file's keys must stay the same"
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Checkpoint:
        """A checkpoint file's dict, as this or an earlier version wrote it. A missing weight,
        mask or records entry raises KeyError (the store reports the file as not resumable);
        the entries earlier versions did not always write have their defaults."""
        return cls(
            cursor=Cursor.from_dict(d["cursor"]),
            model=d["model"],
            masks=d["masks"],
            optimizer=d.get("optimizer"),
            scheduler=d.get("scheduler"),
            callbacks=list(d.get("callbacks") or []),
            best_state=d.get("best_state"),
            records=d["records"],
            method=d.get("method") or {},
            wall_time_s=float(d.get("wall_time_s", 0.0)),
        )
