"""Drive a study's jobs through the round loop into a run directory, with checkpoints and resume.

Shared by ``adflora synthetic run`` and ``adflora glue run`` (docs/architecture.md §8). A *job* is one method
on one batch of seeds (the synthetic testbed runs all seeds of a method as one batch; the GLUE
runner one seed per job). After every round its rows are appended to ``metrics.jsonl`` (and any
extra tables, e.g. ``eval.jsonl``); every ``checkpoint_every`` rounds the job's state is saved
atomically under ``checkpoints/``. On resume, finished jobs are skipped, the running job restarts
from its last checkpoint, and rows written after that checkpoint are dropped first, so a killed
and resumed run ends with exactly the rows of an uninterrupted one. ``metrics.parquet`` (and one
Parquet file per extra table) is written at the end, and also when a run stops on a divergence.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from adflora_analysis import fileio
from adflora_analysis.config import config_diff, read_toml
from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.loop import Problem, RoundResult, run_rounds
from adflora_analysis.core.methods import MethodSpec
from adflora_analysis.core.rows import round_rows
from adflora_analysis.core.state import LoraState
from adflora_analysis.errors import AdfloraError, DivergenceError


@dataclass
class Job:
    """One method on one batch of seeds.

    ``build()`` returns ``(problem, initial_state, mixing)`` (see
    :func:`adflora_analysis.core.loop.run_rounds`); it is called once per job, also on resume.
    ``extra`` is added to every row (e.g. ``{"switch_interval": 5}``). ``server``: the mixing
    is a server's exact average (message count, see :func:`~adflora_analysis.core.messages`).
    """

    key: str
    method: MethodSpec
    seeds: list[int]
    build: Callable[[], tuple[Problem, LoraState, Callable[[int], Any]]]
    switch_interval: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    server: bool = False


OnRound = Callable[[Job, Problem, RoundResult], dict[str, list[dict]]]


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)


def check_resume_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    """Refuse to resume ``run_dir`` with a config that differs from the one it was started with,
    naming the differing keys."""
    p = Path(run_dir) / "config.toml"
    if not p.exists():
        raise AdfloraError(f"{str(run_dir)!r} is not a run directory (no config.toml)",
                           "pass the directory a run wrote with --out")
    diff = config_diff(read_toml(p), json.loads(json.dumps(config)))
    if diff:
        raise AdfloraError(f"cannot resume {str(run_dir)!r}: the config differs in "
                           f"{', '.join(diff)}", "resume with the original config, or start a "
                           "new run directory")


def check_resume_world_size(run_dir: str | Path, world_size: int) -> None:
    """Refuse to resume a run with another number of processes than it was started with
    (``world_size`` in its ``meta.json``; 1 for an in-process run)."""
    p = Path(run_dir) / "meta.json"
    started = json.loads(p.read_text()).get("world_size", 1) if p.exists() else 1
    if started != world_size:
        raise AdfloraError(f"cannot resume {str(run_dir)!r}: it was run by {started} "
                           f"process(es), this run has {world_size}",
                           f"resume with --nproc-per-node={started}" if started > 1
                           else "resume without torchrun")


def _ckpt_path(ckpt_dir: Path, key: str, t: int, rank: int) -> Path:
    return ckpt_dir / f"{_slug(key)}.r{t:06d}.rank{rank}.pt"


def _ckpt_rounds(ckpt_dir: Path, key: str) -> dict[int, set[int]]:
    """round -> ranks that saved their part, for job ``key``."""
    out: dict[int, set[int]] = {}
    for f in ckpt_dir.glob(f"{_slug(key)}.r*.rank*.pt"):
        m = re.fullmatch(re.escape(_slug(key)) + r"\.r(\d+)\.rank(\d+)\.pt", f.name)
        if m:
            out.setdefault(int(m[1]), set()).add(int(m[2]))
    return out


def latest_checkpoint(ckpt_dir: Path, key: str, backend: Backend) -> tuple[int, dict] | None:
    """This process's part of the newest checkpoint of ``key`` that every process completed.

    A checkpoint written by a different number of processes is refused with a clear message.
    """
    rounds = _ckpt_rounds(ckpt_dir, key)
    if not rounds:
        return None
    ranks_seen = set().union(*rounds.values())
    if max(ranks_seen) >= backend.world_size or any(
            len(r) != len(ranks_seen) for r in rounds.values() if max(r) >= backend.world_size):
        raise AdfloraError(f"checkpoints of {key!r} were written by {max(ranks_seen) + 1} "
                           f"processes, this run has {backend.world_size}",
                           "resume with the same number of processes (--nproc-per-node)")
    full = [t for t, r in rounds.items() if r == set(range(backend.world_size))]
    if not full:
        return None
    t = max(full)
    ck = _load_checkpoint(_ckpt_path(ckpt_dir, key, t, backend.rank))
    if ck.get("world_size", 1) != backend.world_size:
        raise AdfloraError(f"checkpoint of {key!r} was written by {ck.get('world_size')} "
                           f"processes, this run has {backend.world_size}",
                           "resume with the same number of processes (--nproc-per-node)")
    return t, ck


def _save_checkpoint(ckpt_dir: Path, job: Job, res: RoundResult, problem: Problem,
                     backend: Backend) -> None:
    payload = {"round": res.t, "job": job.key, "state": res.state.to_dict(),
               "world_size": backend.world_size, "rank": backend.rank,
               "problem": problem.state_dict() if hasattr(problem, "state_dict") else None}
    fileio.save_torch(_ckpt_path(ckpt_dir, job.key, res.t, backend.rank), payload)
    # keep this and the previous complete checkpoint; older parts of this rank go
    for t in sorted(_ckpt_rounds(ckpt_dir, job.key))[:-2]:
        _ckpt_path(ckpt_dir, job.key, t, backend.rank).unlink(missing_ok=True)


def _load_checkpoint(path: Path) -> dict | None:
    import torch

    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise AdfloraError(f"checkpoint {str(path)!r} is corrupt ({type(e).__name__}: {e})",
                           "delete it to restart that job from round 0") from None


def run_jobs(run_dir: str | Path, jobs: list[Job], rounds: int, *, checkpoint_every: int = 0,
             resume: bool = False, on_round: OnRound | None = None,
             progress: bool | None = None, stop_after: int | None = None,
             backend: Backend = LOCAL) -> pd.DataFrame:
    """Run every job for ``rounds`` rounds; return the metrics table.

    Under torch.distributed (``backend`` from :mod:`adflora_analysis.distributed`) every process
    runs this with its own clients; rank 0 alone writes rows and tables, and every rank saves
    its clients' part of each checkpoint (``<job>.r<round>.rank<r>.pt``); a resume takes the
    newest round that every rank completed and needs the same number of processes.

    ``on_round(job, problem, result)`` may return extra rows by table name (e.g. ``"eval"``).
    ``stop_after`` (testing) ends the run after that many rounds in total, as a kill would.
    """
    run_dir = Path(run_dir)
    _set_status(run_dir, backend.rank == 0, status="running")
    ckpt_dir = run_dir / "checkpoints"
    progress_path = run_dir / "progress.json"
    done: list[str] = json.loads(progress_path.read_text())["done"] if (
        resume and progress_path.exists()) else []
    writer = backend.rank == 0
    if writer:
        # tables are rebuilt from the jsonl rows at the end: a Parquet file left from before
        # would be stale (a fresh run, or a resumed run killed again before it finished)
        for f in run_dir.glob("*.jsonl"):
            run_dir.joinpath(f.stem + ".parquet").unlink(missing_ok=True)
            if not resume:
                f.unlink()
        if not resume:  # a fresh run in a used directory forgets the old run entirely
            run_dir.joinpath("metrics.parquet").unlink(missing_ok=True)
            progress_path.unlink(missing_ok=True)
            for f in ckpt_dir.glob("*.pt"):
                f.unlink()
    show = (sys.stderr.isatty() if progress is None else progress) and writer
    tables: set[str] = {"metrics"} | {p.stem for p in run_dir.glob("*.jsonl")}
    rounds_run = 0
    try:
        for job in jobs:
            if job.key in done:
                continue
            problem, state, mixing = job.build()
            start = 0
            ck = latest_checkpoint(ckpt_dir, job.key, backend) if resume else None
            if ck is not None:
                start = ck[0] + 1
                saved = LoraState.from_dict(ck[1]["state"])
                # checkpoints hold CPU tensors: put them where the job's state lives
                state = LoraState([a.to(state.A[0]) for a in saved.A],
                                  [b.to(state.B[0]) for b in saved.B], saved.layers)
                if hasattr(problem, "load_state_dict") and ck[1].get("problem") is not None:
                    problem.load_state_dict(ck[1]["problem"])
            if resume and writer:  # drop rows of this job written after its checkpoint
                for name in tables:
                    fileio.truncate_jsonl(run_dir / f"{name}.jsonl",
                                      lambda r, k=job.key, s=start: r.get("job") != k
                                      or r["round"] < s)
            bar = _progress(show, job.key, rounds, start)
            for res in run_rounds(problem, job.method, state, mixing, rounds=rounds,
                                  switch_interval=job.switch_interval, start_round=start,
                                  backend=backend, server=job.server):
                extra_tables = on_round(job, problem, res) if on_round else {}
                if writer:
                    rows = round_rows(res, job.method.name, job.seeds,
                                      {"job": job.key, **job.extra})
                    fileio.append_jsonl(run_dir / "metrics.jsonl", rows)
                    for name, extra_rows in extra_tables.items():
                        tables.add(name)
                        for r in extra_rows:
                            r.setdefault("job", job.key)
                            r.setdefault("round", res.t)
                        fileio.append_jsonl(run_dir / f"{name}.jsonl", extra_rows)
                if checkpoint_every and ((res.t + 1) % checkpoint_every == 0
                                         or res.t == rounds - 1):
                    _save_checkpoint(ckpt_dir, job, res, problem, backend)
                if bar:
                    bar.update(1)
                rounds_run += 1
                if stop_after is not None and rounds_run >= stop_after:
                    _set_status(run_dir, writer, status="stopped")
                    return _finish(run_dir, tables, writer)
                del res  # hold no reference to the live state while the next round runs
            if bar:
                bar.close()
            done.append(job.key)
            if writer:
                fileio.write_json(progress_path, {"done": done})
    except DivergenceError as e:
        _set_status(run_dir, writer, status="diverged", error=str(e))
        _finish(run_dir, tables, writer)
        raise
    _set_status(run_dir, writer, status="done")
    return _finish(run_dir, tables, writer)


def _set_status(run_dir: Path, writer: bool, **fields: Any) -> None:
    """Record how the run ended in ``meta.json`` (``done``, ``stopped`` or ``diverged``)."""
    if writer and (run_dir / "meta.json").exists():
        from adflora_analysis.rundir import update_meta

        update_meta(run_dir, **fields)


def _progress(show: bool, desc: str, total: int, start: int):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=desc, leave=False, file=sys.stderr)


def _finish(run_dir: Path, tables: set[str], writer: bool = True) -> pd.DataFrame:
    out = pd.DataFrame()
    if not writer:
        return out
    for name in sorted(tables):
        rows = fileio.read_jsonl(run_dir / f"{name}.jsonl")
        df = pd.DataFrame(rows)
        if rows:
            fileio.write_parquet(run_dir / f"{name}.parquet", df)
        if name == "metrics":
            out = df
    return out
