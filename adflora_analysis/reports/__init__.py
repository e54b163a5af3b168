"""Reports: run directories -> Markdown + self-contained HTML with seaborn figures."""

from adflora_analysis.reports.api import make_report

__all__ = ["make_report"]
