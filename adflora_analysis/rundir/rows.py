"""Row files: ``<table>.jsonl`` (appended every round, its first line a header holding the
run's config hash) and ``<table>.parquet`` (the same rows, written at the end)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adflora_analysis import fileio
from adflora_analysis.errors import AdfloraError


def table_files(folder: Path, stem: str) -> tuple[Path, Path]:
    """``(<stem>.parquet, <stem>.jsonl)`` inside ``folder``."""
    return folder / f"{stem}.parquet", folder / f"{stem}.jsonl"


def has_table(folder: Path, stem: str) -> bool:
    """True if ``folder`` holds ``<stem>.parquet`` or ``<stem>.jsonl``."""
    return any(p.exists() for p in table_files(folder, stem))


def read_rows(folder: Path, stem: str) -> list[dict[str, Any]]:
    """The rows of ``<stem>.jsonl`` (header line left out; a torn last line is dropped, damage
    before it is one :class:`AdfloraError`); ``[]`` if the file does not exist.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> fileio.append_jsonl(d / "metrics.jsonl", [{"round": 0}], header={"config_hash": "h"})
    >>> read_rows(d, "metrics"), read_rows(d, "eval")
    ([{'round': 0}], [])
    """
    return fileio.read_jsonl(table_files(folder, stem)[1])


def read_table(folder: Path, stem: str):
    """``<stem>.parquet`` as a DataFrame, else the rows of ``<stem>.jsonl`` (a run still going
    or stopped), else None; a damaged Parquet file is an :class:`AdfloraError`."""
    import pandas as pd

    pq, _ = table_files(folder, stem)
    if pq.exists():
        try:
            return pd.read_parquet(pq)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types
            raise AdfloraError(f"{str(pq)!r} is damaged ({type(e).__name__})",
                               f"delete it to fall back to {stem}.jsonl, or re-run") \
                from None
    rows = read_rows(folder, stem)
    return pd.DataFrame(rows) if rows else None
