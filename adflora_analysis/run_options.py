"""The command-line options every ``run`` command shares (``synthetic run``, ``glue run``),
declared once so the runners present one interface: where the run goes (``--out``,
``--resume DIR``, ``--overwrite``), how it reports progress, and ``--dry-run``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

Out = Annotated[Path | None, typer.Option(
    "--out", help="Run directory to create (new or empty).")]
Resume = Annotated[Path | None, typer.Option(
    "--resume", help="Continue the run in this directory (its config.toml is used; a CONFIG "
    "or overrides that differ are refused, naming the keys).")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace the earlier run in --out (removes only the files adflora "
    "wrote there).")]
Progress = Annotated[bool | None, typer.Option(
    "--progress/--no-progress", help="A live bar (default: only on a terminal; otherwise a "
    "line per job start/end and every tenth of the rounds; --no-progress: the job lines only).")]
DryRun = Annotated[bool, typer.Option(
    "--dry-run", help="Print the resolved config (after overrides) and the jobs it would run; "
    "write nothing.")]
Track = Annotated[list[str] | None, typer.Option(
    "--track", metavar="tensorboard|mlflow", help="Log every round live (repeatable): "
    "tensorboard (event files in <run>/tb or --logdir), mlflow (an offline file store in "
    "<run>/mlruns; needs the extra adflora-analysis[mlflow]).")]
Logdir = Annotated[Path | None, typer.Option(
    "--logdir", help="Where --track tensorboard writes (default <run>/tb).")]


def print_summary(summary: Any, where: Path, as_json: bool) -> None:
    """A run's summary table (pandas) on stdout, as text or as one JSON object
    ``{"run_dir", "summary": [records]}``; then ``wrote DIR`` on stderr (GLUE and lm runs)."""
    if as_json:
        import json

        records = json.loads(summary.to_json(orient="records")) if not summary.empty else []
        print(json.dumps({"run_dir": str(where), "summary": records}))
    elif not summary.empty:
        import pandas as pd

        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {where}", file=sys.stderr)
