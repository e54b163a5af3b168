"""Reports: run directories -> Markdown + self-contained HTML with seaborn figures."""

__all__ = ["make_report"]


def __getattr__(name: str):  # pandas/matplotlib load on first use (``adflora report --help``)
    if name == "make_report":
        from adflora_analysis.reports.api import make_report

        return make_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
