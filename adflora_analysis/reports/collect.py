"""Load run directories for a report: config, meta and the tidy tables each run wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from adflora_analysis.config import read_toml
from adflora_analysis.errors import AdfloraError
from adflora_analysis.fileio import read_jsonl

KINDS = ("synthetic", "glue", "topology-sweep")


@dataclass
class Run:
    """One run directory. ``kind`` is ``synthetic``, ``glue`` or ``topology-sweep``."""

    path: Path
    kind: str
    config: dict
    meta: dict
    metrics: pd.DataFrame | None = None
    eval: pd.DataFrame | None = None
    sweep: pd.DataFrame | None = None
    labels: pd.DataFrame | None = None

    @property
    def name(self) -> str:
        return self.path.name


def _table(path: Path, stem: str) -> pd.DataFrame | None:
    pq = path / f"{stem}.parquet"
    if pq.exists():
        return pd.read_parquet(pq)
    rows = read_jsonl(path / f"{stem}.jsonl")  # a run still going, or stopped early
    return pd.DataFrame(rows) if rows else None


def load_run(path: str | Path) -> Run:
    """Read a run directory written by ``adflora synthetic run``, ``glue run`` or
    ``topology sweep``; anything else is an :class:`AdfloraError` naming the path."""
    p = Path(path)
    if not p.is_dir():
        raise AdfloraError(f"run directory {str(p)!r} does not exist",
                           "pass a directory written with --out")
    meta = json.loads((p / "meta.json").read_text()) if (p / "meta.json").exists() else {}
    config = read_toml(p / "config.toml") if (p / "config.toml").exists() else {}
    sweep = _table(p, "sweep")
    metrics = _table(p, "metrics")
    if meta.get("kind") in KINDS:
        kind = meta["kind"]
    elif sweep is not None:
        kind = "topology-sweep"
    elif metrics is not None:
        kind = "glue" if "task" in config or (p / "eval.parquet").exists() or (
            p / "eval.jsonl").exists() else "synthetic"
    else:
        raise AdfloraError(f"{str(p)!r} holds no metrics or sweep table",
                           "pass a run directory that a run has written to")
    labels = None
    for name in ("label_counts.csv", "partition.csv"):
        if (p / name).exists():
            labels = pd.read_csv(p / name)
    return Run(p, kind, config, meta, metrics, _table(p, "eval"), sweep, labels)
