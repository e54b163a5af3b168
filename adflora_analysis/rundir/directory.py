"""The :class:`RunDir` itself (reading API and rank-0 writing), creating and loading one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adflora_analysis import fileio
from adflora_analysis.config import dump_toml
from adflora_analysis.errors import AdfloraError
from adflora_analysis.rundir import checkpoints as _ck
from adflora_analysis.rundir import rows as _rows
from adflora_analysis.rundir.kinds import detect_kind, kind_of, normal_kind
from adflora_analysis.rundir.lock import lock_holder
from adflora_analysis.rundir.meta import config_hash, now_utc
from adflora_analysis.rundir.paths import (
    CHECK_OUTPUTS,
    CHECKPOINTS,
    CONFIG,
    LOCK,
    MANIFEST,
    META,
    PROGRESS,
    check_entry,
    check_out_path,
    os_error,
    read_json,
    refuse_links,
)


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
    def recorded_kind(self) -> str | None:
        """The kind ``meta.json`` (else the manifest) records, unchecked and not guessed: what
        a writer compares its own kind with."""
        k = kind_of(self.meta)
        if k is None:
            m = self.manifest().get("kind")
            k = normal_kind(m) if isinstance(m, str) and m else None
        return k

    @property
    def kind(self) -> str | None:
        """The run's kind (:func:`~adflora_analysis.rundir.kinds.detect_kind`: recorded in
        ``meta.json`` or the manifest, else shown by its tables; None if nothing tells); an
        unknown recorded kind is an :class:`AdfloraError`."""
        meta = self.meta
        if kind_of(meta) is not None:
            return detect_kind(meta, where=str(self.path))
        return detect_kind(meta, self.manifest(), has_table=self.has_table,
                           config=self.config if (self.path / CONFIG).exists() else None,
                           where=str(self.path))

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
        return _rows.read_table(self.path, stem)

    def rows(self, stem: str) -> list[dict[str, Any]]:
        """The rows of ``<stem>.jsonl`` as appended round by round (``[]`` if none)."""
        return _rows.read_rows(self.path, stem)

    def has_table(self, stem: str) -> bool:
        """True if the run wrote table ``stem`` (``.parquet`` or ``.jsonl``)."""
        return _rows.has_table(self.path, stem)

    def checkpoints(self, rank: int | None = 0) -> list[_ck.CheckpointFile]:
        """Process ``rank``'s checkpoint files (every rank: None); a linked one is refused."""
        return _ck.checkpoint_files(self.path, rank)

    def load_checkpoint(self, ck: _ck.CheckpointFile | str | Path) -> dict[str, Any] | None:
        """A checkpoint's payload, tensors and plain containers only (None if gone)."""
        return _ck.load_checkpoint(ck.path if isinstance(ck, _ck.CheckpointFile) else ck)

    def latest_checkpoint(self, key: str, rank: int = 0, world_size: int = 1,
                          fingerprint: str | None = None) -> tuple[int, dict[str, Any]] | None:
        """``(round, payload)`` of job ``key``'s newest complete checkpoint
        (:func:`~adflora_analysis.rundir.checkpoints.latest_checkpoint`)."""
        return _ck.latest_checkpoint(self.path / CHECKPOINTS, key, rank, world_size,
                                     fingerprint)

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
        return self.recorded_kind

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
            self.update_meta(status=status, status_utc=now_utc(), **fields)

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
        meta = {**meta, "kind": normal_kind(meta["kind"])}
    fileio.write_json(run.path / META, meta)   # first, so the manifest knows the kind
    run.record(META)
    run.write_text(CONFIG, dump_toml(config))
    return run.path


def update_meta(out: str | Path, **fields: Any) -> None:
    """Merge ``fields`` into an existing ``meta.json`` (atomically)."""
    RunDir(out).update_meta(**fields)


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
    _ = run.kind  # an unknown recorded kind fails here, in one line
    have = run.recorded_kind
    if have in ("synthetic", "glue") and (p / CONFIG).exists() and not run.config:
        raise AdfloraError(f"config.toml in {str(p)!r} is empty",
                           "this run directory is damaged: run the study again")
    if kind is not None and have not in (None, kind):
        raise AdfloraError(f"{str(p)!r} holds a {have} run, not a {kind} run",
                           f"pass a directory written by `adflora {kind} run`")
    return run


def require_complete(run: str | Path | RunDir, *, strict: bool = False,
                     what: str = "verdicts") -> str | None:
    """None for a finished run; otherwise the one-line banner saying what the run is
    (``stopped``, ``running``, ``diverged``, ...), or an :class:`AdfloraError` under ``strict``.

    >>> import tempfile
    >>> from adflora_analysis.rundir.meta import make_meta
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
