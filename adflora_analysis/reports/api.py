"""Public entry point of the report layer."""

from __future__ import annotations

from pathlib import Path

from adflora_analysis.reports.build import report_sections
from adflora_analysis.reports.collect import load_run
from adflora_analysis.reports.render import write_report


def _checks_fn():
    """The synthetic layer's theory checks for reports, if that layer provides them."""
    from adflora_analysis.reports.checks import report_checks

    return report_checks


def make_report(run_dirs: list[str | Path], out: str | Path,
                title: str = "adflora-analysis report") -> Path:
    """Write ``out/report.md`` and ``out/index.html`` for ``run_dirs``; return the HTML path."""
    runs = [load_run(p) for p in run_dirs]
    preamble = [f"Runs: {', '.join(str(r.path) for r in runs)}."]
    return write_report(out, title, report_sections(runs, _checks_fn()), preamble)
