"""``adflora report``: turn run directories into a Markdown + HTML report."""

from __future__ import annotations


def report() -> None:
    """Write a report of run directories (not built yet)."""
    from adflora_analysis.errors import AdfloraError

    raise AdfloraError("reports are not built yet", "see issue 6")
