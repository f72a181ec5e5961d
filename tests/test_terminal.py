"""What a person sees: every epoch line whole under live progress bars on a terminal, heartbeat
lines off one, ``--version`` and ``--help``, and one line for a missing optional extra."""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli, run_config
from rich.progress import Progress

from prune_cli import cli, extras
from prune_cli.config import CONF_DIR, config_hash
from prune_cli.data import build_dataset
from prune_cli.errors import ConfigError
from prune_cli.recording.console import Heartbeat, ProgressBars

#: a two-level run on the bundled digits, a few seconds on a CPU
TWO_LEVELS = ["model=mlp", "train.epochs=2", "method.levels=2", "share_dense=false"]
#: the pseudo-terminal's size: narrower than an epoch line (about 115 characters), so the
#: terminal wraps them, as a tmux pane does
COLUMNS, ROWS = 100, 40


class Screen:
    """A terminal, as far as rich and a logging handler drive one: printable characters with
    automatic wrap at the right margin, CR, LF, backspace, and the CSI sequences for cursor
    movement and erasing (colours, cursor visibility and other modes are ignored). Rows that
    scroll off the top stay in the scrollback (the cursor cannot go back up to them), and each
    row remembers whether it continues the one above (wrapped there), so that :meth:`lines`
    gives the logical lines a person reads and copies."""

    def __init__(self, columns: int, rows: int) -> None:
        self.columns, self.rows = columns, rows
        self.cells: list[list[str]] = [[]]
        self.wrapped: list[bool] = [False]
        self.row = self.col = 0
        self._pending = ""  # an escape sequence cut at the end of a read

    def _line(self, row: int) -> None:
        while len(self.cells) <= row:
            self.cells.append([])
            self.wrapped.append(False)

    def _top(self) -> int:
        return max(0, len(self.cells) - self.rows)

    def _put(self, ch: str) -> None:
        if self.col >= self.columns:  # the pending wrap of the last column
            self.row += 1
            self.col = 0
            self._line(self.row)
            self.cells[self.row] = []
            self.wrapped[self.row] = True
        cells = self.cells[self.row]
        cells.extend(" " * (self.col + 1 - len(cells)))
        cells[self.col] = ch
        self.col += 1

    def _csi(self, params: str, final: str) -> None:
        numbers = [int(p) if p.isdigit() else 0 for p in params.lstrip("?").split(";")]
        n = max(1, numbers[0])
        if final == "A":
            self.row = max(self._top(), self.row - n)
        elif final == "B":
            self.row += n
            self._line(self.row)
        elif final == "C":
            self.col = min(self.columns - 1, self.col + n)
        elif final == "D":
            self.col = max(0, min(self.col, self.columns - 1) - n)
        elif final == "G":
            self.col = n - 1
        elif final == "K":
            cells = self.cells[self.row]
            if numbers[0] == 2:
                self.cells[self.row] = []
                self.wrapped[self.row] = False
            elif numbers[0] == 0:
                del cells[self.col :]
            else:
                cells[: self.col + 1] = " " * min(len(cells), self.col + 1)
        elif final == "J" and numbers[0] == 0:
            del self.cells[self.row][self.col :]
            for r in range(self.row + 1, len(self.cells)):
                self.cells[r], self.wrapped[r] = [], False

    def feed(self, text: str) -> None:
        text = self._pending + text
        self._pending = ""
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                csi = re.match(r"\x1b\[([0-9;?]*)([@-~])", text[i:])
                osc = re.match(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)", text[i:])
                if csi:
                    self._csi(csi.group(1), csi.group(2))
                    i += csi.end()
                elif osc:
                    i += osc.end()
                elif len(text) - i < 16 and re.fullmatch(r"\x1b(\[[0-9;?]*|\][^\x07]*)?", text[i:]):
                    self._pending = text[i:]  # completed by the next read
                    return
                else:
                    i += 2  # a two-character escape (charset selection, keypad mode)
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.row += 1
                self._line(self.row)
            elif ch == "\b":
                self.col = max(0, min(self.col, self.columns - 1) - 1)
            elif ch >= " ":
                self._put(ch)
            i += 1

    def lines(self) -> list[str]:
        """The logical lines on the screen and in its scrollback, wrapped rows joined."""
        out: list[str] = []
        for cells, wrapped in zip(self.cells, self.wrapped, strict=True):
            text = "".join(cells)
            if wrapped and out:
                out[-1] += text
            else:
                out.append(text)
        return [line.rstrip() for line in out]


BAR = re.compile(r"^level \d+/\d+ epochs\s.*\d+/\d+")


def run_in_terminal(args: list[str], cwd: Path, timeout: float = 240) -> tuple[int, Screen, int]:
    """``prune-run ARGS`` with stdin, stdout and stderr on one pseudo-terminal; returns the exit
    status, the screen at the end, and the most epoch-bar rows seen on it at any read."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES", "CI")}
    env.update(TERM="xterm-256color", HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prune_cli.cli", *args],
        cwd=cwd,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    screen, most_bars, deadline = Screen(COLUMNS, ROWS), 0, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError as exc:  # EIO: every writer of the terminal has closed it
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            screen.feed(data.decode("utf-8", errors="replace"))
            most_bars = max(most_bars, sum(bool(BAR.match(line)) for line in screen.lines()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(timeout=30), screen, most_bars


def logged_epoch_lines(run: Path) -> list[str]:
    """The epoch lines as ``run.log`` has them (its timestamp left out)."""
    lines = (run / "run.log").read_text().splitlines()
    return [line.split(" ", 2)[2] for line in lines if re.search(r" epoch \d+/\d+ ", line)]


@pytest.mark.slow
def test_a_terminal_shows_every_epoch_line_whole_and_one_set_of_bars(tmp_path):
    run = tmp_path / "run-directory-with-a-long-name-that-a-results-table-would-split-in-two"
    status, screen, most_bars = run_in_terminal(
        [*TWO_LEVELS, "progress=true", f"hydra.run.dir={run}"], tmp_path
    )
    shown = screen.lines()
    assert status == 0, "\n".join(shown)
    expected = logged_epoch_lines(run)
    assert len(expected) == 3 * 2  # levels 0, 1, 2 of two epochs each
    missing = [line for line in expected if line not in shown]
    assert not missing, "\n".join(["not whole on the screen:", *missing, "screen:", *shown])
    # the terminal wrapped them (the test is about lines wider than the screen) ...
    assert all(len(line) > COLUMNS for line in expected)
    # ... one set of bars at a time, none left behind
    assert most_bars <= 1
    assert not [line for line in shown if BAR.match(line) or line.startswith("batches")]
    # the run's directory, under the results table, on one line
    assert str(run) in shown


def test_a_finished_levels_bars_go_away():
    progress = Progress(disable=True)
    first = ProgressBars(progress, 0, 0, 2)
    first.on_level_start(None, steps_per_epoch=3, epochs=2)
    assert len(progress.tasks) == 2
    for epoch in range(2):
        for step in range(3):
            first.on_step_end(step, None)
        first.on_epoch_end(epoch, None)
    assert progress.tasks == []
    # a level resumed after its last epoch shows none; one that leaves bars loses them to the next
    ProgressBars(progress, 1, 2, 2).on_level_start(None, steps_per_epoch=3, epochs=2)
    assert progress.tasks == []
    progress.add_task("left over", total=1)
    ProgressBars(progress, 2, 0, 2).on_level_start(None, steps_per_epoch=3, epochs=2)
    assert [t.description for t in progress.tasks] == ["level 2/2 epochs", "batches"]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_heartbeat_says_steps_rate_and_time_left(tmp_path):
    clock, out = _Clock(), (tmp_path / "log").open("w+")
    beat = Heartbeat(10.0, "level 1/3", 101, 4, 128, out=out, clock=clock)
    beat.start_epoch(2)
    beat.step()  # the first step starts the clock
    for _ in range(39):  # 39 more steps, a quarter of a second each: 9.75 s
        clock.now += 0.25
        beat.step()
    out.seek(0)
    assert out.read() == ""  # a line once 10 s have passed: none yet
    clock.now += 0.25
    beat.step()
    out.seek(0)
    # 41 steps done, 40 of them in 10 s: 4 steps/s of 128 images; 60 steps left: 15 s
    assert out.read() == "level 1/3 epoch 3/4: step 41/101, 512 img/s, 0:00:15 left in the epoch\n"


@pytest.mark.slow
def test_off_a_terminal_heartbeat_lines_come_between_epoch_lines(tmp_path):
    run = tmp_path / "run-directory-with-a-long-name-that-an-80-column-table-would-split"
    result = run_cli(
        [
            *TWO_LEVELS,
            "method.levels=1",
            "heartbeat_s=0.001",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    beat = re.compile(
        r"^level (\d)/1 epoch (\d)/2: step (\d+)/(\d+), ([\d,]+) img/s, "
        r"(\d+):(\d\d):(\d\d) left in the epoch$"
    )
    beats = [m for line in result.stdout.splitlines() if (m := beat.match(line))]
    assert {(m[1], m[2]) for m in beats} == {("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")}
    for m in beats:
        done, total = int(m[3]), int(m[4])
        assert 2 <= done <= total
        assert int(m[5].replace(",", "")) > 0
    # the steps of an epoch: the batches of the training split
    cfg = run_config(TWO_LEVELS)
    (total,) = {int(m[4]) for m in beats}
    assert total == build_dataset(cfg.dataset, torch.device("cpu")).num_batches(
        "train", cfg.train.batch_size
    )
    # the path under the results table is whole, though longer than an 80-column log
    assert str(run) in result.stderr.splitlines()


def test_the_heartbeat_is_no_result_setting():
    base = config_hash(run_config([]))
    assert config_hash(run_config(["heartbeat_s=5"])) == base
    assert config_hash(run_config(["heartbeat_s=0"])) == base
    with pytest.raises(ConfigError, match="heartbeat_s must be >= 0"):
        run_config(["heartbeat_s=-1"])


def test_version_names_prune_run_and_torch_without_composing(monkeypatch, capsys):
    from importlib.metadata import version

    import prune_cli

    def composes(*args, **kwargs):
        raise AssertionError("--version composed a config")

    monkeypatch.setattr(cli, "precheck", composes)
    monkeypatch.setattr(cli, "_run", composes)
    monkeypatch.delenv(cli.SWEEP_OWNER_ENV, raising=False)  # main sets it; given back after
    monkeypatch.setattr(sys, "argv", ["prune-run", "--version"])
    cli.main()
    out = capsys.readouterr().out
    assert out.splitlines() == [f"prune-run {prune_cli.__version__} (torch {version('torch')})"]


def test_help_lists_every_config_group(tmp_path):
    text = cli.help_text()
    listed = {
        line.split()[0] for line in text.splitlines() if line.startswith("  ") and "=" not in line
    }
    groups = {p.parent.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*.yaml")} - {"."}
    assert groups >= {"logger", "analysis", "model", "hydra/launcher"}
    assert groups <= listed
    # read from the config tree: a new group shows without a change to the code
    (tmp_path / "newgroup").mkdir()
    (tmp_path / "newgroup" / "alpha.yaml").write_text("{}\n")
    (tmp_path / "newgroup" / "beta.yaml").write_text("{}\n")
    assert "  newgroup" in cli.help_text(tmp_path)
    assert re.search(r"^  newgroup\s+alpha, beta$", cli.help_text(tmp_path), re.M)


@pytest.mark.parametrize(
    ("override", "module", "extra"),
    [
        ("hydra/launcher=local", "hydra_plugins.hydra_joblib_launcher", "local"),
        ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "slurm"),
        ("hydra/launcher=slurm_ddp", "hydra_plugins.hydra_submitit_launcher", "slurm"),
        ("hydra/launcher=joblib", "hydra_plugins.hydra_joblib_launcher", "local"),
    ],
)
def test_a_launcher_without_its_extra_is_one_line(monkeypatch, capsys, override, module, extra):
    # the launcher's plugin as if not installed: an import of it fails, and so does find_spec
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delenv(cli.SWEEP_OWNER_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["prune-run", "-m", override, "seed=0,1"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"pip install 'prune-cli[{extra}]'" in err
    assert override in err


def test_an_installed_launcher_passes():
    extras.check_overrides(["hydra/launcher=local", "hydra/launcher=basic", "seed=1"])
