"""Run every registered method bare on the demo and print the README's Markdown table.

    python scripts/bare_methods.py                   # all methods, one run at a time
    python scripts/bare_methods.py --methods grda dns --out outputs/bare
    python scripts/bare_methods.py --readme          # also fill the README method table's column

Each method runs as ``prune-run method=NAME progress=false hydra.run.dir=OUT/NAME`` (LeNet-5 on
the bundled digits with the method's own defaults: its YAML may select a train preset). A
finished run in OUT is shown, not retrained, so running this again only re-reads the results.
The dense reference is level 0 of the ``magnitude`` run (every level-based method trains the same
dense model first); gRDA and GMP have no dense level, their only level is the sparse model.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prune_cli.config import group_options  # noqa: E402


def command(method: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "prune_cli.cli",
        f"method={method}",
        "progress=false",
        f"hydra.run.dir={out / method}",
    ]


def run(method: str, out: Path) -> dict:
    summary = out / method / "summary.json"
    start = time.monotonic()
    proc = subprocess.run(command(method, out), cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not summary.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise SystemExit(f"method={method} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    print(f"{method}: {time.monotonic() - start:.0f} s", file=sys.stderr)
    return json.loads(summary.read_text())


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def table(summaries: dict[str, dict]) -> str:
    dense = summaries.get("magnitude", {}).get("levels", [{}])[0].get("test_accuracy")
    lines = [
        "| method | levels | final sparsity | test accuracy | vs dense |",
        "|---|---|---|---|---|",
    ]
    for method, s in summaries.items():
        last = s["levels"][-1]
        delta = "" if dense is None else f"{100 * (last['test_accuracy'] - dense):+.1f}"
        lines.append(
            f"| `{method}` | {len(s['levels']) - 1} | {pct(last['sparsity'])} "
            f"| {pct(last['test_accuracy'])} | {delta} |"
        )
    if dense is not None:
        lines.append(f"| dense (level 0 of `magnitude`) | 0 | 0.0% | {pct(dense)} | |")
    return "\n".join(lines)


README = ROOT / "README.md"
HEADER = "| method | what it does | paper |"
COLUMN = "bare demo: sparsity, test accuracy"
NOTE = "The last column:"


def cell(summary: dict) -> str:
    last = summary["levels"][-1]
    return f"{pct(last['sparsity'])}, {pct(last['test_accuracy'])}"


def find(node: object, suffix: str) -> object:
    """The first value under a key ending in ``suffix`` anywhere in a summary (None if none)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if str(key).endswith(suffix) and not isinstance(value, (dict, list)):
                return value
            found = find(value, suffix)
            if found is not None:
                return found
    elif isinstance(node, list):
        for value in reversed(node):  # the last level first
            found = find(value, suffix)
            if found is not None:
                return found
    return None


def cpu_name() -> str:
    """This machine's CPU model as the kernel names it (the digits depend on it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def update_readme(summaries: dict[str, dict]) -> None:
    """Fill the method table's last column from the runs, and the note under the table."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    lines[start] = f"{HEADER} {COLUMN} |"
    lines[start + 1] = "|---|---|---|---|"
    end = start + 2
    while end < len(lines) and lines[end].startswith("|"):
        cells = lines[end].split(" | ")
        methods = [m for m in re.findall(r"`(\w+)`", cells[0]) if m in summaries]
        if len(methods) == 1:
            value = cell(summaries[methods[0]])
        else:
            value = "; ".join(f"`{m}` {cell(summaries[m])}" for m in methods)
        lines[end] = " | ".join(cells[:3]).rstrip(" |") + f" | {value} |"
        end += 1
    dense = summaries["magnitude"]["levels"][0]["test_accuracy"]
    threads = sorted({str(s.get("threads")) for s in summaries.values()})
    correlation = find(summaries.get("crossword", {}), "objective_accuracy_spearman")
    note = (
        f"{NOTE} `prune-run method=NAME` with nothing else (LeNet-5 on digits, seed 0; the dense "
        f"model: {pct(dense)}), measured by `python scripts/bare_methods.py --readme`, which "
        f"wrote it on {date.today().isoformat()} on an {cpu_name()} with "
        f"{'/'.join(threads)} torch thread(s). Other CPUs and thread counts sum floats in "
        "another order and give other digits (a run repeats bit for bit only on the same CPU "
        "and thread count), so read the column for what each method does, not for its last "
        "decimal. `grda` and `dns` train with their own presets (`train=grda_demo`, "
        "`train=dns_demo`), which their YAML selects. Random pruning collapses at 90%: that is "
        "its finding. `crossword` chooses by its objective, not by accuracy: `summary.json` "
        "gives the objective-vs-pruned-accuracy correlation over the candidates it measured"
        + (f" ({correlation:.2f} here)" if isinstance(correlation, float) else "")
        + ". `limit` trains densely and measures: its predicted and actual limits are in "
        "`summary.json`. `sapp` and `block_magnitude` keep layers of fewer than `min_blocks` "
        "blocks dense, so their real sparsity is below the nominal 90%."
    )
    if end + 1 < len(lines) and lines[end + 1].startswith(NOTE):
        lines[end + 1] = note
    else:
        lines[end:end] = ["", note]
    README.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bare")
    parser.add_argument("--methods", nargs="+", default=group_options("method"))
    parser.add_argument("--readme", action="store_true", help="fill README.md's method table")
    args = parser.parse_args()
    out = args.out.resolve()
    methods = list(args.methods)
    if "magnitude" not in methods:  # the dense reference
        methods.insert(0, "magnitude")
    summaries = {m: run(m, out) for m in methods}
    print(table(summaries))
    if args.readme:
        update_readme(summaries)


if __name__ == "__main__":
    main()
