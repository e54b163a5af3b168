"""The run directory: one owner of its files, kind, status, lock and loading
(docs/architecture.md §8).

Layout (every file the toolkit writes is listed in ``manifest.json``)::

    config.toml          the resolved config (after overrides)
    meta.json            kind, status, seeds, versions, git revision, topology constants, times
    manifest.json        {"kind", "files": [...], "patterns": [...]}: what the toolkit wrote
    .adflora.lock        {"pid", "host", "command", "started_utc"}; exists while a run holds it
    progress.json        {"done": [job keys]}
    metrics.jsonl        tidy rows appended every round (+ one ``<table>.jsonl`` per extra table)
    metrics.parquet      the same rows, written at the end (+ ``<table>.parquet``)
    checkpoints/         ``<job>.r<round>.rank<r>.pt``
    checks.json, check_curves.parquet, mixing.parquet, constants.parquet, label_counts.csv,
    summary.csv, fixture/   what a kind adds

``meta["kind"]`` is one of :data:`KINDS`; ``meta["status"]`` one of :data:`STATUSES`. A run
writes only into a new or empty folder, or into its own earlier run with ``resume`` (same
config) or ``overwrite`` (removes only what ``manifest.json`` lists). An exclusive lock (an
``flock`` held for the run's life, released by the kernel on any exit, SIGKILL included) makes
a second run into the same folder fail with one line naming the holder.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp()) / "run"
>>> with claim(d, "synthetic") as run:
...     _ = init_run_dir(run, {"rounds": 3}, make_meta([0], kind="synthetic", status="done"))
...     _ = run.write_json("progress.json", {"done": []})
>>> r = load_run(d)
>>> r.kind, r.status, sorted(r.manifest()["files"])
('synthetic', 'done', ['config.toml', 'manifest.json', 'meta.json', 'progress.json'])
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import platform
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from adflora_analysis import fileio
from adflora_analysis.config import dump_toml
from adflora_analysis.errors import AdfloraError

CONFIG = "config.toml"
META = "meta.json"
MANIFEST = "manifest.json"
LOCK = ".adflora.lock"
PROGRESS = "progress.json"
CHECKPOINTS = "checkpoints"
CHECK_OUTPUTS = ("checks.json", "check_curves.parquet")
KINDS = ("synthetic", "glue", "lm", "sweep", "report")
STATUSES = ("running", "done", "stopped", "diverged", "failed")
_LEGACY_KINDS = {"topology-sweep": "sweep"}
Mode = Literal["new", "resume", "overwrite"]

PACKAGES = ("adflora-analysis", "torch", "numpy", "scipy", "networkx", "pandas", "pyarrow",
            "transformers", "peft", "datasets", "tokenizers", "seaborn", "matplotlib")


# ------------------------------------------------------------------------------ meta content
def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None where not installed)."""
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    out["python"] = platform.python_version()
    return out


def git_revision(start: str | Path | None = None) -> str | None:
    """The git commit of the source tree (``-dirty`` appended if modified), or None."""
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=where, capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def make_meta(seeds: Any, **extra: Any) -> dict[str, Any]:
    """The ``meta.json`` content: seeds, versions, git revision, UTC time, plus ``extra``
    (``kind`` among them; the legacy ``topology-sweep`` is written as ``sweep``)."""
    meta = {"seeds": seeds, "versions": package_versions(), "git_revision": git_revision(),
            "created_utc": _now(), "platform": platform.platform(), **extra}
    if "kind" in meta:
        meta["kind"] = _LEGACY_KINDS.get(meta["kind"], meta["kind"])
    return meta


def kind_of(meta: dict[str, Any]) -> str | None:
    """The run kind recorded in ``meta`` (older runs said ``study``/``layer``/``topology-sweep``).

    >>> kind_of({"kind": "topology-sweep"}), kind_of({"layer": "glue"}), kind_of({})
    ('sweep', 'glue', None)
    """
    k = meta.get("kind") or meta.get("study") or meta.get("layer")
    return _LEGACY_KINDS.get(k, k) if k else None


# ------------------------------------------------------------------------------ checkpoints
CHECKPOINT_NAME = re.compile(r"(?P<job>.+)\.r(?P<round>\d+)\.rank(?P<rank>\d+)\.pt")


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


def config_hash(config: dict[str, Any]) -> str:
    """The fingerprint of a resolved config: SHA-256 (16 hex digits) of its canonical JSON.
    Recorded in ``meta.json``, in every checkpoint and in every row file's header line, so a
    resume can tell this run's rows and checkpoints from another run's.

    >>> config_hash({"lr": 0.1, "seeds": 2}) == config_hash({"seeds": 2, "lr": 0.1})
    True
    >>> config_hash({"lr": 0.1}) == config_hash({"lr": 0.2})
    False
    """
    import hashlib

    def plain(o: Any) -> Any:   # what config.toml keeps: no None values, tables as dicts
        if isinstance(o, dict):
            return {str(k): plain(v) for k, v in o.items() if v is not None}
        if isinstance(o, list | tuple):
            return [plain(v) for v in o]
        return o

    text = json.dumps(plain(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def checkpoint_path(ckpt_dir: str | Path, key: str, t: int, rank: int) -> Path:
    """``<ckpt_dir>/<job slug>.r<round, 6 digits>.rank<rank>.pt``: process ``rank``'s part of
    job ``key``'s checkpoint after round ``t``.

    >>> checkpoint_path("run/checkpoints", "adf-lora/seed=0", 9, 0).name
    'adf-lora_seed=0-9df01fd2.r000009.rank0.pt'
    """
    return Path(ckpt_dir) / f"{job_slug(key)}.r{t:06d}.rank{rank}.pt"


def checkpoint_rounds(ckpt_dir: str | Path, key: str) -> dict[int, set[int]]:
    """round -> the ranks that saved their part, for job ``key``."""
    out: dict[int, set[int]] = {}
    slug = job_slug(key)
    for f in Path(ckpt_dir).glob(f"{slug}.r*.rank*.pt"):
        m = CHECKPOINT_NAME.fullmatch(f.name)
        if m and m["job"] == slug:
            out.setdefault(int(m["round"]), set()).add(int(m["rank"]))
    return out


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """A checkpoint's payload, read as tensors and plain containers only
    (``torch.load(weights_only=True)``: nothing in the file is executed); None if the file does
    not exist. A file that is not such a checkpoint (a pickle with code, garbage, a truncated
    write, a symlink) is one :class:`AdfloraError` naming it.

    >>> import tempfile, torch
    >>> p = Path(tempfile.mkdtemp()) / "ck.pt"
    >>> torch.save({"round": 3, "state": {"A": [torch.ones(1)]}}, p)
    >>> load_checkpoint(p)["round"]
    3
    """
    import pickle

    import torch

    p = Path(path)
    if p.is_symlink():
        raise AdfloraError(f"checkpoint {str(p)!r} is a symbolic link",
                           "a run directory holds only its own files: delete the link")
    if not p.exists():
        return None
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # garbage: "invalid load key", "Unsupported operand", ...
            raise AdfloraError(f"checkpoint {str(p)!r} is corrupt (UnpicklingError)",
                               "delete it to restart that job from round 0") from None
        what = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln),
                    "a non-tensor object")[:160]
        raise AdfloraError(f"checkpoint {str(p)!r} holds more than tensors ({what})",
                           "it was not written by adflora: delete it (that job restarts "
                           "from round 0)") from None
    except Exception as e:  # noqa: BLE001 - garbage, truncated zip, ...: a damaged file
        raise AdfloraError(f"checkpoint {str(p)!r} is corrupt ({type(e).__name__})",
                           "delete it to restart that job from round 0") from None
    if not isinstance(ck, dict):
        raise AdfloraError(f"checkpoint {str(p)!r} is not a checkpoint (a "
                           f"{type(ck).__name__}, not a dict)",
                           "delete it to restart that job from round 0")
    return ck



def save_checkpoint(ckpt_dir: str | Path, key: str, t: int, *, state: dict[str, Any],
                    problem: dict[str, Any] | None, carry: Any, rank: int = 0,
                    world_size: int = 1, config_hash: str | None = None,
                    keep: int = 2) -> Path:
    """Write process ``rank``'s part of job ``key``'s checkpoint after round ``t`` (atomic) and
    delete this rank's parts older than the newest ``keep`` rounds; return its path.

    The payload: ``{"round", "job", "state" (LoraState.to_dict(): lists of CPU/GPU tensors),
    "world_size", "rank", "problem" (the problem's state_dict), "carry" (schedule and mixer
    state), "config_hash"}``; :func:`latest_checkpoint` reads it back.

    >>> import tempfile, torch
    >>> d = Path(tempfile.mkdtemp())
    >>> for t in (1, 2, 3):
    ...     _ = save_checkpoint(d, "adf", t, state={"A": [torch.ones(1)]}, problem=None,
    ...                         carry=None, config_hash="h")
    >>> sorted(checkpoint_rounds(d, "adf")), latest_checkpoint(d, "adf", fingerprint="h")[0]
    ([2, 3], 3)
    """
    payload = {"round": t, "job": key, "state": state, "world_size": world_size,
               "rank": rank, "problem": problem, "carry": carry, "config_hash": config_hash}
    path = checkpoint_path(ckpt_dir, key, t, rank)
    fileio.save_torch(path, payload)
    # keep this and the previous complete checkpoint; older parts of this rank go
    for old in sorted(checkpoint_rounds(ckpt_dir, key))[:-keep]:
        checkpoint_path(ckpt_dir, key, old, rank).unlink(missing_ok=True)
    return path


def latest_checkpoint(ckpt_dir: str | Path, key: str, rank: int = 0, world_size: int = 1,
                      fingerprint: str | None = None) -> tuple[int, dict[str, Any]] | None:
    """``(round, payload)`` of process ``rank``'s part of the newest checkpoint of ``key`` that
    every one of ``world_size`` processes completed; None if there is none.

    A checkpoint written by a different number of processes, for another job, or (when
    ``fingerprint`` is given) by a run with another config hash is refused in one line.
    """
    rounds = checkpoint_rounds(ckpt_dir, key)
    if not rounds:
        return None
    ranks_seen = set().union(*rounds.values())
    if max(ranks_seen) >= world_size or any(
            len(r) != len(ranks_seen) for r in rounds.values() if max(r) >= world_size):
        raise AdfloraError(f"checkpoints of {key!r} were written by {max(ranks_seen) + 1} "
                           f"processes, this run has {world_size}",
                           "resume with the same number of processes (--nproc-per-node)")
    full = [t for t, r in rounds.items() if r == set(range(world_size))]
    if not full:
        return None
    t = max(full)
    path = checkpoint_path(ckpt_dir, key, t, rank)
    ck = load_checkpoint(path)
    if ck is None:  # deleted between the listing and the read
        return None
    if ck.get("job") != key or ck.get("round") != t:
        raise AdfloraError(f"checkpoint {str(path)!r} belongs to job {ck.get('job')!r} round "
                           f"{ck.get('round')}, not to job {key!r} round {t}",
                           "it was copied from elsewhere: delete it (the job restarts from "
                           "round 0), or start again with --overwrite")
    if fingerprint is not None and ck.get("config_hash") != fingerprint:
        raise AdfloraError(f"checkpoint {str(path)!r} was written by a run with another "
                           f"config (hash {ck.get('config_hash')}, this run {fingerprint})",
                           "it was copied from another run: delete it (the job restarts "
                           "from round 0), or start again with --overwrite")
    if ck.get("world_size", 1) != world_size:
        raise AdfloraError(f"checkpoint of {key!r} was written by {ck.get('world_size')} "
                           f"processes, this run has {world_size}",
                           "resume with the same number of processes (--nproc-per-node)")
    return t, ck

# ------------------------------------------------------------------------------ errors
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


# ------------------------------------------------------------------------------ the directory
class RunDir:
    """A run directory: its files, kind, status and manifest.

    Only the writing process (rank 0) writes through a :class:`RunDir`; ``record`` keeps the
    manifest up to date for every file written through it.
    """

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._recorded: set[str] | None = None
        self._fingerprint: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- reading
    @property
    def meta(self) -> dict[str, Any]:
        """``meta.json`` (empty if missing; corrupt is an :class:`AdfloraError`)."""
        p = self.path / META
        return read_json(p, "meta.json") if p.exists() else {}

    @property
    def config(self) -> dict[str, Any]:
        from adflora_analysis.config import read_toml

        p = self.path / CONFIG
        if not p.exists():
            return {}
        try:
            return read_toml(p)
        except AdfloraError:
            raise
        except Exception as e:  # noqa: BLE001 - tomllib and decoding errors
            raise AdfloraError(f"config.toml {str(p)!r} is corrupt ({type(e).__name__})",
                               "start the run again into a new --out") from None

    @property
    def kind(self) -> str | None:
        k = kind_of(self.meta)
        return k or self.manifest().get("kind")

    @property
    def status(self) -> str:
        """``running``, ``done``, ``stopped``, ``diverged``, ``failed`` or ``unknown``; a
        ``running`` run whose lock is not held was killed (reported as ``stopped``)."""
        s = self.meta.get("status", "unknown")
        if s == "running" and lock_holder(self.path) is None:
            return "stopped"
        return s

    def manifest(self) -> dict[str, Any]:
        """``manifest.json``, every entry checked by :func:`check_entry` (empty if missing)."""
        p = self.path / MANIFEST
        if not (p.exists() or p.is_symlink()):
            return {}
        m = read_json(p, "manifest.json")
        files, pats = m.get("files", []), m.get("patterns", [])
        if not isinstance(files, list) or not isinstance(pats, list):
            raise AdfloraError(f"manifest.json {str(p)!r} is corrupt (files and patterns must "
                               "be lists)", "start the run again into a new --out")
        for f in files:
            check_entry(f)
        for q in pats:
            check_entry(q, pattern=True)
        return m

    def is_run(self) -> bool:
        return any((self.path / f).exists() for f in (CONFIG, META, MANIFEST))

    def table(self, stem: str):
        """``<stem>.parquet``, else the rows of ``<stem>.jsonl`` (a run still going or
        stopped), else None; a damaged Parquet file is an :class:`AdfloraError`."""
        import pandas as pd

        pq = self.path / f"{stem}.parquet"
        if pq.exists():
            try:
                return pd.read_parquet(pq)
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types
                raise AdfloraError(f"{str(pq)!r} is damaged ({type(e).__name__})",
                                   f"delete it to fall back to {stem}.jsonl, or re-run") \
                    from None
        rows = fileio.read_jsonl(self.path / f"{stem}.jsonl")
        return pd.DataFrame(rows) if rows else None

    # -- writing (rank 0)
    def record(self, *names: str, patterns: tuple[str, ...] = ()) -> None:
        """Add ``names`` (relative paths) and glob ``patterns`` to ``manifest.json``."""
        if not self.writer:
            return
        if self._recorded is None:
            m = self.manifest()
            self._recorded = set(m.get("files", [])) | {f"pattern:{p}" for p in
                                                         m.get("patterns", [])}
        new = {*names, *(f"pattern:{p}" for p in patterns)} - self._recorded
        if not new:
            return
        self._recorded |= new
        files = sorted(n for n in self._recorded if not n.startswith("pattern:"))
        pats = sorted(n[8:] for n in self._recorded if n.startswith("pattern:"))
        fileio.write_json(self.path / MANIFEST, {"kind": self._kind_for_manifest(),
                                                 "files": [MANIFEST, *[f for f in files
                                                                       if f != MANIFEST]],
                                                 "patterns": pats})

    def _kind_for_manifest(self) -> str | None:
        p = self.path / META
        meta = read_json(p, "meta.json") if p.exists() else {}
        return kind_of(meta) or self.manifest().get("kind")

    def write_json(self, name: str, obj: Any) -> Path:
        self.record(name)
        return fileio.write_json(self.path / name, obj)

    def write_text(self, name: str, text: str) -> Path:
        self.record(name)
        return fileio.write_text(self.path / name, text)

    def write_parquet(self, name: str, df) -> Path:
        self.record(name)
        return fileio.write_parquet(self.path / name, df)

    def write_csv(self, name: str, df) -> Path:
        self.record(name)
        return fileio.write_csv(self.path / name, df)

    def append_jsonl(self, name: str, rows: list[dict]) -> None:
        """Append ``rows`` to ``name``; a new file starts with a header line carrying the
        run's config hash (``meta.json``), which a resume verifies."""
        if rows:
            self.record(name)
            if self._fingerprint is None:
                self._fingerprint = {"config_hash": self.meta.get("config_hash")}
            fileio.append_jsonl(self.path / name, rows, header=self._fingerprint)

    def update_meta(self, **fields: Any) -> None:
        """Merge ``fields`` into ``meta.json`` (atomically)."""
        meta = self.meta
        meta.update(fields)
        self.write_json(META, meta)

    def set_status(self, status: str, **fields: Any) -> None:
        """Record the run's status (one of :data:`STATUSES`) and when it was set."""
        if self.writer and (self.path / META).exists():
            self.update_meta(status=status, status_utc=_now(), **fields)

    # -- cleaning
    def own_files(self) -> list[Path]:
        """Every existing file the manifest lists or its patterns match (never the lock), each
        checked to lie inside the run directory (resolved; no link followed)."""
        m = self.manifest()
        out = {self.path / f for f in m.get("files", [])}
        for pat in m.get("patterns", []):
            out.update(self.path.glob(pat))
        root = self.path.resolve()
        keep = []
        for p in sorted(out):
            if p.is_symlink():
                raise AdfloraError(f"{str(p)!r} is a symbolic link", "a run directory holds "
                                   "only its own files: nothing was removed; delete the link")
            if not p.is_file() or p.name == LOCK:
                continue
            if not p.resolve().is_relative_to(root):
                raise AdfloraError(f"{str(p)!r} lies outside {str(self.path)!r}",
                                   "this run directory was altered: nothing was removed")
            keep.append(p)
        return keep

    def clean_temp_files(self) -> list[Path]:
        """Remove leftover ``.<name>.*.tmp`` files of interrupted atomic writes of this run's
        files (and of checkpoints)."""
        # names the manifest lists, written or not yet (a kill just before the rename)
        own = {Path(f).name for f in self.manifest().get("files", [])} | {
            MANIFEST, META, CONFIG, PROGRESS}
        gone = []
        for folder in (self.path, self.path / CHECKPOINTS):
            for t in folder.glob(".*.tmp") if folder.is_dir() else ():
                base = t.name[1:].rsplit(".", 2)[0]
                if base in own or folder.name == CHECKPOINTS:
                    t.unlink(missing_ok=True)
                    gone.append(t)
        return gone

    def remove_own_files(self) -> list[Path]:
        """Delete what the manifest lists (``--overwrite``); anything else stays."""
        gone = self.own_files()
        self.clean_temp_files()
        for p in gone:
            if p.name != MANIFEST:
                p.unlink(missing_ok=True)
        for p in sorted({q.parent for q in gone}, key=lambda q: -len(q.parts)):
            if p != self.path and p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        self.invalidate_checks()   # verdicts on the old rows, whoever recorded them
        (self.path / MANIFEST).unlink(missing_ok=True)
        self._recorded = None
        return gone

    def invalidate_checks(self) -> None:
        """Remove ``checks.json``/``check_curves.parquet`` (a resume changes the rows)."""
        for f in CHECK_OUTPUTS:
            p = self.path / f
            if p.is_dir() and not p.is_symlink():
                raise AdfloraError(f"{str(p)!r} is a folder, not the checks' file",
                                   "this run directory was altered: remove that folder")
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                raise os_error(p, e) from None

    # -- resume
    def check_resume(self, config: dict[str, Any], world_size: int = 1,
                     defaults: dict[str, Any] | None = None) -> None:
        """Refuse to resume with another config or number of processes than the run started
        with, or when ``meta.json``/``config.toml``/``progress.json`` is missing or damaged.

        ``defaults``: the config class's default values; a key the run's saved config lacks
        (written before the key existed) counts as equal when the new config holds its
        default."""
        from adflora_analysis.config import config_diff

        where = str(self.path)
        if not (self.path / CONFIG).exists():
            raise AdfloraError(f"{where!r} is not a run directory (no config.toml)",
                               "pass the directory a run wrote with --out")
        if not (self.path / META).exists():
            raise AdfloraError(f"cannot resume {where!r}: meta.json is missing",
                               "start again with --overwrite, or into a new --out")
        meta = self.meta
        if (self.path / PROGRESS).exists():
            prog = read_json(self.path / PROGRESS, "progress.json")
            if not isinstance(prog, dict) or not isinstance(prog.get("done"), list):
                raise AdfloraError(f"progress.json in {where!r} is damaged",
                                   "start again with --overwrite")
        saved = self.config
        if meta.get("config_hash") and config_hash(saved) != meta["config_hash"]:
            raise AdfloraError(f"cannot resume {where!r}: its config.toml is not the config "
                               f"this run started with (hash {config_hash(saved)}, the run "
                               f"recorded {meta['config_hash']})", "restore the run's own "
                               "config.toml, or start again with --overwrite")
        diff = config_diff(saved, json.loads(json.dumps(config)),
                           defaults=json.loads(json.dumps(defaults)) if defaults else None)
        if diff:
            raise AdfloraError(f"cannot resume {where!r}: the config differs in "
                               f"{', '.join(diff)}", "resume with the original config, or start "
                               "a new run directory")
        started = meta.get("world_size", 1)
        if started != world_size:
            raise AdfloraError(f"cannot resume {where!r}: it was run by {started} "
                               f"process(es), this run has {world_size}",
                               f"resume with --nproc-per-node={started}" if started > 1
                               else "resume without torchrun")


def init_run_dir(out: str | Path | RunDir, config: dict[str, Any],
                 meta: dict[str, Any]) -> Path:
    """Create ``out`` and write ``config.toml`` and ``meta.json`` atomically (recorded in
    the manifest)."""
    run = out if isinstance(out, RunDir) else RunDir(out)
    run.path.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "config_hash": config_hash(config)}
    if "kind" in meta:
        meta = {**meta, "kind": _LEGACY_KINDS.get(meta["kind"], meta["kind"])}
    fileio.write_json(run.path / META, meta)   # first, so the manifest knows the kind
    run.record(META)
    run.write_text(CONFIG, dump_toml(config))
    return run.path


def update_meta(out: str | Path, **fields: Any) -> None:
    """Merge ``fields`` into an existing ``meta.json`` (atomically)."""
    RunDir(out).update_meta(**fields)


# ------------------------------------------------------------------------------ the lock
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


def _describe(info: dict[str, Any]) -> str:
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
                                   f"{_describe(info)}", "wait for that run to end, or choose "
                                   "another --out") from None
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
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_utc": _now(),
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


# ------------------------------------------------------------------------------ claiming
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
            print(f"note: {str(out)!r} had a stale lock of {_describe(lock.stale)}, which is "
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
            raise AdfloraError(f"{where!r} already holds a {run.kind or 'toolkit'} run "
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
    have = run.kind
    if kind and have and have != kind:
        raise AdfloraError(f"{str(run.path)!r} holds a {have} run, not a {kind} run",
                           "choose a new --out")


# ------------------------------------------------------------------------------ loading
def load_run(path: str | Path, kind: str | None = None) -> RunDir:
    """The run directory at ``path`` (optionally required to be of ``kind``); a missing
    folder, a folder that is not a run, damaged ``meta.json``/``config.toml`` or another kind
    is one :class:`AdfloraError` line."""
    p = check_out_path(path, "run directory")
    if not p.is_dir():
        raise AdfloraError(f"run directory {str(p)!r} does not exist"
                           + (" (it is a file)" if p.exists() else ""),
                           "pass a directory written with --out")
    refuse_links(p)
    run = RunDir(p, writer=False)
    if not run.is_run():
        raise AdfloraError(f"{str(p)!r} is not a run directory (no meta.json or config.toml)",
                           "pass a directory written with --out")
    _ = run.meta, run.config  # damaged files fail here, in one line
    if run.kind in ("synthetic", "glue") and (p / CONFIG).exists() and not run.config:
        raise AdfloraError(f"config.toml in {str(p)!r} is empty",
                           "this run directory is damaged: run the study again")
    if kind is not None and run.kind not in (None, kind):
        raise AdfloraError(f"{str(p)!r} holds a {run.kind} run, not a {kind} run",
                           f"pass a directory written by `adflora {kind} run`")
    return run


def require_complete(run: str | Path | RunDir, *, strict: bool = False,
                     what: str = "verdicts") -> str | None:
    """None for a finished run; otherwise the one-line banner saying what the run is
    (``stopped``, ``running``, ``diverged``, ...), or an :class:`AdfloraError` under ``strict``.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = init_run_dir(d, {}, make_meta([0], kind="synthetic", status="diverged"))
    >>> require_complete(d).endswith("is diverged: verdicts cover only the rounds it completed")
    True
    """
    run = run if isinstance(run, RunDir) else RunDir(run, writer=False)
    status = run.status
    if status == "done":
        return None
    line = f"run {str(run.path)!r} is {status}: {what} cover only the rounds it completed"
    if strict:
        how = ("run it again with a smaller lr (--overwrite)" if status == "diverged" else
               f"resume it with `adflora {run.kind or 'synthetic'} run --resume {run.path}`")
        raise AdfloraError(line, f"--strict needs a finished run: {how}")
    return line


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


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """The CONFIG (first argument that is not ``key=value``) and the overrides.

    >>> split_args(["bounds", "seeds=3", "lr=0.1"]), split_args(["seeds=3"])
    (('bounds', ['seeds=3', 'lr=0.1']), (None, ['seeds=3']))
    """
    config, overrides = None, []
    for a in args:
        if config is None and not overrides and ("=" not in a or Path(a).is_file()):
            config = a
        elif "=" in a:
            overrides.append(a)
        else:
            raise AdfloraError(f"unexpected argument {a!r}",
                               "give one CONFIG file followed by key=value overrides")
    return config, overrides


def run_target(args: list[str], out: str | Path | None, resume: str | Path | None,
               overwrite: bool = False) -> tuple[str | None, list[str], Path, Mode]:
    """``(CONFIG or None, overrides, run directory, mode)`` of ``adflora synthetic|glue run
    [CONFIG] [KEY=VALUE]...``: one way to resume for every runner. ``--resume DIR`` reads the
    config back from ``DIR/config.toml`` (CONFIG None; a CONFIG or overrides given as well must
    match it, which the runner checks); otherwise CONFIG and ``--out`` are needed.

    >>> run_target(["c.toml", "lr=0.1"], "runs/a", None)
    ('c.toml', ['lr=0.1'], PosixPath('runs/a'), 'new')
    >>> run_target(["lr=0.1"], "runs/a", None)
    Traceback (most recent call last):
    ...
    adflora_analysis.errors.AdfloraError: no CONFIG given (hint: give a study TOML or a \
shipped config name (adflora configs list), or --resume DIR)
    """
    config, overrides = split_args(list(args or []))
    for p in (out, resume):
        if p is not None:
            check_out_path(p)
    if resume is not None:
        if overwrite:
            raise AdfloraError("--resume and --overwrite exclude each other",
                               "continue the run with --resume, or replace it with --overwrite")
        if out is not None and Path(out) != Path(resume):
            raise AdfloraError("--out and --resume name different directories",
                               "pass only --resume DIR")
        if not (Path(resume) / CONFIG).is_file():
            raise AdfloraError(f"{str(resume)!r} is not a run directory (no config.toml)",
                               "pass the directory a run wrote with --out")
        return config, overrides, Path(resume), "resume"
    if config is None:
        raise AdfloraError("no CONFIG given", "give a study TOML or a shipped config name "
                           "(adflora configs list), or --resume DIR")
    if out is None:
        raise AdfloraError("no --out directory given", "add --out runs/NAME")
    return config, overrides, Path(out), "overwrite" if overwrite else "new"
