"""The run directory's lock: an exclusive ``flock`` on ``.adflora.lock`` held for the run's life
(released by the kernel on any exit), whose file names the holder."""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from adflora_analysis.errors import AdfloraError
from adflora_analysis.rundir.meta import now_utc
from adflora_analysis.rundir.paths import LOCK


def lock_holder(path: str | Path) -> dict[str, Any] | None:
    """Who holds the lock of run directory ``path`` (its lock file's content), or None."""
    import fcntl

    p = Path(path) / LOCK
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _lock_info(p) or {"pid": "?"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _lock_info(p: Path, tries: int = 5) -> dict[str, Any]:
    """The lock file's holder record (``{}`` if unreadable: damaged, not UTF-8, a link). The
    holder writes it just after taking the lock: an empty file is read again a few times."""
    import time

    for i in range(tries):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                raw = f.read(4096)
            info = json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (OSError, ValueError):   # ValueError: JSON and UTF-8 decoding
            return {}
        if isinstance(info, dict):
            return {k: str(v)[:200] for k, v in info.items()}
        if info is not None:
            return {}
        time.sleep(0.05 * (i + 1))
    return {}


def describe_holder(info: dict[str, Any]) -> str:
    """``pid P on HOST (COMMAND, since TIME)`` of a lock holder's record."""
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
            + (f" ({info['command']}, since {info.get('started_utc', '?')})"
               if info.get("command") else ""))


class Lock:
    """An exclusive ``flock`` on ``<dir>/.adflora.lock`` whose file names the holder."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self.fd: int | None = None
        self.stale: dict[str, Any] | None = None

    def acquire(self) -> None:
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise AdfloraError(f"the lock {str(self.path)!r} is a symbolic link",
                                       "a run directory holds only its own files: delete "
                                       "the link") from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                info = _lock_info(self.path)
                raise AdfloraError(f"{str(self.path.parent)!r} is in use by "
                                   f"{describe_holder(info)}", "wait for that run to end, or "
                                   "choose another --out") from None
            # the holder we waited on may have removed the file: lock the file now there
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd   # held from here: release() lets go, also when the lines below raise
        old = _lock_info(self.path)
        if old.get("pid") not in (None, os.getpid()):
            self.stale = old  # its process ended without removing the file (killed)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_utc": now_utc(),
                "command": " ".join(["adflora", *sys.argv[1:3]])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        import fcntl

        self.path.unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
