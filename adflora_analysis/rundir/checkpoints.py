"""Checkpoints: their names (``checkpoints/<job slug>.r<round>.rank<r>.pt``) and payloads,
written and read here only (``torch.load(weights_only=True)``: nothing in a file is executed)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adflora_analysis import fileio
from adflora_analysis.errors import AdfloraError
from adflora_analysis.rundir.paths import CHECKPOINTS, job_slug

CHECKPOINT_NAME = re.compile(r"(?P<job>.+)\.r(?P<round>\d+)\.rank(?P<rank>\d+)\.pt")


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


@dataclass(frozen=True)
class CheckpointFile:
    """One checkpoint file of a run directory, as its name tells: ``job`` is the job's slug
    (:func:`~adflora_analysis.rundir.paths.job_slug`; the payload's ``job`` holds the key)."""

    path: Path
    job: str
    round: int
    rank: int


def checkpoint_files(run_dir: str | Path, rank: int | None = 0) -> list[CheckpointFile]:
    """The checkpoint files of process ``rank`` (every rank: None) in ``run_dir``, sorted by
    name, never following a link: a ``checkpoints`` folder or file that is a symbolic link is
    one :class:`AdfloraError`; files whose names are not checkpoint names are left out.

    >>> import tempfile, torch
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = save_checkpoint(d / CHECKPOINTS, "adf", 4, state={}, problem=None, carry=None)
    >>> [(c.job, c.round, c.rank) for c in checkpoint_files(d)]
    [('adf', 4, 0)]
    """
    ck_dir = Path(run_dir) / CHECKPOINTS
    link = ck_dir if ck_dir.is_symlink() else None
    pattern = "*.pt" if rank is None else f"*.rank{rank}.pt"
    files = sorted(ck_dir.glob(pattern)) if link is None and ck_dir.is_dir() else []
    link = link or next((f for f in files if f.is_symlink()), None)
    if link is not None:
        raise AdfloraError(f"{str(link)!r} is a symbolic link (nothing was read through it)",
                           "a run directory holds only its own files: delete the link, or "
                           "copy the run with `cp -rL`")
    out = []
    for f in files:
        m = CHECKPOINT_NAME.fullmatch(f.name)
        if m is not None:
            out.append(CheckpointFile(f, m["job"], int(m["round"]), int(m["rank"])))
    return out


def read_checkpoints(run_dir: str | Path, rank: int | None = 0
                     ) -> Iterator[tuple[CheckpointFile, dict[str, Any]]]:
    """``(file, payload)`` of each of :func:`checkpoint_files` (one removed since the listing,
    by a run still going, is skipped); each read by :func:`load_checkpoint`."""
    for c in checkpoint_files(run_dir, rank):
        ck = load_checkpoint(c.path)
        if ck is not None:
            yield c, ck
