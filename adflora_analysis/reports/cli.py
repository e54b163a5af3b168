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
    style: str = typer.Option("screen", "--style", help="Figure preset: screen, "
                              "paper-column (3.5 in, 8 pt) or paper-text (7 in, 9 pt); "
                              "figures come as PNG, PDF (TrueType fonts) and SVG."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object: the report's "
                                 "files and the runs it read."),
) -> None:
    """Write OUT/report.md and OUT/index.html (opens from disk) from finished runs.

    Example: adflora report runs/bounds runs/smoke --out reports/study

    Comparison: adflora report runs/q01 runs/q02 --out reports/q --compare

    For a paper: adflora report runs/bounds --out reports/paper --style paper-column
    """
    from adflora_analysis.reports.api import make_report

    path = make_report(run_dirs, out, title=title, compare=compare, style=style)
    if as_json:
        import json

        typer.echo(json.dumps({"report": str(path), "out": str(out),
                               "runs": [str(r) for r in run_dirs], "style": style}))
        return
    typer.echo(f"report written: {path}")
