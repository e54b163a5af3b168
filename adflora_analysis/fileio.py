"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Each writer writes to a temporary file in the destination's folder, flushes and fsyncs it, then
renames it over the destination (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "x.txt") as tmp:
    ...     _ = tmp.write_text("hi")
    >>> (d / "x.txt").read_text()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() honours the umask
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    """The process umask (read from /proc on Linux; elsewhere set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fileobj)`` on a binary temp file, then rename it to ``path``.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "out.bin"
    >>> atomic_write(p, lambda f: f.write(b"abc")).read_bytes()
    b'abc'
    >>> atomic_write(p, lambda f: 1 / 0)  # a failed write leaves the old file
    Traceback (most recent call last):
    ZeroDivisionError: division by zero
    >>> p.read_bytes(), [q.name for q in p.parent.iterdir()]
    (b'abc', ['out.bin'])
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    >>> import tempfile
    >>> write_text(Path(tempfile.mkdtemp()) / "a" / "note.txt", "ok\\n").read_text()  # makes dirs
    'ok\\n'
    """
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars become floats).

    >>> import tempfile
    >>> p = write_json(Path(tempfile.mkdtemp()) / "meta.json", {"p": 0.366, "seeds": [0, 1]})
    >>> json.loads(p.read_text())
    {'p': 0.366, 'seeds': [0, 1]}
    """
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_parquet(path: str | os.PathLike, df) -> Path:
    """Write a pandas DataFrame to Parquet atomically.

    >>> import tempfile
    >>> import pandas as pd
    >>> p = write_parquet(Path(tempfile.mkdtemp()) / "m.parquet", pd.DataFrame({"round": [0, 1]}))
    >>> pd.read_parquet(p)["round"].tolist()
    [0, 1]
    """
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def write_csv(path: str | os.PathLike, df) -> Path:
    """Write a pandas DataFrame to CSV atomically.

    >>> import tempfile
    >>> import pandas as pd
    >>> p = write_csv(Path(tempfile.mkdtemp()) / "s.csv", pd.DataFrame({"method": ["lora"]}))
    >>> p.read_text()
    'method\\nlora\\n'
    """
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` to ``path`` atomically.

    >>> import tempfile
    >>> import torch
    >>> p = save_torch(Path(tempfile.mkdtemp()) / "ck.pt", {"round": 4, "A": torch.ones(2)})
    >>> torch.load(p)["round"]
    4
    """
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_figure(path: str | os.PathLike, fig, **kwargs) -> Path:
    """Save a matplotlib figure atomically (format from the suffix)."""
    path = Path(path)
    kwargs.setdefault("dpi", 120)
    kwargs.setdefault("bbox_inches", "tight")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path


#: the key of a JSON-lines file's header line (its first line; see :func:`append_jsonl`)
HEADER = "adflora_rows"


def append_jsonl(path: str | os.PathLike, rows: list[dict],
                 header: dict | None = None) -> None:
    """Append rows to a JSON-lines file and fsync (whole lines only; see :func:`read_jsonl`).
    ``header``: written as the first line when the file is new or empty (``{HEADER: 1,
    **header}``, e.g. the run's config hash); readers skip it (:func:`jsonl_header` reads it).
    A symbolic link at ``path`` is never followed (an OSError).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> append_jsonl(p, [{"round": 0}], header={"config_hash": "ab12"})
    >>> append_jsonl(p, [{"round": 1}, {"round": 2}], header={"config_hash": "ab12"})
    >>> [r["round"] for r in read_jsonl(p)], jsonl_header(p)["config_hash"]
    ([0, 1, 2], 'ab12')
    """
    if not rows:
        return
    data = "".join(json.dumps(r, default=_json_default) + "\n" for r in rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if header is not None and os.fstat(fd).st_size == 0:
            data = json.dumps({HEADER: 1, **header}, default=_json_default) + "\n" + data
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def jsonl_header(path: str | os.PathLike) -> dict | None:
    """The header line of a JSON-lines file written by :func:`append_jsonl` (None if it has
    none, or the file does not exist)."""
    p = Path(path)
    if not p.exists():
        return None
    with open(p, "rb") as f:
        first = f.readline(1 << 20)
    try:
        row = json.loads(first.decode("utf-8"))
    except ValueError:
        return None
    return row if isinstance(row, dict) and HEADER in row else None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file, ignoring a torn last line left by a killed writer.

    A damaged line anywhere else is an :class:`~adflora_analysis.errors.AdfloraError` naming
    the file and line (rows after it would otherwise be lost without a word).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.jsonl"
    >>> _ = p.write_text('{"a": 1}\\n{"a": 2}\\n{"a"')
    >>> read_jsonl(p)
    [{'a': 1}, {'a': 2}]
    """
    return scan_jsonl(path)[0]


def scan_jsonl(path: str | os.PathLike) -> tuple[list[dict], int | None]:
    """``(rows, torn)``: the rows of a JSON-lines file and the number of the torn last line
    (None if the file ends cleanly). A damaged line before the last is an
    :class:`~adflora_analysis.errors.AdfloraError` naming it and the rows before it.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "m.jsonl"
    >>> _ = p.write_text('{"a": 1}\\n{"a": 2}\\n{"a"')
    >>> scan_jsonl(p)
    ([{'a': 1}, {'a': 2}], 3)
    """
    from adflora_analysis.errors import AdfloraError

    rows: list[dict] = []
    p = Path(path)
    if not p.exists():
        return rows, None
    if p.is_dir():
        raise AdfloraError(f"{str(p)!r} is a folder, not a file of rows",
                           "this run directory was altered: remove that folder, or start "
                           "again with --overwrite")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AdfloraError(f"{str(p)!r} is not valid UTF-8 (byte {e.start})",
                           "restore the file, or start the run again with --overwrite") \
            from None
    lines = text.split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise json.JSONDecodeError("not an object", line, 0)
        except json.JSONDecodeError:
            if i == last and not text.endswith("\n"):
                return rows, i + 1
            raise AdfloraError(f"{str(p)!r} line {i + 1} is damaged ({len(rows)} good rows "
                               "before it, more after it)",
                               "restore the file, or start the run again with --overwrite") \
                from None
        if HEADER in row:   # the header line: provenance, not a row
            continue
        rows.append(row)
    return rows, None


def truncate_jsonl(path: str | os.PathLike, keep: Callable[[dict], bool]) -> None:
    """Rewrite a JSON-lines file atomically keeping only rows where ``keep(row)`` (resume).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> append_jsonl(p, [{"round": t} for t in range(5)])
    >>> truncate_jsonl(p, lambda r: r["round"] < 3)  # drop rows after a checkpoint
    >>> read_jsonl(p)
    [{'round': 0}, {'round': 1}, {'round': 2}]
    """
    head = jsonl_header(path)
    rows = ([head] if head else []) + [r for r in read_jsonl(path) if keep(r)]
    write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def _json_default(o: Any):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
