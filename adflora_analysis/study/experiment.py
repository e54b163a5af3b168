"""Drive a study's jobs through the round loop into a run directory, with checkpoints and resume.

Shared by ``adflora synthetic run`` and ``adflora glue run`` (docs/architecture.md §8).
A *job* is one method on one batch of seeds (the synthetic testbed runs all seeds of a method
as one batch; the GLUE runner one seed per job). After every round its rows are appended to
``metrics.jsonl`` (and any extra tables, e.g. ``eval.jsonl``); every ``checkpoint_every``
rounds the job's state is saved
atomically under ``checkpoints/``. On resume, the rows on disk are first verified against the
checkpoints (every seed and round of every finished job, and of the running job up to its
checkpoint, present exactly once; a torn line only at the end), finished jobs are skipped, the
running job restarts from its last checkpoint, and rows written after that checkpoint are
dropped, so a killed and resumed run ends with exactly the rows of an uninterrupted one.

The run's status in ``meta.json`` (:mod:`adflora_analysis.rundir`) is ``running`` while it runs,
then ``done``; ``diverged`` at the first non-finite factor, metric or extra-table value (e.g.
an evaluation loss; no non-finite row is written); ``stopped`` on SIGINT/SIGTERM (one line,
resumable), ``stop_after`` or a raising callback (one :class:`~adflora_analysis.tracking.
CallbackError` line, resumable); ``failed`` on any other error. ``metrics.parquet`` (and one
Parquet file per extra table) is written whenever the run ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from adflora_analysis import fileio
from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.loop import Problem, RoundResult, run_rounds
from adflora_analysis.core.methods import MethodSpec
from adflora_analysis.core.mixers import Mixer
from adflora_analysis.core.rows import round_rows
from adflora_analysis.core.schedules import SwitchSchedule
from adflora_analysis.core.state import LoraState
from adflora_analysis.errors import AdfloraError, DivergenceError, StoppedError
from adflora_analysis.progress import RunLog
from adflora_analysis.rundir import (
    CHECKPOINTS,
    PROGRESS,
    RunDir,
    claim,
    job_slug,
    latest_checkpoint,
    os_error,
    read_json,
    save_checkpoint,
    verify_rows,
    verify_table,
)
from adflora_analysis.study.callbacks import CallbackError, Callbacks, RoundInfo, RunInfo


@dataclass
class Job:
    """One method on one batch of seeds.

    ``build()`` returns ``(problem, initial_state, mixing)`` (see
    :func:`adflora_analysis.core.loop.run_rounds`); it is called once per job, also on resume.
    ``extra`` is added to every row (e.g. ``{"switch_interval": 5}``). ``server``: the mixing
    is a server's exact average (message count, see :func:`~adflora_analysis.core.messages`).
    ``schedule`` and ``mixer``: the round's extension points (docs/architecture.md §9); None
    takes ``periodic(switch_interval)`` and synchronous gossip. Their state is checkpointed.
    ``evaluates(t)``: whether the round hook does an evaluation after round ``t`` (the
    progress ETA counts those rounds apart; None: no round is special).
    """

    key: str
    method: MethodSpec
    seeds: list[int]
    build: Callable[[], tuple[Problem, LoraState, Callable[[int], Any]]]
    switch_interval: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    server: bool = False
    schedule: SwitchSchedule | None = None
    mixer: Mixer | None = None
    evaluates: Callable[[int], bool] | None = None


OnRound = Callable[[Job, Problem, RoundResult], dict[str, list[dict]]]


def run_jobs(run_dir: str | Path | RunDir, jobs: list[Job], rounds: int, *,
             checkpoint_every: int = 0, resume: bool = False, on_round: OnRound | None = None,
             progress: bool | None = None, stop_after: int | None = None,
             backend: Backend = LOCAL, callbacks: list[Any] | None = None) -> pd.DataFrame:
    """Run every job for ``rounds`` rounds; return the metrics table.

    ``run_dir``: a :class:`~adflora_analysis.rundir.RunDir` its runner has claimed, or a path,
    which is then claimed here (new or empty, or an earlier run when ``resume``).

    Under torch.distributed (``backend`` from :mod:`adflora_analysis.distributed`) every process
    runs this with its own clients; rank 0 alone writes rows and tables, and every rank saves
    its clients' part of each checkpoint (``<job>.r<round>.rank<r>.pt``); a resume takes the
    newest round that every rank completed and needs the same number of processes.

    ``on_round(job, problem, result)`` may return extra rows by table name (e.g. ``"eval"``).
    ``stop_after`` (testing) ends the run after that many rounds in total, as a kill would.
    ``callbacks``: :class:`~adflora_analysis.tracking.Callback` objects (rank 0 only); one
    that raises stops the run (status ``stopped``, resumable) with one
    :class:`~adflora_analysis.tracking.CallbackError` line.
    """
    if isinstance(run_dir, RunDir):
        return _Driver(run_dir, rounds, checkpoint_every, resume, on_round, progress,
                       stop_after, backend, callbacks).run(jobs)
    with claim(run_dir, None, "resume" if resume else "new",
               writer=backend.rank == 0) as run:
        return _Driver(run, rounds, checkpoint_every, resume, on_round, progress, stop_after,
                       backend, callbacks).run(jobs)


class _Stop(BaseException):
    """Raised by the SIGINT/SIGTERM handler (a BaseException: no ``except Exception`` eats it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`_Stop` for the ``with`` block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for sig in (signal.SIGINT, signal.SIGTERM):   # a second signal while the stop
            signal.signal(sig, signal.SIG_IGN)        # writes the run's status is ignored
        raise _Stop(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class _Driver:
    """One call of :func:`run_jobs`: the shared settings and where the run is."""

    def __init__(self, run: RunDir, rounds: int, checkpoint_every: int, resume: bool,
                 on_round: OnRound | None, progress: bool | None, stop_after: int | None,
                 backend: Backend, callbacks: list[Any] | None = None):
        self.run_dir, self.rounds, self.every = run, rounds, checkpoint_every
        self.resume, self.on_round, self.stop_after = resume, on_round, stop_after
        self.backend = backend
        self.writer = backend.rank == 0
        run.writer = run.writer and self.writer
        self.progress = progress   # a bar (True), lines (False), a bar on a terminal (None)
        self.ckpt_dir = run.path / CHECKPOINTS
        #: the run's config hash (meta.json; None for a bare folder run_jobs claimed itself)
        self._fingerprint: str | None = None
        self.tables: set[str] = {"metrics"}
        self.done: list[str] = []
        self.rounds_run = 0
        self.where = "before the first round"
        self.callbacks = Callbacks(callbacks if self.writer else None, run.path)
        self.ended = False   # on_run_end called

    @property
    def fingerprint(self) -> str | None:
        """The run's config hash (``meta.json``; None for a bare folder run_jobs claimed
        itself), read on first use, not when the driver is made: under torch.distributed
        rank 0 writes meta.json while the other ranks may already be here, and every rank
        passes a collective (so rank 0 has written it) before its first checkpoint."""
        if self._fingerprint is None:
            self._fingerprint = self.run_dir.meta.get("config_hash")
        return self._fingerprint

    # -- the run
    def run(self, jobs: list[Job]) -> pd.DataFrame:
        run = self.run_dir
        self._prepare(jobs)
        try:
            with _stop_on_signals(), self._log(jobs):
                self._run_start(jobs)
                for job in jobs:
                    if job.key not in self.done and self._run_job(job):
                        return self._end("stopped")
                return self._end("done")
        except CallbackError as e:
            if self.ended:   # on_run_end raised: the run's status stands
                raise
            self._finish()
            run.set_status("stopped", error=str(e))
            self.callbacks.run_end("stopped", quiet=True)
            raise
        except DivergenceError as e:
            run.set_status("diverged", error=str(e))
            self._finish()
            self.callbacks.run_end("diverged", quiet=True)
            raise
        except _Stop as e:
            name = signal.Signals(e.signum).name
            self._finish()
            run.set_status("stopped", error=f"{name} {self.where}")
            self.callbacks.run_end("stopped", quiet=True)
            raise StoppedError(f"stopped by {name} {self.where}; rows up to the last "
                               "completed round are kept",
                               f"continue it with --resume {run.path}", e.signum) from None
        except OSError as e:
            with contextlib.suppress(OSError):
                run.set_status("failed", error=f"{type(e).__name__}: {e}")
            self.callbacks.run_end("failed", quiet=True)
            raise os_error(run.path, e) from None
        except RuntimeError as e:
            if "overflow" not in str(e):  # e.g. AdamW: "cannot be converted ... overflow"
                run.set_status("failed", error=f"{type(e).__name__}: {e}")
                self.callbacks.run_end("failed", quiet=True)
                raise
            div = DivergenceError(f"numerical overflow {self.where} ({e})",
                                  "lower the step size (lr); metrics up to the previous "
                                  "round are kept")
            run.set_status("diverged", error=str(div))
            self._finish()
            self.callbacks.run_end("diverged", quiet=True)
            raise div from None
        except AdfloraError as e:
            if type(e).__name__ != "PeerLostError":   # a lost torch.distributed peer
                with contextlib.suppress(Exception):
                    run.set_status("failed", error=f"{type(e).__name__}: {e}")
                self.callbacks.run_end("failed", quiet=True)
                raise
            with contextlib.suppress(Exception):
                self._finish()
                run.set_status("stopped", error=e.problem)
            self.callbacks.run_end("stopped", quiet=True)
            raise type(e)(e.problem, (e.hint or "").replace(
                "--resume DIR (the run's --out)", f"--resume {run.path}")) from None
        except BaseException as e:
            with contextlib.suppress(Exception):
                run.set_status("failed", error=f"{type(e).__name__}: {e}")
            self.callbacks.run_end("failed", quiet=True)
            raise

    def _run_start(self, jobs: list[Job]) -> None:
        """Every callback's ``on_run_start`` (writer only)."""
        if not self.callbacks:
            return
        from adflora_analysis.study.callbacks import read_config

        self.callbacks.run_start(RunInfo(self.run_dir.path, read_config(self.run_dir.path),
                                         [j.key for j in jobs], self.rounds, self.resume,
                                         self.run_dir.meta.get("kind")))
        self._record_callback_files()

    def _record_callback_files(self) -> None:
        """Add the files the callbacks wrote in the run directory to its manifest."""
        for cb in self.callbacks.items:
            files = getattr(cb, "run_files", None)
            if callable(files):
                self.run_dir.record(*files())

    def _end(self, status: str) -> pd.DataFrame:
        """Write the tables, then the status: ``done`` only once they are all on disk."""
        df = self._finish()
        self.run_dir.set_status(status, error=None)
        self.ended = True
        self.callbacks.run_end(status)
        self._record_callback_files()
        return df

    def _prepare(self, jobs: list[Job]) -> None:
        """Status ``running``; on resume verify the rows against the checkpoints, drop rows
        after each checkpoint and forget tables and checks of the interrupted run."""
        run = self.run_dir
        run.set_status("running")
        if run.writer:
            run.record("log.txt", *(f"{t}.jsonl" for t in self.tables),
                       patterns=tuple(f"{CHECKPOINTS}/{job_slug(j.key)}.r*.rank*.pt"
                                      for j in jobs))
        if not self.resume:
            return
        p = run.path / PROGRESS
        self.done = list(read_json(p, "progress.json").get("done", [])) if p.exists() else []
        # tables are the .jsonl files this run wrote (its manifest), never a user's file
        self.tables |= {Path(f).stem for f in run.manifest().get("files", [])
                        if f.endswith(".jsonl") and "/" not in f}
        if not self.writer:
            return
        starts = {j.key: self._checkpoint_round(j) for j in jobs}
        verify_rows(run.path / "metrics.jsonl", [(j.key, list(j.seeds)) for j in jobs],
                    self.done, starts, self.rounds, self.fingerprint)
        for name in self.tables:
            if name != "metrics":
                verify_table(run.path / f"{name}.jsonl", self.fingerprint)
            fileio.truncate_jsonl(run.path / f"{name}.jsonl",
                                  lambda r: r.get("job") in self.done
                                  or r["round"] < starts.get(r.get("job"), 0))
            # rebuilt from the rows at the end; one left from before would be stale
            run.path.joinpath(f"{name}.parquet").unlink(missing_ok=True)
        run.invalidate_checks()

    def _checkpoint_round(self, job: Job) -> int:
        ck = latest_checkpoint(self.ckpt_dir, job.key, self.backend.rank,
                              self.backend.world_size, self.fingerprint)
        return 0 if ck is None else ck[0] + 1

    def _log(self, jobs: list[Job]) -> RunLog:
        """Progress on stderr and in ``log.txt`` (rank 0 only; :mod:`adflora_analysis.progress`)."""
        self.run_dir.record("log.txt")
        self.log = RunLog([j.key for j in jobs], self.rounds, bar=self.progress,
                          log_path=self.run_dir.path / "log.txt", enabled=self.writer,
                          done=self.done,
                          evaluates={j.key: j.evaluates for j in jobs if j.evaluates})
        return self.log

    def _run_job(self, job: Job) -> bool:
        """Run one job from its checkpoint (if resuming); True if ``stop_after`` ended it."""
        problem, state, mixing = job.build()
        start, state, carry = self._restore(job, problem, state)
        self.log.job_start(job.key, start)
        self.where = f"in round {start} of job {job.key!r}"
        t0 = time.perf_counter()
        for res in run_rounds(problem, job.method, state, mixing, rounds=self.rounds,
                              switch_interval=job.switch_interval, schedule=job.schedule,
                              mixer=job.mixer, carry=carry, start_round=start,
                              backend=self.backend, server=job.server):
            self.where = f"in round {res.t} of job {job.key!r}"
            check_finite_metrics(res, job, getattr(problem, "thinned_columns", frozenset()))
            h0 = time.perf_counter()
            extra = self.on_round(job, problem, res) if self.on_round else {}
            hook_s = time.perf_counter() - h0
            check_finite_rows(extra, res.t, job)
            rows = self._write_rows(job, res, extra)
            if self.callbacks:
                now = time.perf_counter()
                self.callbacks.round_end(RoundInfo(
                    job.key, job.method.name, list(job.seeds), res.t, rows, extra,
                    time.time(), now - t0, dict(job.extra)))
                self._record_callback_files()
                t0 = now
            if self.every and ((res.t + 1) % self.every == 0 or res.t == self.rounds - 1):
                save_checkpoint(self.ckpt_dir, job.key, res.t, state=res.state.to_dict(),
                                problem=problem.state_dict(), carry=res.carry,
                                rank=self.backend.rank, world_size=self.backend.world_size,
                                config_hash=self.fingerprint)
            self.where = f"in round {res.t + 1} of job {job.key!r}"
            self.log.round_done(res.t, hook_s=hook_s)
            self.rounds_run += 1
            if self.stop_after is not None and self.rounds_run >= self.stop_after:
                return True
            del res  # hold no reference to the live state while the next round runs
        self.log.job_end()
        self.done.append(job.key)
        if self.writer:
            self.run_dir.write_json(PROGRESS, {"done": self.done})
        return False

    def _restore(self, job: Job, problem: Problem, state: LoraState
                 ) -> tuple[int, LoraState, dict | None]:
        """(first round to run, state, the schedule's and mixer's carried state) of ``job``."""
        ck = (latest_checkpoint(self.ckpt_dir, job.key, self.backend.rank,
                                self.backend.world_size, self.fingerprint)
              if self.resume else None)
        if ck is None:
            return 0, state, None
        # checkpoints hold CPU tensors: put them (and the mixer's carried copies) where the
        # job's state lives
        saved = LoraState.from_dict(ck[1]["state"]).to(state.A[0])
        if set(saved.extra) != set(state.extra):
            raise AdfloraError(
                f"checkpoint of {job.key!r} holds the blocks {sorted(saved.extra) or 'none'} "
                f"beside A and B, this run has {sorted(state.extra) or 'none'} (a checkpoint "
                "written before the GLUE head became a gossiped block of the state)",
                "start the run again with --overwrite")
        if ck[1].get("problem") is not None:
            problem.load_state_dict(ck[1]["problem"])
        return ck[0] + 1, saved, _to_device(ck[1].get("carry"), state.A[0].device)

    def _write_rows(self, job: Job, res: RoundResult, extra: dict[str, list[dict]]
                    ) -> list[dict]:
        """Append the round's metrics rows and extra tables (rank 0); return the rows."""
        if not self.writer:
            return []
        rows = round_rows(res, job.method.name, job.seeds, {"job": job.key, **job.extra})
        self.run_dir.append_jsonl("metrics.jsonl", rows)
        for name, extra_rows in extra.items():
            self.tables.add(name)
            for r in extra_rows:
                r.setdefault("job", job.key)
                r.setdefault("round", res.t)
            self.run_dir.append_jsonl(f"{name}.jsonl", extra_rows)
        return rows

    def _finish(self) -> pd.DataFrame:
        out = pd.DataFrame()
        if not self.writer:
            return out
        for name in sorted(self.tables):
            rows = fileio.read_jsonl(self.run_dir.path / f"{name}.jsonl")
            df = pd.DataFrame(rows)
            if rows:
                self.run_dir.write_parquet(f"{name}.parquet", df)
            if name == "metrics":
                out = df
        return out


def check_finite_metrics(res: RoundResult, job: Job,
                         thinned: frozenset[str] = frozenset()) -> None:
    """Raise :class:`DivergenceError` at the first non-finite round metric (per layer or
    scalar: losses, gradient norms, consensus errors, ...), naming it, the round, method and
    seed, before any row of the round is written. On a round the problem did not measure
    (``measured`` 0: ``measure_every > 1``) the columns it declares skipped (``thinned``: the
    problem's ``thinned_columns``) are NaN by design, so NaN is allowed in those and nowhere
    else; ±inf never."""
    import torch

    m = res.scalar.get("measured")
    skipped = m is not None and bool((m.detach().reshape(-1) == 0).all())
    for group in (res.scalar, res.layer):
        for name, v in group.items():
            v = v.detach().reshape(len(job.seeds), -1)
            bad = torch.isinf(v) if skipped and name in thinned else ~torch.isfinite(v)
            if bad.any():
                i = int(bad.any(-1).nonzero()[0, 0])
                val = float(v[i][bad[i]][0])
                raise DivergenceError(
                    f"non-finite {name} = {val} at round {res.t} (method {job.method.name}, "
                    f"seed {job.seeds[i]}, a metric over all clients)",
                    "lower the step size (lr); metrics up to the previous round are kept")


def check_finite_rows(tables: dict[str, list[dict]], t: int, job: Job) -> None:
    """Raise :class:`DivergenceError` at the first non-finite number in a round's extra rows
    (e.g. a GLUE evaluation loss), naming table, column, round and method, before any row of
    the round is written.

    >>> from types import SimpleNamespace as NS
    >>> job = NS(key="adf-lora", method=NS(name="adf-lora"))
    >>> check_finite_rows({"eval": [{"accuracy": 0.7, "loss": 0.5}]}, 3, job)
    >>> bad = {"eval": [{"accuracy": 0.7, "loss": float("nan")}]}
    >>> check_finite_rows(bad, 3, job)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.DivergenceError: non-finite loss = nan in the eval table ... (hint: ...)
    """
    import math

    for name, rows in tables.items():
        for row in rows:
            for col, v in row.items():
                if isinstance(v, float) and not math.isfinite(v):
                    raise DivergenceError(
                        f"non-finite {col} = {v} in the {name} table at round {t} "
                        f"(method {job.method.name}, job {job.key!r})",
                        "lower the step size (lr); rows up to the previous round are kept")


def _to_device(obj: Any, device: Any) -> Any:
    """``obj`` (nested dicts, lists and tuples of tensors and numbers) with every tensor on
    ``device``.

    >>> import torch
    >>> _to_device({"a": [torch.zeros(1)], "b": 2}, "cpu")["a"][0].device.type
    'cpu'
    """
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj
