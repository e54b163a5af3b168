"""Names and confinement of a run directory: its file names, entry checks (no ``..``, no
absolute path, no glob), links refused, job keys as safe file names, path-length limits and the
one-line errors of reading and writing its files."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from adflora_analysis.errors import AdfloraError

CONFIG = "config.toml"
META = "meta.json"
MANIFEST = "manifest.json"
LOCK = ".adflora.lock"
PROGRESS = "progress.json"
CHECKPOINTS = "checkpoints"
CHECK_OUTPUTS = ("checks.json", "check_curves.parquet")
STATUSES = ("running", "done", "stopped", "diverged", "failed")
Mode = Literal["new", "resume", "overwrite"]


def job_slug(key: str) -> str:
    """A job key as one safe file-name part, unique per key: a key that is not already a
    plain name (letters, digits, ``_.=-``; no leading dot) is sanitized and gets 8 hex digits
    of its SHA-256, so ``x y`` and ``x_y`` never share a checkpoint file.

    >>> job_slug("adf-lora"), job_slug("T=5/adf-lora seed:1")
    ('adf-lora', 'T=5_adf-lora_seed_1-b87410bf')
    >>> job_slug("x y") != job_slug("x_y") and job_slug("../../x").startswith("_")
    True
    """
    import hashlib

    clean = re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)[:80]
    if clean == key and key and not key.startswith("."):
        return key
    clean = "_" + clean[1:] if clean.startswith(".") else clean
    return f"{clean}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:8]}"


def os_error(path: str | Path, e: OSError) -> AdfloraError:
    """One line for an OS failure while writing under ``path`` (read-only, full disk, ...)."""
    hints = {errno.ENOSPC: ("the disk is full", "free some space or choose --out on another "
                            "disk; the files written so far are intact"),
             errno.EDQUOT: ("the disk quota is exceeded", "free some space"),
             errno.EROFS: ("the file system is read-only", "choose a writable --out"),
             errno.EACCES: ("permission denied", "choose a folder you can write to"),
             errno.EPERM: ("permission denied", "choose a folder you can write to"),
             errno.ENOTDIR: ("a part of the path is a file, not a folder",
                             "choose a folder path"),
             errno.EEXIST: ("a file is in the way", "choose a folder path"),
             errno.ENAMETOOLONG: ("the name is too long for the file system",
                                  "choose a shorter --out (at most 255 bytes a part)"),
             errno.ELOOP: ("a part of the path is a symbolic link",
                           "a run directory holds no links: copy it with `cp -rL`")}
    what, hint = hints.get(e.errno, (e.strerror or type(e).__name__, "check the path"))
    where = e.filename if getattr(e, "filename", None) else path
    return AdfloraError(f"cannot write {str(where)!r}: {what}", hint)


def read_json(path: Path, what: str) -> Any:
    """JSON of ``path``; damage is one :class:`AdfloraError` line naming ``what``."""
    if path.is_symlink():
        raise AdfloraError(f"{what} {str(path)!r} is a symbolic link",
                           "a run directory holds only its own files: delete the link")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise AdfloraError(f"{what} {str(path)!r} is corrupt ({type(e).__name__})",
                           "start the run again into a new --out, or with --overwrite") \
            from None
    except IsADirectoryError:
        raise AdfloraError(f"{what} {str(path)!r} is a folder, not a file",
                           "start the run again into a new --out") from None
    except OSError as e:
        raise AdfloraError(f"cannot read {what} {str(path)!r} ({e.strerror})",
                           "check the file's permissions") from None
    if not isinstance(obj, dict):
        raise AdfloraError(f"{what} {str(path)!r} is corrupt (a JSON {type(obj).__name__}, "
                           "not an object)", "start the run again into a new --out, or with "
                           "--overwrite")
    return obj


#: the one glob pattern a manifest may hold: a job's checkpoints (see :func:`job_slug`)
_PATTERN = re.compile(r"checkpoints/[A-Za-z0-9_.=-]+\.r\*\.rank\*\.pt")
_BAD_PART = re.compile(r"[*?\[\]\\\x00-\x1f]")


def check_entry(entry: Any, *, pattern: bool = False, where: str = "manifest.json") -> str:
    """``entry`` if it is a plain relative name inside the folder (parts that are not ``..``
    or ``.``, no absolute path, no glob characters, no control characters); a manifest
    ``pattern`` must be a job's checkpoint pattern. Anything else is one
    :class:`AdfloraError` (it would reach outside the run directory).

    >>> check_entry("checkpoints/adf-lora.r*.rank*.pt", pattern=True)
    'checkpoints/adf-lora.r*.rank*.pt'
    >>> check_entry("../victims/victim.txt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: manifest.json lists '../victims/victim.txt', ...
    """
    ok = isinstance(entry, str) and 0 < len(entry) < 1024
    if ok and pattern:
        ok = _PATTERN.fullmatch(entry) is not None
    elif ok:
        parts = entry.split("/")
        ok = (not entry.startswith("/") and not _BAD_PART.search(entry)
              and all(q not in ("", ".", "..") for q in parts))
    if not ok:
        raise AdfloraError(f"{where} lists {entry!r}, which is not a plain name inside the run "
                           "directory", "this run directory was altered: nothing was removed; "
                           "check where it came from, or choose a new --out")
    return entry


def find_links(folder: Path, limit: int = 1) -> list[Path]:
    """Symbolic links, and files with a second hard link (whose other name may lie outside),
    at any depth inside ``folder`` (never followed), at most ``limit``."""
    import stat

    out: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in (*dirs, *files):
            p = Path(root) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
                out.append(p)
                if len(out) >= limit:
                    return out
    return out


def refuse_links(folder: Path) -> None:
    """One :class:`AdfloraError` if ``folder`` holds a symbolic link or a hard-linked file
    anywhere: a run directory holds only its own files, and the toolkit never writes through
    a link to a file outside it."""
    links = find_links(folder)
    if links:
        rel = links[0].relative_to(folder)
        if not links[0].is_symlink():
            raise AdfloraError(f"{str(folder)!r} holds {str(rel)!r}, a file with another hard "
                               "link (another name, maybe outside the folder)",
                               "a run directory holds only its own files: copy the run with "
                               "`cp -r` into a new folder")
        try:
            to = os.readlink(links[0])
        except OSError:
            to = "?"
        raise AdfloraError(f"{str(folder)!r} holds a symbolic link {str(rel)!r} (-> {to!r})",
                           "a run directory holds only its own files: remove the link, or "
                           "copy the run with `cp -rL` into a new folder")


def check_out_path(out: str | Path, what: str = "--out") -> Path:
    """``out`` if the file system can hold its name: each part at most ``NAME_MAX`` bytes
    (255 here), the whole at most ``PATH_MAX``; otherwise one :class:`AdfloraError`.

    >>> check_out_path("runs/a").name
    'a'
    >>> check_out_path("x" * 300)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: ... is 300 bytes long, more than the 255 ...
    """
    p = Path(out)
    absolute = p.absolute()
    try:
        name_max = os.pathconf(_existing_parent(absolute), "PC_NAME_MAX")
        path_max = os.pathconf(_existing_parent(absolute), "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in absolute.parts:
        n = len(os.fsencode(part))
        if n > name_max:
            raise AdfloraError(f"{what} {part[:40]!r}... is {n} bytes long, more than the "
                               f"{name_max} a file name may have here",
                               f"choose a shorter {what} name")
    if len(os.fsencode(str(absolute))) >= path_max:
        raise AdfloraError(f"{what} is longer than the {path_max} bytes a path may have here",
                           f"choose a shorter {what} path")
    return p


def _existing_parent(p: Path) -> Path:
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p
