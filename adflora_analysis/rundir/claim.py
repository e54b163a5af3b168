"""Claiming a run directory for a run: new, resume or overwrite, under the lock."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from adflora_analysis import fileio
from adflora_analysis.errors import AdfloraError
from adflora_analysis.rundir.directory import RunDir
from adflora_analysis.rundir.lock import Lock, describe_holder
from adflora_analysis.rundir.meta import make_meta
from adflora_analysis.rundir.paths import (
    LOCK,
    MANIFEST,
    META,
    Mode,
    check_out_path,
    os_error,
    refuse_links,
)


def _ensure_folder(out: Path) -> None:
    check_out_path(out)
    if out.is_symlink() and not out.exists():
        raise AdfloraError(f"--out {str(out)!r} is a symbolic link to a missing folder "
                           f"({os.readlink(out)!r})", "choose a real folder path")
    if out.exists() and not out.is_dir():
        raise AdfloraError(f"--out {str(out)!r} is a file, not a folder",
                           "choose a new folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise AdfloraError(f"--out {str(out)!r}: a part of the path is a file",
                           "choose a folder path") from None
    except OSError as e:
        raise os_error(out, e) from None


# the files a run writes first, before its manifest lists anything
_FIRST_FILES = {"config.toml", "meta.json", "manifest.json", "progress.json"}


def _is_temp(name: str) -> bool:
    """A temp file of :func:`adflora_analysis.fileio.atomic_path` of one of the files a run
    writes before its manifest exists (``.<name>.<random>.tmp``); another ``*.tmp`` is not
    the toolkit's.

    >>> _is_temp(".meta.json.k2j3.tmp"), _is_temp(".notes.txt.k2j3.tmp")
    (True, False)
    """
    return (name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3
            and name[1:].rsplit(".", 2)[0] in _FIRST_FILES)


def _foreign(folder: Path) -> list[str]:
    """Entries other than the lock and leftover temp files of interrupted atomic writes."""
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK and not _is_temp(p.name))


@contextlib.contextmanager
def claim(out: str | Path, kind: str | None, mode: Mode = "new", *,
          writer: bool = True) -> Iterator[RunDir]:
    """Take run directory ``out`` for a run of ``kind`` for the ``with`` block.

    ``mode``: ``"new"`` needs a new or empty folder; ``"resume"`` an earlier run of the same
    kind; ``"overwrite"`` removes the files an earlier run of the toolkit wrote (its manifest)
    and nothing else. The lock is held until the block ends (any way it ends). Only the
    writer (rank 0) locks and checks; other processes get the :class:`RunDir` as is.
    """
    out = Path(out)
    if not writer:
        yield RunDir(out, writer=False)
        return
    _ensure_folder(out)
    refuse_links(out)
    lock = Lock(out)
    try:
        lock.acquire()
    except OSError as e:   # e.g. a full disk while writing the holder: let go of the lock
        lock.release()
        raise os_error(out, e) from None
    try:
        if lock.stale:
            print(f"note: {str(out)!r} had a stale lock of {describe_holder(lock.stale)}, which is "
                  f"no longer running; taken over", file=sys.stderr)
        run = RunDir(out)
        _check_mode(run, kind, mode)
        try:
            yield run
        except OSError as e:   # a full disk or a read-only folder anywhere in the block
            raise os_error(out, e) from None
    finally:
        lock.release()


def _check_mode(run: RunDir, kind: str | None, mode: Mode) -> None:
    where = str(run.path)
    if mode == "new":
        left = _foreign(run.path)
        if not left:
            for t in run.path.iterdir():  # of a run killed before it wrote its manifest
                if _is_temp(t.name):
                    t.unlink()
            return
        if run.is_run():
            raise AdfloraError(f"{where!r} already holds a {run.recorded_kind or 'toolkit'} run "
                               f"(status {run.status})",
                               f"continue it with --resume {where}, replace it with "
                               "--overwrite, or choose a new --out")
        raise AdfloraError(f"{where!r} is not empty ({len(left)} entries not written by "
                           f"adflora, e.g. {left[0]!r})", "choose a new or empty --out")
    if mode == "overwrite":
        if _foreign(run.path) and not (run.path / MANIFEST).exists():
            raise AdfloraError(f"cannot overwrite {where!r}: it has no manifest.json, so "
                               "what adflora wrote there is unknown",
                               "choose a new --out, or empty the folder yourself")
        _check_kind(run, kind)
        run.remove_own_files()
        return
    if not run.is_run():
        raise AdfloraError(f"{where!r} is not a run directory (no config.toml)",
                           "pass the directory a run wrote with --out")
    _check_kind(run, kind)
    run.clean_temp_files()


def _check_kind(run: RunDir, kind: str | None) -> None:
    have = run.recorded_kind
    if kind and have and have != kind:
        raise AdfloraError(f"{str(run.path)!r} holds a {have} run, not a {kind} run",
                           "choose a new --out")


@contextlib.contextmanager
def claim_outputs(out: str | Path, kind: str = "report") -> Iterator[RunDir]:
    """A folder for the outputs of a report (or another writer of many files): new, empty, or
    holding this writer's previous outputs, which are removed first (so nothing of the previous
    report survives); on success every file written inside the block is listed in the manifest.
    """
    out = Path(out)
    with claim(out, kind, "overwrite" if (out / MANIFEST).exists() else "new") as run:
        before = {p for p in run.path.rglob("*") if p.is_file()}
        if not (run.path / META).exists():
            fileio.write_json(run.path / META, make_meta(None, kind=kind, status="running"))
        run.record(META)
        yield run
        after = {p for p in run.path.rglob("*") if p.is_file() and p.name != LOCK}
        run.record(*sorted(str(p.relative_to(run.path)) for p in after - before))
        run.set_status("done")
