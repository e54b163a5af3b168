"""The folder a report writes into: it holds only what a report listed there.

``report_files.json`` lists every file a report wrote (relative path -> SHA-256 of what it
wrote). A report writes only into a new or empty folder, or into a folder holding nothing but
an earlier report's listed files, unchanged (and the run directories it reports on, as the
demo does); anything else there (a user's own ``index.html``, an edited ``report.md``, a
symbolic link) is one :class:`AdfloraError` line and nothing is touched. The list is written
before the first figure (names only), so a report killed half-way leaves a folder the next
report recognises as its own; an interrupted write leaves no temp file behind. A report holds
the folder's lock (``.adflora.lock``, :class:`adflora_analysis.rundir.Lock`) while it writes.
A folder written through :func:`adflora_analysis.rundir.claim_outputs` (``manifest.json`` of
kind ``report``) is an earlier report too: its listed files are replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from adflora_analysis import fileio
from adflora_analysis.errors import AdfloraError, StoppedError
from adflora_analysis.rundir import LOCK, MANIFEST, META

REPORT_FILES = "report_files.json"
HINT = "choose an empty --out, or move those files away"


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _plain(rel: object) -> bool:
    """A relative path inside the folder (no ``..``, ``.``, empty part or absolute path)."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        return False
    return all(q not in ("", ".", "..") for q in PurePosixPath(rel).parts) and \
        "/" not in rel[-1:]


def _manifest_list(out: Path) -> dict[str, str | None]:
    """The files of an earlier writer through :func:`adflora_analysis.rundir.claim_outputs`
    of kind ``report`` (its ``manifest.json``, which lists itself and ``meta.json``); ``{}``
    where there is no such manifest (then its files count as not the report's)."""
    p = out / MANIFEST
    if not p.is_file() or p.is_symlink():
        return {}
    bad = AdfloraError(f"{str(p)!r} is damaged, so what an earlier report wrote in "
                       f"{str(out)!r} is unknown", HINT)
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise bad from None
    if not isinstance(m, dict) or m.get("kind") != "report":
        return {}
    files = m.get("files")
    if not isinstance(files, list) or m.get("patterns") or not all(_plain(f) for f in files):
        raise bad
    return dict.fromkeys([*files, MANIFEST, META])


def read_list(out: Path) -> dict[str, str | None]:
    """The files an earlier report listed in ``out`` (path -> SHA-256, None where unknown:
    an older list, or a report stopped before it finished); ``{}`` without a list. A damaged
    list is one :class:`AdfloraError`. A folder written through
    :func:`adflora_analysis.rundir.claim_outputs` (a ``manifest.json`` of kind ``report``)
    counts as an earlier report too.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / REPORT_FILES).write_text('["index.html"]')
    >>> read_list(d)
    {'index.html': None}
    """
    p = out / REPORT_FILES
    if not (p.exists() or p.is_symlink()):
        return _manifest_list(out)
    bad = AdfloraError(f"{str(p)!r} is damaged, so what an earlier report wrote in "
                       f"{str(out)!r} is unknown", HINT)
    if p.is_symlink() or not p.is_file():
        raise bad
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise bad from None
    files = obj.get("files") if isinstance(obj, dict) else obj
    if isinstance(files, list):      # the list of earlier versions: names only
        files = dict.fromkeys(files)
    if not isinstance(files, dict) or not all(
            _plain(k) and (v is None or isinstance(v, str)) for k, v in files.items()):
        raise bad
    return files


def _own_temp(rel: PurePosixPath, names: set[str]) -> bool:
    """A leftover ``.<name>.<random>.tmp`` of an atomic write of a listed file."""
    n = rel.name
    if not (n.startswith(".") and n.endswith(".tmp") and n.count(".") >= 3):
        return False
    return str(rel.parent / n[1:].rsplit(".", 2)[0]).removeprefix("./") in names


def check_folder(out: str | Path, keep: list[Path] | tuple = ()) -> dict[str, str | None]:
    """Refuse (one :class:`AdfloraError`, nothing touched) unless ``out`` is missing, empty, or
    holds only an earlier report's listed, unchanged files (and the folders ``keep``: the run
    directories reported on); returns that earlier list. No link is followed."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise AdfloraError(f"--out {str(out)!r} is a symbolic link to a missing folder",
                           "choose a real folder path")
    if not out.exists():
        return {}
    if not out.is_dir():
        raise AdfloraError(f"--out {str(out)!r} is a file, not a folder",
                           "choose a new folder path")
    listed = read_list(out)
    names = {*listed, REPORT_FILES}
    kept = {Path(k).resolve() for k in keep}
    if out.resolve() in kept:
        raise AdfloraError(f"--out {str(out)!r} is a run directory being reported on",
                           "choose an empty --out")
    foreign: list[str] = []
    changed: list[str] = []
    for root, dirs, files in os.walk(out, followlinks=False):
        here = Path(root)
        for d in list(dirs):
            p = here / d
            if p.is_symlink():
                foreign.append(f"{p.relative_to(out).as_posix()} (a symbolic link)")
                dirs.remove(d)
            elif p.resolve() in kept:
                dirs.remove(d)
        for f in files:
            p = here / f
            rel = PurePosixPath(p.relative_to(out).as_posix())
            if p.is_symlink():
                foreign.append(f"{rel} (a symbolic link)")
            elif str(rel) in (REPORT_FILES, LOCK) or _own_temp(rel, names):
                continue
            elif str(rel) not in listed or not p.is_file():
                foreign.append(str(rel))
            elif listed[str(rel)] is not None and _sha256(p) != listed[str(rel)]:
                changed.append(str(rel))
    if foreign:
        raise AdfloraError(f"--out {str(out)!r} holds {len(foreign)} file(s) that no earlier "
                           f"report wrote there (e.g. {sorted(foreign)[0]!r}); nothing was "
                           "written", HINT)
    if changed:
        raise AdfloraError(f"--out {str(out)!r}: {sorted(changed)[0]!r} was changed after the "
                           f"report wrote it ({len(changed)} file(s)); nothing was written",
                           "choose an empty --out, or move your edited copy away")
    return listed


def _remove_temps(out: Path, names: set[str]) -> None:
    for folder in {out, *((out / n).parent for n in names)}:
        if folder.is_dir() and not folder.is_symlink():
            for t in folder.glob(".*.tmp"):
                if _own_temp(PurePosixPath(t.relative_to(out).as_posix()), names):
                    t.unlink(missing_ok=True)


def _write_list(out: Path, files: dict[str, str | None]) -> None:
    fileio.write_json(out / REPORT_FILES, {"files": dict(sorted(files.items()))})


@contextlib.contextmanager
def report_folder(out: str | Path, files: list[str], keep: list[Path] | tuple = ()
                  ) -> Iterator[Path]:
    """Take ``out`` for a report that writes ``files`` (relative paths): checked by
    :func:`check_folder`, the earlier report's files removed, ``files`` listed before the block
    and listed with their SHA-256 after it. However the block ends, no temp file of a listed
    file is left behind."""
    from adflora_analysis.rundir import Lock

    out = Path(out)
    check_folder(out, keep)
    out.mkdir(parents=True, exist_ok=True)
    lock = Lock(out)    # a second report into the same folder meanwhile is one line
    try:
        lock.acquire()
    except BaseException:
        lock.release()
        raise
    try:
        listed = check_folder(out, keep)   # again, now that no other report writes there
        names = {*listed, *files, REPORT_FILES}
        _remove_temps(out, names)
        for rel in listed:
            p = out / rel
            if p.is_file() and not p.is_symlink() and rel != LOCK:
                p.unlink()
        _write_list(out, dict.fromkeys(files))
        try:
            yield out
        except BaseException:
            _remove_temps(out, names)
            raise
        _write_list(out, {f: _sha256(out / f) for f in files if (out / f).is_file()})
    finally:
        lock.release()


@contextlib.contextmanager
def interruptible(what: str) -> Iterator[None]:
    """SIGTERM and SIGINT inside the block become a :class:`StoppedError` (one ``error:``
    line, exit 143/130), so every ``finally`` below runs and removes its temp files; the old
    SIGTERM handler is restored after the block."""
    def on_term(signum, frame):
        raise StoppedError(f"{what} stopped by SIGTERM", "nothing was left half-written: "
                           "run it again", signum=signal.SIGTERM)

    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        yield
    except KeyboardInterrupt:
        raise StoppedError(f"{what} interrupted (SIGINT)", "nothing was left half-written: "
                           "run it again", signum=signal.SIGINT) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)
