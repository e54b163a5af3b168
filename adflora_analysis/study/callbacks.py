"""The per-round callback API of the job driver: what
:func:`~adflora_analysis.study.experiment.run_jobs` calls (:class:`Callback`:
``on_run_start(RunInfo)``, ``on_round_end(RoundInfo)``, ``on_run_end(status)``) and how a
callback's failure ends a run (:class:`CallbackError`).

The study layer owns this protocol; the live trackers built on it (TensorBoard, MLflow,
``--track``) live in the app layer, :mod:`adflora_analysis.tracking`, which re-exports these
names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adflora_analysis.errors import AdfloraError


@dataclass(frozen=True)
class RunInfo:
    """What a run is, given to :meth:`Callback.on_run_start`.

    ``path``: the run directory; ``config``: the resolved config (``config.toml``; empty for a
    bare :func:`~.study.experiment.run_jobs` folder); ``jobs``: job keys in run order;
    ``rounds``: rounds per job; ``resume``: continuing an earlier run; ``kind``: ``synthetic``,
    ``glue`` or None.
    """

    path: Path | None
    config: dict[str, Any]
    jobs: list[str]
    rounds: int
    resume: bool = False
    kind: str | None = None


@dataclass(frozen=True)
class RoundInfo:
    """One finished round of one job, given to :meth:`Callback.on_round_end`.

    ``rows``: the ``metrics`` rows just written (one per seed and layer; ``layer == "all"``
    holds totals); ``tables``: the extra tables' rows of the round by table name (e.g.
    ``{"eval": [...]}``, empty when the round wrote none); ``wall_time``: Unix time (s) at
    the end of the round; ``seconds``: the round's duration (s), its extra tables included;
    ``labels``: the job's constant columns (``variant``, ``switch_interval``, ...).
    """

    job: str
    method: str
    seeds: list[int]
    round: int
    rows: list[dict[str, Any]]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    wall_time: float = 0.0
    seconds: float = 0.0
    labels: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Base class of a run's callbacks: override any of the three hooks (each a no-op here).

    >>> class Rounds(Callback):
    ...     def __init__(self):
    ...         self.seen = []
    ...     def on_round_end(self, info):
    ...         self.seen.append((info.job, info.round))
    >>> import adflora_analysis as af
    >>> cb = Rounds()
    >>> _ = af.run_synthetic(n_clients=4, rounds=2, seeds=1, d_in=4, d_out=4,
    ...                      methods=["adf-lora", "lora"], callbacks=[cb])
    >>> cb.seen
    [('adf-lora', 0), ('adf-lora', 1), ('lora', 0), ('lora', 1)]
    """

    #: the name an error line gives (default: the class name)
    name: str | None = None
    def run_files(self) -> list[str]:
        """The files this callback wrote inside the run directory so far, relative to it;
        the driver adds them to the run's manifest after every hook (so ``--overwrite``
        removes them). Default: none."""
        return []

    def on_run_start(self, run: RunInfo) -> None:
        """Before the first round (also of a resumed run)."""

    def on_round_end(self, info: RoundInfo) -> None:
        """After each round, its rows on disk."""

    def on_run_end(self, status: str) -> None:
        """Once, with the run's final status (``done``, ``stopped``, ``diverged``,
        ``failed``)."""


class CallbackError(AdfloraError):
    """A callback raised: the run stopped (resumable), naming the callback, round and job."""


def callback_name(cb: Any) -> str:
    """The name error lines give ``cb``: its ``name``, else its class (or function) name."""
    return getattr(cb, "name", None) or getattr(cb, "__name__", None) or type(cb).__name__


class _FunctionCallback(Callback):
    """A plain function ``f(info)`` as a callback's ``on_round_end``."""

    def __init__(self, fn: Any):
        self.fn, self.name = fn, callback_name(fn)

    def on_round_end(self, info: RoundInfo) -> None:
        self.fn(info)


def _as_callback(cb: Any) -> Any:
    """``cb`` if it has a hook, a plain function as its ``on_round_end``; else one line.

    >>> _as_callback("tensorboard")
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: callback 'tensorboard' is not a Callback ...
    """
    if any(hasattr(cb, h) for h in ("on_run_start", "on_round_end", "on_run_end")):
        return cb
    if callable(cb):
        return _FunctionCallback(cb)
    raise AdfloraError(f"callback {cb!r} is not a Callback (it has none of on_run_start, "
                       "on_round_end, on_run_end) and is not a function",
                       "pass Callback objects or functions f(info); built-in trackers by "
                       "name go to track=[...]")


class Callbacks:
    """The callbacks of one run, called in order; an exception of one becomes one
    :class:`CallbackError` line."""

    def __init__(self, callbacks: Iterable[Any] | None, run_dir: Path | None = None):
        self.items = [_as_callback(cb) for cb in (callbacks or [])]
        self.run_dir = run_dir

    def __bool__(self) -> bool:
        return bool(self.items)

    def _call(self, hook: str, arg: Any, where: str) -> None:
        for cb in self.items:
            fn = getattr(cb, hook, None)
            if fn is None:
                continue
            try:
                fn(arg)
            except Exception as e:
                msg = " ".join(str(e).splitlines()) or "(no message)"
                resume = (f"continue the run with --resume {self.run_dir}"
                          if self.run_dir is not None else "run it again")
                raise CallbackError(f"callback {callback_name(cb)} raised "
                                    f"{type(e).__name__}: {msg} {where}",
                                    f"fix the callback; {resume}") from e

    def run_start(self, run: RunInfo) -> None:
        self._call("on_run_start", run, "before the first round")

    def round_end(self, info: RoundInfo) -> None:
        self._call("on_round_end", info, f"in round {info.round} of job {info.job}")

    def run_end(self, status: str, *, quiet: bool = False) -> None:
        """Every callback's ``on_run_end``; with ``quiet`` (the run already failed) their
        errors are dropped so the first error stays the one reported."""
        if quiet:
            for cb in self.items:
                with contextlib.suppress(Exception):
                    getattr(cb, "on_run_end", lambda s: None)(status)
            return
        self._call("on_run_end", status, f"at the end of the run (status {status})")


def read_config(path: Path | None) -> dict[str, Any]:
    from adflora_analysis.rundir import CONFIG

    if path is None or not (path / CONFIG).is_file():
        return {}
    from adflora_analysis.config import read_toml

    try:
        return read_toml(path / CONFIG)
    except (AdfloraError, OSError):
        return {}
