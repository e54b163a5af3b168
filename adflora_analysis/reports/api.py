"""Public entry point of the report layer."""

from __future__ import annotations

from pathlib import Path

from adflora_analysis.reports.build import report_sections
from adflora_analysis.reports.collect import Run, collect_run
from adflora_analysis.reports.outputs import (
    REPORT_FILES,
    check_folder,
    interruptible,
    report_folder,
)
from adflora_analysis.reports.render import layout, write_report
from adflora_analysis.rundir import os_error

__all__ = ["REPORT_FILES", "make_report", "partial_banner"]


def _checks_fn():
    """The synthetic layer's theory checks for reports, if that layer provides them."""
    from adflora_analysis.reports.checks import report_checks

    return report_checks


def partial_banner(runs: list[Run]) -> str | None:
    """The warning above a report of runs that did not finish (None if all did): each such
    run's status (a killed run is ``stopped``) and the rounds its files cover.

    >>> import pandas as pd
    >>> r = Run(Path("q"), "synthetic", {"rounds": 8}, {}, pd.DataFrame({"round": [0, 1, 2]}),
    ...         status="stopped")
    >>> print(partial_banner([r]))  # doctest: +NORMALIZE_WHITESPACE
    Not a finished result: q is stopped (partial: rounds 0–2 of 8 written). Figures, tables
    and verdicts cover only the rounds written.
    """
    bad = []
    for r in runs:
        if r.status in ("done", "unknown"):
            continue
        got = r.rounds()
        cover = ("no rounds written" if got is None else
                 f"rounds 0–{got[0]}" + (f" of {got[1]}" if got[1] > 0 else "") + " written")
        err = r.meta.get("error")
        bad.append(f"{r.name} is {r.status} (partial: {cover})"
                   + (f" ({' '.join(str(err).split())[:200]})" if err else ""))
    if not bad:
        return None
    return ("Not a finished result: " + "; ".join(bad) + ". Figures, tables and verdicts cover "
            "only the rounds written.")


def make_report(run_dirs: list[str | Path], out: str | Path,
                title: str = "adflora-analysis report", compare: bool | None = None,
                note: str | None = None, style: str = "screen") -> Path:
    """Write ``out/report.md`` and ``out/index.html`` for ``run_dirs``; return the HTML path.

    ``compare``: draw runs of one kind whose configs differ in the same figures, labelled by
    the keys that differ (default: when every run is of one kind and none is a sweep).
    ``note``: a sentence for the opening summary (e.g. "Demo setting: ...").
    ``style``: the figures' preset: ``screen`` (the default), ``paper-column`` (3.5 in wide,
    8 pt) or ``paper-text`` (7 in, 9 pt); every figure is also written as PDF (TrueType
    fonts) and SVG, every table as LaTeX. matplotlib's rcParams and backend are left as they
    were (figures are drawn inside ``rc_context``, never through pyplot).

    ``out`` must be new, empty, or hold only an earlier report's files (see
    :mod:`adflora_analysis.reports.outputs`); a run that did not finish gets a "partial"
    banner; a damaged file in a run directory, a full disk or a read-only folder is one
    :class:`~adflora_analysis.errors.AdfloraError` line, and an interrupted report leaves no
    temp file.
    """
    from adflora_analysis.progress import status
    from adflora_analysis.reports.build import report_verdict, summary_lines
    from adflora_analysis.reports.figures import check_style
    from adflora_analysis.reports.figures import style as figure_style

    check_style(style)   # a typo is one line before any work
    out = Path(out)
    keep = [Path(p) for p in run_dirs]
    try:
        check_folder(out, keep)   # before any work
    except OSError as e:
        raise os_error(out, e) from None
    with interruptible("report"), figure_style(style):
        with status(f"report: loading {len(run_dirs)} run(s)"):
            runs = [collect_run(p) for p in run_dirs]
        with status("report: theory checks and figures"):
            sections = report_sections(runs, _checks_fn(), compare=compare)
        banner = partial_banner(runs)
        preamble = [f"Runs: {', '.join(str(r.path) for r in runs)}."]
        with status(f"report: writing {out}"):
            try:
                with report_folder(out, layout(sections).files(), keep):
                    return write_report(out, title, sections, preamble,
                                        summary=summary_lines(runs, sections, note),
                                        banner=banner,
                                        verdict=report_verdict(runs, sections))
            except OSError as e:
                raise os_error(out, e) from None
