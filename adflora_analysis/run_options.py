"""The command-line options every ``run`` command shares (``synthetic run``, ``glue run``),
declared once so the runners present one interface: where the run goes (``--out``,
``--resume DIR``, ``--overwrite``), how it reports progress, and ``--dry-run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
