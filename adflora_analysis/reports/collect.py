"""Load run directories for a report: config, meta and the tidy tables each run wrote."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from adflora_analysis.errors import AdfloraError

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


def collect_run(path: str | Path) -> Run:
    """A run directory's tables for a report, read through the one run-directory owner
    (:func:`adflora_analysis.rundir.load_run`): a synthetic, GLUE or ``topology sweep`` run;
    anything else is an :class:`AdfloraError` naming the path."""
    from adflora_analysis.rundir import load_run

    p = Path(path)
    run = load_run(p)
    meta, config = run.meta, run.config
    sweep, metrics = run.table("sweep"), run.table("metrics")
    kind = {"sweep": "topology-sweep"}.get(run.kind, run.kind)
    if kind not in KINDS:
        if sweep is not None:
            kind = "topology-sweep"
        elif metrics is not None:
            kind = "glue" if "task" in config or run.table("eval") is not None else "synthetic"
        else:
            raise AdfloraError(f"{str(p)!r} holds no metrics or sweep table",
                               "pass a run directory that a run has written to")
    labels = None
    for name in ("label_counts.csv", "partition.csv"):
        if (p / name).exists():
            labels = pd.read_csv(p / name)
    return Run(p, kind, config, meta, metrics, run.table("eval"), sweep, labels)
