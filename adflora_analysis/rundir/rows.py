"""Row files: ``<table>.jsonl`` (appended every round, its first line a header holding the
run's config hash) and ``<table>.parquet`` (the same rows, written at the end)."""

from __future__ import annotations

import json
from collections import Counter
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


# ---------------------------------------------------------------- before a resume trusts rows
def _verify_header(path: Path, fingerprint: str | None) -> None:
    """Refuse a row file whose header line names another run's config hash (or has none,
    while this run records one)."""
    if fingerprint is None or not path.exists():
        return
    head = fileio.jsonl_header(path) or {}
    if head.get("config_hash") != fingerprint:
        what = (f"rows of a run with another config (hash {head['config_hash']}, this run "
                f"{fingerprint})" if head.get("config_hash") else
                "rows without this run's fingerprint (no header line)")
        raise AdfloraError(f"cannot resume: {str(path)!r} holds {what}",
                           "restore the run's own file, or start again with --overwrite")


def verify_table(path: Path, fingerprint: str | None) -> None:
    """Before a resume trusts an extra table (e.g. ``eval.jsonl``): this run's header and no
    line present twice."""
    _verify_header(path, fingerprint)
    rows, _ = fileio.scan_jsonl(path)
    seen = Counter(json.dumps(r, sort_keys=True) for r in rows)
    twice = [k for k, c in seen.items() if c > 1]
    if twice:
        raise AdfloraError(f"cannot resume: {str(path)!r} holds a row {len(twice)} time(s) "
                           "more than once", "restore the file, or start again with "
                           "--overwrite")


def verify_rows(path: Path, jobs: list[tuple[str, list[int]]], done: list[str],
                starts: dict[str, int], rounds: int, fingerprint: str | None = None) -> None:
    """Check the ``layer == "all"`` rows of ``metrics.jsonl`` before a resume trusts them:
    every seed of a finished job has rounds ``0 .. rounds-1`` and every seed of the other jobs
    rounds ``0 .. start-1`` (``jobs``: (key, seeds) pairs; ``starts``: the round its
    checkpoint resumes at), each exactly
    once, and no row belongs to another run's job. A damaged line before the last is refused
    by :func:`~adflora_analysis.fileio.scan_jsonl`. Anything else is one
    :class:`AdfloraError` naming the damage and the last intact round."""
    _verify_header(path, fingerprint)
    rows, _ = fileio.scan_jsonl(path)
    keys = {key for key, _ in jobs}
    every = Counter((r.get("job"), r.get("seed"), r.get("round"), r.get("layer"))
                    for r in rows)
    twice = [k for k, c in every.items() if c > 1]
    if twice:
        j, s_, t, layer = twice[0]
        raise AdfloraError(f"cannot resume: {path.name} holds round {t} of job {j!r}, seed "
                           f"{s_}, layer {layer} more than once ({len(twice)} duplicated "
                           "rows)", "restore the file, or start again with --overwrite")
    seen = Counter((r.get("job"), r.get("seed"), r.get("round")) for r in rows
                   if r.get("layer", "all") == "all")
    stray = sorted({str(r.get("job")) for r in rows} - keys)
    if stray:
        raise AdfloraError(f"{str(path)!r} holds rows of job(s) {', '.join(stray)} that this "
                           "run does not have", "start again with --overwrite, or into a new "
                           "--out")
    for key, seeds in jobs:
        need = rounds if key in done else starts.get(key, 0)
        for t in range(need):
            bad = [(s, seen[(key, s, t)]) for s in seeds if seen[(key, s, t)] != 1]
            if bad:
                s, c = bad[0]
                what = "missing" if c == 0 else f"present {c} times"
                raise AdfloraError(
                    f"cannot resume: {path.name} has round {t} of job {key!r}, seed {s} "
                    f"{what}; rows are intact up to round {t - 1}" if t else
                    f"cannot resume: {path.name} has round 0 of job {key!r}, seed {s} "
                    f"{what}", "restore the file, or start again with --overwrite")
