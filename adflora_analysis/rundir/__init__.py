"""The run directory: one owner of its files, kind, status, lock, checkpoints, rows and loading
(docs/architecture.md §8). Everything else reads a run through its reading API:
:func:`load_run` then :attr:`RunDir.meta`, :attr:`RunDir.config`, :attr:`RunDir.kind`,
:attr:`RunDir.status`, :meth:`RunDir.table` / :meth:`RunDir.rows`, :meth:`RunDir.checkpoints`
and :meth:`RunDir.load_checkpoint`.

Modules: :mod:`~adflora_analysis.rundir.paths` (file names, confinement, links, slugs),
:mod:`~adflora_analysis.rundir.kinds` (kind detection), :mod:`~adflora_analysis.rundir.meta`
(meta content, config hash), :mod:`~adflora_analysis.rundir.checkpoints` (checkpoint names and
payloads), :mod:`~adflora_analysis.rundir.rows` (row files), :mod:`~adflora_analysis.rundir.lock`
(the lock), :mod:`~adflora_analysis.rundir.directory` (:class:`RunDir`, create, load),
:mod:`~adflora_analysis.rundir.claim` (claiming a folder for a run).

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

``meta["kind"]`` is one of :data:`KINDS` (or a registered testbed's kind); ``meta["status"]``
one of :data:`STATUSES`. A run writes only into a new or empty folder, or into its own earlier
run with ``resume`` (same config) or ``overwrite`` (removes only what ``manifest.json`` lists).
An exclusive lock (an
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

from pathlib import Path  # noqa: F401 - the doctest above uses it

from adflora_analysis.rundir.checkpoints import (
    CHECKPOINT_NAME,
    CheckpointFile,
    checkpoint_files,
    checkpoint_path,
    checkpoint_rounds,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoints,
    save_checkpoint,
)
from adflora_analysis.rundir.claim import claim, claim_outputs
from adflora_analysis.rundir.directory import (
    RunDir,
    init_run_dir,
    load_run,
    require_complete,
    update_meta,
)
from adflora_analysis.rundir.kinds import KINDS, add_kind, check_kind, detect_kind, kind_of
from adflora_analysis.rundir.lock import Lock, lock_holder
from adflora_analysis.rundir.meta import (
    PACKAGES,
    config_hash,
    git_revision,
    make_meta,
    package_versions,
)
from adflora_analysis.rundir.paths import (
    CHECK_OUTPUTS,
    CHECKPOINTS,
    CONFIG,
    LOCK,
    MANIFEST,
    META,
    PROGRESS,
    STATUSES,
    Mode,
    check_entry,
    check_out_path,
    find_links,
    job_slug,
    os_error,
    read_json,
    refuse_links,
)
from adflora_analysis.rundir.rows import read_rows, read_table, verify_rows, verify_table

__all__ = [
    "CHECKPOINT_NAME", "CHECKPOINTS", "CHECK_OUTPUTS", "CONFIG", "KINDS", "LOCK", "MANIFEST",
    "META", "PACKAGES", "PROGRESS", "STATUSES", "CheckpointFile", "Lock", "Mode", "RunDir",
    "add_kind", "check_entry", "check_kind", "check_out_path", "checkpoint_files",
    "checkpoint_path", "checkpoint_rounds", "claim", "claim_outputs", "config_hash",
    "detect_kind", "find_links", "git_revision", "init_run_dir", "job_slug", "kind_of",
    "latest_checkpoint", "load_checkpoint", "load_run", "lock_holder", "make_meta", "os_error",
    "package_versions", "read_checkpoints", "read_json", "read_rows", "read_table",
    "refuse_links", "require_complete", "save_checkpoint", "update_meta", "verify_rows",
    "verify_table",
]
