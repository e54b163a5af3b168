"""What a run says while it works: stderr lines or a live bar, and ``log.txt`` in the run dir.

One numbering everywhere: rounds are 0-based as in every file (``round 9`` is the tenth), and
counts say "of": ``round 9 done (10 of 100)``.

- On a terminal (or ``progress=True``): a rich bar ``job k/N <key> ━━━ rounds 10/100 ...
  study ETA 1m 40s``; job start/end and evaluation lines print above it.
- Otherwise (a file, a pipe, a cluster log): one line per job start and end and one every
  ``every`` rounds (default a tenth of the rounds), so ``2> err.txt`` shows the run moving;
  with ``progress=False`` (``--no-progress``, the notebook API) only the job lines.
- Always: the same lines with a timestamp appended to ``<run dir>/log.txt``.

Other modules print through the active log with :func:`echo` (the GLUE evaluation lines), so
nothing overwrites the bar. Long commands without rounds (a report, the checks, a topology
sweep) say what they do with :func:`status`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

_ACTIVE: RunLog | None = None


def _console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, highlight=False)


def fmt_seconds(s: float) -> str:
    """``95.2`` -> ``'1m 35s'``.

    >>> fmt_seconds(3.25), fmt_seconds(95.2), fmt_seconds(7300)
    ('3.2s', '1m 35s', '2h 01m')
    """
    if not math.isfinite(s):
        return "?"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


class RunLog:
    """Progress of one study: ``n_jobs`` jobs of ``rounds`` rounds each.

    Parameters
    ----------
    keys : the job keys, in the order they run (finished ones included: k counts them).
    rounds : rounds per job.
    bar : live bar (True), job lines only (False), or a bar on a terminal and job and
        every-``every``-rounds lines elsewhere (None).
    every : a line every this many rounds when there is no bar (default ``ceil(rounds/10)``).
    log_path : ``log.txt`` to append to (None: none).
    enabled : False on processes that do not write (torch.distributed rank > 0).
    evaluates : job key -> ``f(t)``, whether round ``t`` of that job ends with an evaluation
        (GLUE's ``eval_every``). The ETA then adds the rounds still to train times the mean
        training round, and the evaluations still due times the mean measured evaluation
        (the hook time :meth:`round_done` is given); before the first evaluation is timed it
        says ``+ N evals``.

    The ETA with evaluations (0.1 s training rounds, a 1 s evaluation every 5th round):

    >>> import io
    >>> from rich.console import Console
    >>> log = RunLog(["a"], 20, evaluates={"a": lambda t: (t + 1) % 5 == 0},
    ...              console=Console(file=io.StringIO()))
    >>> log.job_start("a", 0)
    >>> for t in range(4):
    ...     log.round_done(t, seconds=0.1)
    >>> log._eta()                      # 16 rounds to train, 4 evaluations not yet timed
    '1.6s + 4 evals'
    >>> log.round_done(4, seconds=1.1, hook_s=1.0)
    >>> log._eta()                      # 15 x 0.1 s + 3 x 1 s
    '4.5s'

    >>> import io, tempfile, pathlib
    >>> from rich.console import Console
    >>> log = RunLog(["a", "b"], 4, every=2, console=Console(file=io.StringIO()))
    >>> with log:
    ...     log.job_start("a", 0)
    ...     for t in range(4):
    ...         log.round_done(t)
    ...     log.job_end()
    >>> for line in log.lines:
    ...     print(line.split(" ", 1)[1].split(",")[0].split(" in ")[0])
    job 1/2 a: start at round 0 (4 rounds)
    job 1/2 a: round 1 done (2 of 4)
    job 1/2 a: round 3 done (4 of 4)
    job 1/2 a: done
    """

    def __init__(self, keys: list[str], rounds: int, *, bar: bool | None = None,
                 every: int | None = None, log_path: str | Path | None = None,
                 enabled: bool = True, console=None, done: list[str] | None = None,
                 evaluates: dict[str, Callable[[int], bool]] | None = None):
        self.keys, self.rounds, self.enabled = list(keys), rounds, enabled
        self.console = console if console is not None else _console()
        self.bar = self.console.is_terminal if bar is None else bar
        self.round_lines = bar is None and not self.bar
        self.every = every or max(1, math.ceil(rounds / 10))
        self.log_path = Path(log_path) if log_path is not None else None
        self.lines: list[str] = []
        self.remaining = rounds * len([k for k in self.keys if k not in set(done or [])])
        self.rounds_run, self.t0 = 0, time.perf_counter()
        # the ETA's parts: training time (s) over rounds, evaluation time (s) over evaluations
        self.train_s, self.eval_s, self.evals_run = 0.0, 0.0, 0
        self._last = self.t0
        self.t = -1   # the current job's last finished round
        # evaluations still due per job, from its round t on: _evals[key][t]
        self._evals: dict[str, list[int]] = {}
        for key, due in (evaluates or {}).items():
            suffix = [0] * (rounds + 1)
            for t in range(rounds - 1, -1, -1):
                suffix[t] = suffix[t + 1] + bool(due(t))
            self._evals[key] = suffix
        self.evals_left = sum(self._evals[k][0] for k in self._evals
                              if k in self.keys and k not in set(done or []))
        self.job_key, self.job_t0, self.k = "", 0.0, 0
        self._progress = None
        self._task = None

    # -- context: the active log (for echo)
    def __enter__(self) -> RunLog:
        global _ACTIVE
        self._prev, _ACTIVE = _ACTIVE, self
        if self.enabled and self.bar:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(),
                TextColumn("rounds {task.completed:.0f}/{task.total:.0f}"),
                TimeElapsedColumn(), TextColumn("study ETA {task.fields[eta]}"),
                console=self.console, transient=True)
            self._progress.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        global _ACTIVE
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if exc_type is not None and self.job_key:
            self._line(f"{self._job()}: ended by {exc_type.__name__}"
                       + (f": {exc}" if str(exc) else ""))
        _ACTIVE = self._prev

    # -- events
    def job_start(self, key: str, start: int) -> None:
        """Job ``key`` starts (or resumes) at round ``start``."""
        self.job_key, self.job_t0 = key, time.perf_counter()
        self.k = self.keys.index(key) + 1 if key in self.keys else self.k + 1
        self.remaining -= start
        self._last = time.perf_counter()
        if key in self._evals:
            self.evals_left -= self._evals[key][0] - self._evals[key][start]
        what = "start" if start == 0 else "resume"
        self._line(f"{self._job()}: {what} at round {start} ({self.rounds} rounds)")
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(self._job(), total=self.rounds,
                                                 completed=start, eta=self._eta())

    def round_done(self, t: int, *, hook_s: float = 0.0, seconds: float | None = None
                   ) -> None:
        """Round ``t`` (0-based) of the current job is written; ``hook_s``: seconds of it
        spent in the round hook (an evaluation); ``seconds``: the round's duration (default:
        measured since the previous round)."""
        now = time.perf_counter()
        seconds = now - self._last if seconds is None else seconds
        self._last = now
        self.rounds_run += 1
        self.remaining -= 1
        ev = self._evals.get(self.job_key)
        if ev is not None and ev[t] - ev[t + 1]:   # an evaluation round
            self.evals_left -= 1
            self.evals_run += 1
            self.eval_s += hook_s
            self.train_s += max(seconds - hook_s, 0.0)
        else:
            self.train_s += seconds
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=t + 1, eta=self._eta())
        elif self.round_lines and ((t + 1) % self.every == 0 or t == self.rounds - 1):
            self._line(f"{self._job()}: round {t} done ({t + 1} of {self.rounds}), "
                       f"study ETA {self._eta()}")

    def job_end(self, status: str = "done") -> None:
        self._line(f"{self._job()}: {status} in "
                   f"{fmt_seconds(time.perf_counter() - self.job_t0)}")

    def echo(self, text: str) -> None:
        """A line above the bar (or on its own), also in ``log.txt``."""
        self._line(text)

    # -- helpers
    def _job(self) -> str:
        return f"job {self.k}/{len(self.keys)} {self.job_key}"

    def _eta(self) -> str:
        if self.rounds_run == 0:
            return "?"
        if not self._evals:
            per = (time.perf_counter() - self.t0) / self.rounds_run
            return fmt_seconds(max(self.remaining, 0) * per)
        left = max(self.remaining, 0) * self.train_s / self.rounds_run
        evals = max(self.evals_left, 0)
        if evals and not self.evals_run:
            return f"{fmt_seconds(left)} + {evals} evals"
        return fmt_seconds(left + (evals * self.eval_s / self.evals_run if evals else 0.0))

    def _line(self, text: str) -> None:
        if not self.enabled:
            return
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        self.lines.append(f"{stamp} {text}")
        self.console.print(f"{stamp} {text}", markup=False, highlight=False)
        if self.log_path is not None:
            iso = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            line = " ".join(text.splitlines())   # a label's newline never starts a line
            with contextlib.suppress(OSError), os.fdopen(
                    os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                            | os.O_NOFOLLOW, 0o666), "a", encoding="utf-8") as f:
                f.write(f"{iso} {line}\n")


def echo(text: str) -> None:
    """Print ``text`` through the active :class:`RunLog` (above its bar, into ``log.txt``),
    or as a plain stderr line when none is active."""
    if _ACTIVE is not None:
        _ACTIVE.echo(text)
    else:
        print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def status(text: str) -> Iterator[None]:
    """Say what a long command is doing: a spinner on a terminal, else a line at start and
    one at the end with the time taken."""
    console = _console()
    t0 = time.perf_counter()
    if console.is_terminal:
        with console.status(text):
            yield
        console.print(f"{text}: done in {fmt_seconds(time.perf_counter() - t0)}", markup=False)
        return
    console.print(f"{text} ...", markup=False)
    yield
    console.print(f"{text}: done in {fmt_seconds(time.perf_counter() - t0)}", markup=False)
