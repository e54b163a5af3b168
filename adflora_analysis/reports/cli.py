"""``adflora report``: turn run directories into a Markdown + self-contained HTML report."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (synthetic, glue, sweep)."),
    out: Path = typer.Option(..., "--out", help="Folder for report.md, index.html, PNG, CSV."),
    title: str = typer.Option("adflora-analysis report", help="Report title."),
) -> None:
    """Write OUT/report.md and OUT/index.html (opens from disk) from finished runs.

    Example: adflora report runs/bounds runs/smoke --out reports/study
    """
    from adflora_analysis.reports.api import make_report

    path = make_report(run_dirs, out, title=title)
    typer.echo(f"report written: {path}")
