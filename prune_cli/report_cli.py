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
    parser = argparse.ArgumentParser(prog="prune-report", description=__doc__.splitlines()[0])
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
    collection = collect(args.dirs)
    if collection.runs.empty:
        print(
            "prune-report: error: no runs (no summary.json) under "
            + ", ".join(map(str, args.dirs)),
            file=sys.stderr,
        )
        sys.exit(2)
    if collection.completed.empty:
        # nothing to average: say why each run is out (and keep the list), but write no
        # report that would read as an empty result
        listed = write_left_out(collection, args.out)
        _say_left_out(listed)
        print(
            f"prune-report: error: nothing to report: 0 of {len(collection.runs)} runs "
            f"completed and could be read (listed in {args.out / LEFT_OUT_FILE})",
            file=sys.stderr,
        )
        sys.exit(2)
    index = write_report(collection, args.out, formats)
    listed = left_out(collection)
    _say_left_out(listed)
    note = ""
    if not listed.empty:
        counts = listed.status.value_counts().to_dict()
        kinds = ", ".join(f"{n} {status}" for status, n in counts.items())
        note = f" ({len(listed)} left out: {kinds}; listed in {args.out / LEFT_OUT_FILE})"
    print(f"{len(collection.completed)} completed of {len(collection.runs)} runs{note} -> {index}")


def _say_left_out(listed: pd.DataFrame) -> None:
    """One line per run no table counts, on stderr: a bad run is seen, not only in index.md."""
    for row in listed.itertuples(index=False):
        print(f"prune-report: left out {row.run}: {row.status}: {row.reason}", file=sys.stderr)


if __name__ == "__main__":
    main()
