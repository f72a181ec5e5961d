"""Collect run directories into pandas tables: the read side of the results contract.

A run directory is any directory holding ``summary.json``; a multirun directory is searched
recursively. Runs that failed or are still running are listed but left out of the result tables.
Each run gets a ``label``: its method name plus the method settings that vary between runs of
that method (for example ``sap p=1.0 q=2.0``), except the pruning target (``ratio``,
``sparsity``), which becomes the ``target`` column. A run that trained only its dense level is
labelled ``dense``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from prune_cli.paths import RunPaths

#: method settings that are not part of a run's label
NOT_LABEL = {"name", "ignore", "ratio", "sparsity"}


@dataclass
class Collection:
    runs: pd.DataFrame  # one row per run: run, status, reason, dataset, model, method, label...
    levels: pd.DataFrame  # one row per run and level, with the run's columns
    pqi: pd.DataFrame
    recall: pd.DataFrame
    sparsity: pd.DataFrame
    distortion: pd.DataFrame

    @property
    def completed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "completed"]


def find_runs(paths: list[Path]) -> list[Path]:
    found: set[Path] = set()
    for path in paths:
        path = Path(path)
        if (path / "summary.json").is_file():
            found.add(path)
        elif path.is_dir():
            found.update(p.parent for p in path.rglob("summary.json"))
    return sorted(found)


def _damaged(root: Path, files: dict) -> str | None:
    """Why a completed run's level files are not as it wrote them (sizes only: cheap)."""
    for name, recorded in files.items():
        path = root / name
        if not path.is_file():
            return f"{name} is missing"
        if isinstance(recorded, dict) and path.stat().st_size != recorded.get("bytes"):
            return f"{name} is truncated"
    return None


def _read_run(root: Path) -> dict:
    paths = RunPaths(root)
    try:
        summary = json.loads(paths.summary.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"run": str(root), "status": "unreadable", "reason": str(exc)}
    if not isinstance(summary, dict):
        return {"run": str(root), "status": "unreadable", "reason": "summary is not a mapping"}
    if summary.get("status") == "completed" and isinstance(summary.get("files"), dict):
        damage = _damaged(root, summary["files"])
        if damage is not None:
            summary = {**summary, "status": "damaged", "reason": damage}
    method_cfg: dict = {}
    if paths.config.exists():
        method_cfg = (yaml.safe_load(paths.config.read_text()) or {}).get("method", {}) or {}
    return {
        "run": str(root),
        "status": summary.get("status", "unknown"),
        "reason": summary.get("reason"),
        "dataset": summary.get("dataset"),
        "model": summary.get("model"),
        "method": summary.get("method"),
        "seed": summary.get("seed"),
        "method_cfg": method_cfg,
        "levels": summary.get("levels", []),
    }


def _is_dense(run: dict) -> bool:
    """A run that only trained its dense level 0 (a ``dense_from`` source, a baseline)."""
    levels = run.get("levels", [])
    return len(levels) == 1 and levels[0].get("sparsity", 0) == 0


def _labels(runs: list[dict]) -> None:
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        if _is_dense(r):
            r["label"], r["target"] = "dense", None
            continue
        by_method.setdefault(r.get("method") or "?", []).append(r)
    for method, group in by_method.items():
        keys = sorted({k for r in group for k in r.get("method_cfg", {})} - NOT_LABEL)
        varying = [
            k
            for k in keys
            if len({json.dumps(r["method_cfg"].get(k), sort_keys=True) for r in group}) > 1
        ]
        for r in group:
            extra = " ".join(f"{k}={r['method_cfg'].get(k)}" for k in varying)
            r["label"] = f"{method} {extra}".strip()
            cfg = r.get("method_cfg", {})
            r["target"] = cfg.get("ratio")


def _csv(root: str, name: str) -> pd.DataFrame:
    path = Path(root) / name
    if not path.exists():
        return pd.DataFrame()
    frame = pd.read_csv(path)
    frame.insert(0, "run", root)
    return frame


def collect(paths: list[Path]) -> Collection:
    runs = [_read_run(p) for p in find_runs(paths)]
    _labels(runs)
    columns = ["run", "status", "reason", "dataset", "model", "method", "label", "target", "seed"]
    run_frame = pd.DataFrame([{k: r.get(k) for k in columns} for r in runs], columns=columns)
    done = [r for r in runs if r["status"] == "completed"]
    info = run_frame.set_index("run")[["dataset", "model", "method", "label", "target", "seed"]]
    level_rows = [{"run": r["run"], **lv} for r in done for lv in r["levels"]]
    levels = pd.DataFrame(level_rows)
    if not levels.empty:
        levels = levels.join(info, on="run")
        levels["remaining"] = 1.0 - levels["sparsity"]

    def gather(name: str) -> pd.DataFrame:
        frames = [f for f in (_csv(r["run"], name) for r in done) if not f.empty]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True).join(info, on="run")

    return Collection(
        runs=run_frame,
        levels=levels,
        pqi=gather("pqi.csv"),
        recall=gather("per_class_recall.csv"),
        sparsity=gather("sparsity.csv"),
        distortion=gather("recall_distortion.csv"),
    )
