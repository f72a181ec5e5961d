"""The ``prune-report`` command: turn run directories into tables, plots and an index page.

prune-report outputs/multirun/2026-11-22_10-00-00 outputs/runs/... -o reports/mine
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prune_cli.reporting.collect import collect
from prune_cli.reporting.report import write_report


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
    index = write_report(collection, args.out, formats)
    unreadable = int((collection.runs.status == "unreadable").sum())
    note = f" ({unreadable} unreadable: see the index)" if unreadable else ""
    print(f"{len(collection.completed)} completed of {len(collection.runs)} runs{note} -> {index}")


if __name__ == "__main__":
    main()
