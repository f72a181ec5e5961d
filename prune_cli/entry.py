"""The console scripts' entry points: ``prune-run``, ``prune-report`` and ``prune-export``.

Each command's module imports torch, Hydra or pandas, which takes seconds; a Ctrl-C in those
seconds used to end in a 22-line ``KeyboardInterrupt`` traceback from inside an import. These
entry points import the command inside a guard, so an interrupt before the command has begun
is one line and exit status 130 (128 + the signal, as a shell reports it), and so is an
interrupt that escapes the command itself (a second Ctrl-C while the first is being recorded).
This module imports nothing but the standard library, so the guard is in place at once.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
from collections.abc import Callable


def silence_signals() -> None:
    """Ignore further Ctrl-C, SIGTERM and SIGHUP: the command is ending, and a second signal
    must not turn the one line into a traceback or the exit status into -2."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        # outside the main thread no handler can be set: there is nothing to silence
        if hasattr(signal, name):
            with contextlib.suppress(ValueError, OSError):
                signal.signal(getattr(signal, name), signal.SIG_IGN)


def _status(exc: KeyboardInterrupt) -> int:
    """128 + the signal that ended the command (``io.SignalInterrupt`` carries its number)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def guarded(command: str, module: str) -> None:
    """Import ``module`` and run its ``main``, with one line for an interrupt either side."""
    try:
        main: Callable[[], None] = importlib.import_module(module).main
    except KeyboardInterrupt as exc:
        silence_signals()
        print(f"{command}: interrupted while starting; nothing was written", file=sys.stderr)
        sys.exit(_status(exc))
    try:
        main()
    except KeyboardInterrupt as exc:  # the commands end their own interrupts; this one escaped
        silence_signals()
        print(
            f"{command}: interrupted; re-run the same command to resume what it had begun",
            file=sys.stderr,
        )
        sys.exit(_status(exc))


def prune_run() -> None:
    guarded("prune-run", "prune_cli.cli")


def prune_report() -> None:
    guarded("prune-report", "prune_cli.report_cli")


def prune_export() -> None:
    guarded("prune-export", "prune_cli.export_cli")
