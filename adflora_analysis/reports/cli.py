"""``adflora report``: turn run directories into a Markdown + self-contained HTML report."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (synthetic, glue, sweep)."),
    out: Path = typer.Option(..., "--out", help="Folder for report.md, index.html, PNG, CSV."),
    title: str = typer.Option("adflora-analysis report", help="Report title."),
    compare: bool = typer.Option(None, "--compare/--no-compare", help="Draw runs whose "
                                 "configs differ in the same figures, labelled by the keys "
                                 "that differ (default: when all runs are of one kind and "
                                 "none is a sweep)."),
) -> None:
    """Write OUT/report.md and OUT/index.html (opens from disk) from finished runs.

    Example: adflora report runs/bounds runs/smoke --out reports/study

    Comparison: adflora report runs/q01 runs/q02 --out reports/q --compare
    """
    from adflora_analysis.reports.api import make_report

    path = make_report(run_dirs, out, title=title, compare=compare)
    typer.echo(f"report written: {path}")
