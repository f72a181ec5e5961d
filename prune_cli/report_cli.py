"""The ``prune-report`` command: turn run directories into tables, plots and an index page.

prune-report outputs/multirun/2026-11-22_10-00-00 outputs/runs/... -o reports/mine

Runs that failed, were interrupted, are still running, or whose files are damaged or hold
what prune-run never writes are left out of every table: each is named on stderr with its
reason and listed in ``runs_left_out.csv``. The exit status is 0 when at least one run is
reported, 2 when none could be (or the input is wrong).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from prune_cli.reporting.collect import collect
from prune_cli.reporting.report import LEFT_OUT_FILE, left_out, write_left_out, write_report


def main(argv: list[str] | None = None) -> None:
    # the docstring's RST markup (``prune-report``) is for the API docs, not the terminal
    description = __doc__.splitlines()[0].replace("``", "")
    parser = argparse.ArgumentParser(prog="prune-report", description=description)
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("outputs/report"),
        help="report folder (default: outputs/report)",
    )
    parser.add_argument(
        "--formats",
        default="png,pdf",
        help="figure formats, comma-separated (default: png,pdf; PNG is always written)",
    )
    args = parser.parse_args(argv)
    formats = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    unknown = [f for f in formats if f not in ("png", "pdf", "svg")]
    if unknown:
        print(
            f"prune-report: error: unknown figure format {unknown[0]!r} (png, pdf, svg)",
            file=sys.stderr,
        )
        sys.exit(2)
    missing = [str(d) for d in args.dirs if not d.exists()]
    if missing:
        print(f"prune-report: error: no such directory: {', '.join(missing)}", file=sys.stderr)
        sys.exit(2)
    problem = not_a_folder(args.out)
    if problem:
        print(f"prune-report: error: -o {args.out}: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        _report(args.dirs, args.out, formats)
    except OSError as exc:  # a folder that cannot be written (permissions, a full disk)
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"prune-report: error: cannot write the report{where}: {exc.strerror or exc}; "
            "choose another folder with -o",
            file=sys.stderr,
        )
        sys.exit(2)


def not_a_folder(out: Path) -> str | None:
    """Why ``out`` cannot be (made into) a folder: it, or a folder above it, is a file. Checked
    before anything is read or written, so that a wrong ``-o`` creates nothing."""
    for path in (out, *out.parents):
        if path.exists() or path.is_symlink():
            if path.is_dir():
                return None
            what = "it" if path == out else str(path)
            return f"{what} exists and is not a folder; give a folder for the report (-o DIR)"
    return None


def _report(dirs: list[Path], out: Path, formats: tuple[str, ...]) -> None:
    """Collect the runs under ``dirs`` and write the report into ``out``."""
    collection = collect(dirs)
    if collection.runs.empty:
        print(
            "prune-report: error: no runs (no summary.json) under " + ", ".join(map(str, dirs)),
            file=sys.stderr,
        )
        sys.exit(2)
    if collection.completed.empty:
        # nothing to average: say why each run is out (and keep the list), but write no
        # report that would read as an empty result
        listed = write_left_out(collection, out)
        _say_left_out(listed)
        print(
            f"prune-report: error: nothing to report: 0 of {len(collection.runs)} runs "
            f"completed and could be read (listed in {out / LEFT_OUT_FILE})",
            file=sys.stderr,
        )
        sys.exit(2)
    index = write_report(collection, out, formats)
    listed = left_out(collection)
    _say_left_out(listed)
    note = ""
    if not listed.empty:
        counts = listed.status.value_counts().to_dict()
        kinds = ", ".join(f"{n} {status}" for status, n in counts.items())
        note = f" ({len(listed)} left out: {kinds}; listed in {out / LEFT_OUT_FILE})"
    print(f"{len(collection.completed)} completed of {len(collection.runs)} runs{note} -> {index}")


def _say_left_out(listed: pd.DataFrame) -> None:
    """One line per run no table counts, on stderr: a bad run is seen, not only in index.md."""
    for row in listed.itertuples(index=False):
        print(f"prune-report: left out {row.run}: {row.status}: {row.reason}", file=sys.stderr)


if __name__ == "__main__":
    main()
