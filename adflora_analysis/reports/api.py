"""Public entry point of the report layer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from adflora_analysis import fileio
from adflora_analysis.errors import AdfloraError
from adflora_analysis.reports.build import report_sections
from adflora_analysis.reports.collect import collect_run
from adflora_analysis.reports.render import write_report
from adflora_analysis.rundir import RunDir, os_error, read_json


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

    if Path(out).exists() and not Path(out).is_dir():   # before any work
        raise AdfloraError(f"--out {str(out)!r} is a file, not a folder",
                           "choose a new folder path")
    with status(f"report: loading {len(run_dirs)} run(s)"):
        runs = [collect_run(p) for p in run_dirs]
    with status("report: theory checks and figures"):
        sections = report_sections(runs, _checks_fn(), compare=compare)
    bad = []
    for r in runs:   # the run directory's own status: a killed run says "stopped"
        st = RunDir(r.path, writer=False).status
        if st not in ("done", "unknown"):
            bad.append(f"{r.name} is {st}"
                       + (f" ({r.meta.get('error')})" if r.meta.get("error") else ""))
    banner = ("Not a finished result: " + "; ".join(bad) + ".") if bad else None
    preamble = [f"Runs: {', '.join(str(r.path) for r in runs)}."]
    with status(f"report: writing {out}"), report_outputs(out):
        return write_report(out, title, sections, preamble,
                            summary=summary_lines(runs, sections, note), banner=banner)


REPORT_FILES = "report_files.json"


@contextlib.contextmanager
def report_outputs(out: str | Path) -> Iterator[Path]:
    """The folder a report writes into: a previous report there is replaced completely (the
    files it listed in ``report_files.json`` are removed first, nothing else), and the files
    this report writes are listed for the next one. ``out`` naming a file is one line.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with report_outputs(d):
    ...     _ = (d / "figures").mkdir(), (d / "figures" / "old.png").write_text("x")
    >>> (d / "mine.txt").write_text("user")
    4
    >>> with report_outputs(d):
    ...     pass
    >>> sorted(p.name for p in d.rglob("*") if p.is_file())
    ['mine.txt', 'report_files.json']
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AdfloraError(f"--out {str(out)!r} is a file, not a folder",
                           "choose a new folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(out, e) from None
    listed = out / REPORT_FILES
    if listed.exists():
        for rel in read_json(listed, REPORT_FILES):
            f = (out / rel).resolve()
            if out.resolve() in f.parents and f.is_file():
                f.unlink()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    yield out
    written = [p for p in out.rglob("*") if p.is_file() and p != listed
               and before.get(p) != p.stat().st_mtime_ns]
    fileio.write_json(listed, sorted(str(p.relative_to(out)) for p in written))
