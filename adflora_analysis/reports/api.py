"""Public entry point of the report layer."""

from __future__ import annotations

from pathlib import Path

from adflora_analysis.reports.build import report_sections
from adflora_analysis.reports.collect import collect_run
from adflora_analysis.reports.render import write_report


def _checks_fn():
    """The synthetic layer's theory checks for reports, if that layer provides them."""
    from adflora_analysis.reports.checks import report_checks

    return report_checks


def make_report(run_dirs: list[str | Path], out: str | Path,
                title: str = "adflora-analysis report", compare: bool | None = None,
                note: str | None = None) -> Path:
    """Write ``out/report.md`` and ``out/index.html`` for ``run_dirs``; return the HTML path.

    ``compare``: draw runs of one kind whose configs differ in the same figures, labelled by
    the keys that differ (default: when every run is of one kind and none is a sweep).
    ``note``: a sentence for the opening summary (e.g. "Demo setting: ...").
    """
    from adflora_analysis.progress import status
    from adflora_analysis.reports.build import summary_lines

    with status(f"report: loading {len(run_dirs)} run(s)"):
        runs = [collect_run(p) for p in run_dirs]
    with status("report: theory checks and figures"):
        sections = report_sections(runs, _checks_fn(), compare=compare)
    bad = [f"{r.name} is {r.meta.get('status')}"
           + (f" ({r.meta.get('error')})" if r.meta.get("error") else "")
           for r in runs if r.meta.get("status") not in (None, "done")]
    banner = ("Not a finished result: " + "; ".join(bad) + ".") if bad else None
    preamble = [f"Runs: {', '.join(str(r.path) for r in runs)}."]
    with status(f"report: writing {out}"):
        return write_report(out, title, sections, preamble,
                            summary=summary_lines(runs, sections, note), banner=banner)
