"""Per-round callbacks and live experiment trackers (TensorBoard, MLflow) of a run.

:func:`adflora_analysis.study.experiment.run_jobs` (and so ``adflora synthetic run``, ``adflora glue
run``, :func:`adflora_analysis.api.run_synthetic`) calls every :class:`Callback` it is given,
like the Hugging Face Trainer's ``TrainerCallback``:

- ``on_run_start(run)``: once, before the first round (:class:`RunInfo`);
- ``on_round_end(info)``: after every round of every job, once its rows are on disk
  (:class:`RoundInfo`: job key, method, seeds, round, the rows just written, the extra
  tables' rows, wall-clock time);
- ``on_run_end(status)``: once, with the status the run ended with (``done``, ``stopped``,
  ``diverged``, ``failed``).

A callback that raises ends the run cleanly: status ``stopped`` in ``meta.json`` (resumable:
the rows up to the last checkpoint are kept, as after a kill) and one
:class:`CallbackError` line (``adflora`` exits 2). Callbacks run on the writing process only
(rank 0 under torch.distributed).

Built-in trackers (``--track tensorboard|mlflow``, :func:`make_trackers`):

- :class:`TensorBoardTracker`: event files under ``<run>/tb/`` (or a ``--logdir``), one
  TensorBoard run per job and seed (``<job>/seed<s>``), flushed every round with the round's
  real wall-clock time; the resolved config as HParams (the ``hparams`` plugin's
  ``session_start_info``, and ``session_end_info`` at the end) and as a ``config`` text; the
  theory checks' results as a ``checks`` text and scalars when ``checks.json`` exists at the end.
- :class:`MlflowTracker`: an MLflow run per job and seed in a ``file:`` store under
  ``<run>/mlruns`` (offline; the optional extra ``mlflow``), params = the flattened config.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from adflora_analysis.errors import AdfloraError, unknown_name

# the callback API belongs to the study layer (the job driver calls it); re-exported here
from adflora_analysis.study.callbacks import (
    Callback,
    CallbackError,
    Callbacks,
    RoundInfo,
    RunInfo,
    callback_name,
    read_config,
)

__all__ = ["TRACKERS", "Callback", "CallbackError", "Callbacks", "MlflowTracker", "RoundInfo",
           "RunInfo", "TensorBoardTracker", "callback_name", "make_trackers", "read_config"]

#: the trackers ``--track`` knows
TRACKERS = ("tensorboard", "mlflow")
#: row columns that say which row it is, never logged as a value
_KEYS = frozenset({"round", "seed", "layer", "job", "method", "variant", "task"})


# -- helpers shared by the trackers


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys; lists become their JSON text.

    >>> flatten({"lr": 0.1, "topology": {"graph": "ring", "q": None}, "methods": ["a", "b"]})
    {'lr': 0.1, 'topology.graph': 'ring', 'topology.q': None, 'methods': '["a", "b"]'}
    """
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, list | tuple):
            out[f"{prefix}{k}"] = json.dumps(list(v), default=str)
        else:
            out[f"{prefix}{k}"] = v
    return out


def numeric(row: dict[str, Any], skip: Iterable[str] = ()) -> dict[str, float]:
    """The finite numbers of ``row`` (no bools), minus the identifying columns and ``skip``.

    >>> numeric({"round": 3, "seed": 0, "loss": 0.5, "ok": True, "graph": "ring", "lr": 1})
    {'loss': 0.5, 'lr': 1.0}
    """
    skip = _KEYS | set(skip)
    return {k: float(v) for k, v in row.items()
            if k not in skip and isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v)}


def table_values(name: str, rows: list[dict[str, Any]], seed: int, skip: Iterable[str] = ()
                 ) -> dict[str, float]:
    """The values of an extra table's rows of ``seed`` (rows without a seed count for every
    seed) as ``{tag: value}``. A wide row gives ``<name>/<column>``; a long row (a ``value``
    column, e.g. GLUE's ``eval``) gives ``<name>/<its text columns>`` with ``client<c>`` last
    (the ``mean`` client left out).

    >>> table_values("eval", [{"seed": 0, "client": "mean", "split": "validation",
    ...                        "metric": "accuracy", "value": 0.75},
    ...                       {"seed": 0, "client": "1", "split": "validation",
    ...                        "metric": "accuracy", "value": 0.5}], 0)
    {'eval/validation/accuracy': 0.75, 'eval/validation/accuracy/client1': 0.5}
    >>> table_values("constants", [{"seed": 1, "L": 2.0, "mu": 0.5}], 1)
    {'constants/L': 2.0, 'constants/mu': 0.5}
    """
    skip = set(skip)
    out: dict[str, float] = {}
    for r in rows:
        if r.get("seed", seed) != seed:
            continue
        v = r.get("value")
        if isinstance(v, int | float) and not isinstance(v, bool):
            if not math.isfinite(v):
                continue
            parts = [str(x) for k, x in r.items() if isinstance(x, str) and k not in _KEYS
                     and k not in skip and k != "client"]
            client = r.get("client")
            if client is not None and str(client) != "mean":
                parts.append(f"client{client}")
            out["/".join([name, *parts])] = float(v)
        else:
            out.update({f"{name}/{k}": x for k, x in numeric(r, skip).items()})
    return out


def _safe_part(s: str) -> str:
    """A job key as a relative folder (``/`` kept as nesting; no ``..`` or odd characters)."""
    parts = [re.sub(r"[^A-Za-z0-9_.=+-]+", "_", p).lstrip(".") or "_" for p in s.split("/")]
    return "/".join(parts)


def _own_dir(run: Path, name: str) -> Path:
    """``<run>/<name>``, refused in one line if it is a symbolic link (a run directory is
    untrusted input: a planted link must not send the writes elsewhere)."""
    p = run / name
    if p.is_symlink() or (p.exists() and not p.is_dir()):
        raise AdfloraError(f"{str(p)!r} is a symbolic link or not a folder",
                           "a run directory holds only its own files: delete it")
    return p


def _checks(path: Path | None) -> list[dict[str, Any]]:
    """The saved theory-check results of a run (``checks.json``) when they still cover the run
    as it is (:func:`adflora_analysis.theory.load_saved_checks`: same status, config hash and
    rounds), else none."""
    if path is None:
        return []
    from adflora_analysis.errors import AdfloraError
    from adflora_analysis.theory import load_saved_checks

    try:
        res, _ = load_saved_checks(path)
    except AdfloraError:
        return []
    return [r for r in res or [] if isinstance(r, dict)]


# -- TensorBoard, live


def _hparams_value(tag: str, plugin_data: bytes) -> bytes:
    """A ``Summary.Value`` of the hparams plugin: ``tag``, its plugin data, a null tensor."""
    from adflora_analysis.tbevents import pb_field, varint

    pd_ = pb_field(1, 2, b"hparams") + pb_field(2, 2, plugin_data)         # PluginData
    meta = pb_field(1, 2, pd_)                                          # SummaryMetadata
    tensor = (pb_field(1, 0, varint(1)) + pb_field(2, 2, b"")            # DT_FLOAT, shape []
              + pb_field(5, 2, struct.pack("<f", 0.0)))                 # float_val [0]
    return pb_field(1, 2, tag.encode()) + pb_field(9, 2, meta) + pb_field(8, 2, tensor)


def hparams_start(hparams: dict[str, Any], group: str, start: float) -> bytes:
    """The ``_hparams_/session_start_info`` value of TensorBoard's HParams plugin
    (``HParamsPluginData{version: 0, session_start_info}``) for ``hparams``: a number, text
    or bool each; None is left out."""
    from adflora_analysis.tbevents import pb_field

    entries = b""
    for k, v in hparams.items():
        if v is None:
            continue
        if isinstance(v, bool):
            val = pb_field(4, 0, b"\x01" if v else b"\x00")
        elif isinstance(v, int | float):
            val = pb_field(2, 1, struct.pack("<d", float(v)))
        else:
            val = pb_field(3, 2, str(v).encode())
        entries += pb_field(1, 2, pb_field(1, 2, k.encode()) + pb_field(2, 2, val))
    info = entries + pb_field(4, 2, group.encode()) + pb_field(5, 1, struct.pack("<d", start))
    return _hparams_value("_hparams_/session_start_info", pb_field(3, 2, info))


def hparams_end(status: str, end: float) -> bytes:
    """The ``_hparams_/session_end_info`` value: SUCCESS (done), FAILURE (diverged, failed)
    or UNKNOWN (stopped)."""
    from adflora_analysis.tbevents import pb_field, varint

    code = {"done": 1, "diverged": 2, "failed": 2, "running": 3}.get(status, 0)
    info = pb_field(1, 0, varint(code)) + pb_field(2, 1, struct.pack("<d", end))
    return _hparams_value("_hparams_/session_end_info", pb_field(4, 2, info))


class LiveEventFile:
    """An event file TensorBoard reads while it grows: every :meth:`write` is flushed.

    Unlike :class:`adflora_analysis.tbevents.EventWriter` (all or nothing, renamed at close)
    the file is visible from the first event; its records are encoded by
    :mod:`adflora_analysis.tbevents`, so :func:`~adflora_analysis.tbevents.read_events` and
    TensorBoard read it.
    """

    def __init__(self, logdir: Path):
        from adflora_analysis.tbevents import event, record

        logdir.mkdir(parents=True, exist_ok=True)
        self.path = logdir / (f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}."
                              f"{os.getpid()}.adflora")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        self._f = os.fdopen(fd, "wb")
        self._f.write(record(event(0, file_version="brain.Event:2")))
        self._f.flush()

    def write(self, step: int, values: list[bytes], wall: float | None = None) -> None:
        from adflora_analysis.tbevents import event, record

        if values:
            self._f.write(record(event(step, values, wall)))
            self._f.flush()

    def session_start(self, step: int) -> None:
        """A ``SessionLog{status: START}`` event at ``step``: TensorBoard drops what earlier
        files of this folder hold from ``step`` on (the rounds a resume runs again)."""
        from adflora_analysis.tbevents import event, pb_field, record, varint

        self._f.write(record(event(step) + pb_field(7, 2, pb_field(1, 0, varint(1)))))
        self._f.flush()

    def scalars(self, step: int, values: dict[str, float], wall: float | None = None) -> None:
        from adflora_analysis.tbevents import scalar_value

        self.write(step, [scalar_value(k, v) for k, v in values.items()], wall)

    def text(self, step: int, tag: str, text: str, wall: float | None = None) -> None:
        from adflora_analysis.tbevents import text_value

        self.write(step, [text_value(tag, text)], wall)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()


class TensorBoardTracker(Callback):
    """Live TensorBoard event files: ``<logdir>/<job>/seed<s>/`` per job and seed (the
    ``layer == "all"`` metrics as ``metrics/<column>``, extra tables as :func:`table_values`
    names them (``eval/validation/accuracy``, ``constants/<column>``),
    step = round, the round's real wall-clock time), and at ``<logdir>/`` the resolved config
    (text ``config``) and, at the end, the theory checks of ``checks.json`` if there is one.

    ``logdir``: default ``<run>/tb``. ``checks``: when the run ends ``done``, evaluate the
    theory checks (:func:`adflora_analysis.theory.check_run`, both runners; nothing
    is saved in the run directory) and log them: a ``checks`` table text, ``checks/<status>``
    counts and ``checks/<check>/<method>/<variant>/ratio`` (measured / bound). Without it
    (or when the run did not finish) a ``checks.json`` already there is logged instead.
    """

    name = "tensorboard"

    def __init__(self, logdir: str | Path | None = None, *, checks: bool = True):
        self.logdir = Path(logdir) if logdir is not None else None
        self.checks = checks
        self._files: dict[tuple[str, int], LiveEventFile] = {}
        self._root: LiveEventFile | None = None
        self._run: RunInfo | None = None
        self._hp: dict[str, Any] = {}
        self._inside: Path | None = None     # the run directory when the logdir is its tb/
        self._written: list[str] = []

    def run_files(self) -> list[str]:
        return self._written

    def _new_file(self, logdir: Path) -> LiveEventFile:
        f = LiveEventFile(logdir)
        if self._inside is not None:
            self._written.append(f.path.relative_to(self._inside).as_posix())
        return f

    def on_run_start(self, run: RunInfo) -> None:
        if self.logdir is None:
            if run.path is None:
                raise AdfloraError("a TensorBoard tracker of an in-memory run needs a logdir",
                                   "pass TensorBoardTracker(logdir=...) or out=...")
            self.logdir = _own_dir(run.path, "tb")
            self._inside = run.path
        self._run = run
        self._hp = flatten(run.config)
        self._root = self._new_file(self.logdir)
        text = "\n".join(f"    {k} = {json.dumps(v)}" for k, v in self._hp.items())
        self._root.text(0, "config", text or "(no config)")

    def _file(self, info: RoundInfo, seed: int) -> LiveEventFile:
        key = (info.job, seed)
        if key not in self._files:
            for k in [k for k in self._files if k[0] != info.job]:   # the previous job ended
                f = self._files.pop(k)
                f.write(0, [hparams_end("done", time.time())])
                f.close()
            f = self._new_file(self.logdir / _safe_part(info.job) / f"seed{seed}")
            if self._run is not None and self._run.resume:
                f.session_start(info.round)
            hp = {**self._hp, "job": info.job, "method": info.method, "seed": seed,
                  **{k: v for k, v in info.labels.items() if not isinstance(v, dict | list)}}
            f.write(info.round, [hparams_start(hp, info.job, time.time())])
            self._files[key] = f
        return self._files[key]

    def on_round_end(self, info: RoundInfo) -> None:
        skip = set(info.labels)
        for seed in info.seeds:
            values = {f"metrics/{k}": v for r in info.rows
                      if r.get("seed") == seed and r.get("layer", "all") == "all"
                      for k, v in numeric(r, skip).items()}
            for name, rows in info.tables.items():
                values.update(table_values(name, rows, seed, skip))
            self._file(info, seed).scalars(info.round, values, info.wall_time)

    def on_run_end(self, status: str) -> None:
        from adflora_analysis.tbevents import scalar_value

        now = time.time()
        for f in self._files.values():
            f.write(0, [hparams_end(status, now)])
            f.close()
        self._files.clear()
        if self._root is None:
            return
        path = self._run.path if self._run else None
        results = _checks(path)
        if self.checks and status == "done" and path is not None and self._run.kind in (
                "synthetic", "glue"):
            try:
                import warnings

                from adflora_analysis.theory import check_run

                with warnings.catch_warnings():   # numpy's notes on short runs: not ours
                    warnings.simplefilter("ignore")
                    results = [r.to_dict() for r in check_run(path)[0]]
            except Exception as e:   # the checks never fail the run they follow
                self._root.text(0, "checks", f"the checks could not run: "
                                f"{type(e).__name__}: {e}")
        if results:
            lines = ["| check | method | variant | status |", "|---|---|---|---|"]
            lines += [f"| {r.get('check')} | {r.get('method')} | {r.get('variant')} | "
                      f"{r.get('status')} |" for r in results]
            self._root.text(0, "checks", "\n".join(lines))
            counts: dict[str, float] = {}
            for r in results:
                counts[f"checks/{r.get('status')}"] = counts.get(f"checks/{r.get('status')}",
                                                                 0.0) + 1
                ratio = r.get("ratio")
                if isinstance(ratio, int | float) and math.isfinite(ratio):
                    counts[f"checks/{r.get('check')}/{r.get('method')}/{r.get('variant')}"
                           "/ratio"] = float(ratio)
            self._root.write(0, [scalar_value(k, v) for k, v in counts.items()])
        self._root.text(0, "status", status)
        self._root.close()
        self._root = None


# -- MLflow, offline


class MlflowTracker(Callback):
    """An MLflow run per job and seed in a local ``file:`` store (default
    ``<run>/mlruns``; no server, no network), experiment ``experiment`` (default the run
    directory's name): params = the flattened config plus ``job``, ``method``, ``seed``;
    metrics = the ``layer == "all"`` columns and the extra tables' values (as
    :func:`table_values` names them, e.g. ``eval/validation/accuracy``),
    step = round, timestamp = the round's wall-clock time (ms). A resumed run continues the
    MLflow runs of its jobs (tags ``adflora.job``, ``adflora.seed``) and skips the rounds they
    already hold (a resume recomputes them to the same values). A job's runs end
    ``FINISHED`` when the next job starts; the last ones with the run's status. A ``file:``
    store sets ``MLFLOW_ALLOW_FILE_STORE=true`` (unless set), which MLflow 3 asks of it.
    Needs the extra ``mlflow``
    (``pip install 'adflora-analysis[mlflow]'``).
    """

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None):
        try:
            from mlflow.tracking import MlflowClient  # noqa: F401
        except ImportError:
            raise AdfloraError("--track mlflow needs MLflow, which is not installed",
                               "pip install 'adflora-analysis[mlflow]'") from None
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self._runs: dict[tuple[str, int], str] = {}
        self._logged: dict[tuple[str, int], set[int] | None] = {}  # a resumed run's steps
        self._hp: dict[str, Any] = {}
        self._inside: Path | None = None

    def run_files(self) -> list[str]:
        """Every file of the ``mlruns`` store inside the run directory (none elsewhere)."""
        if self._inside is None or not self._store.is_dir():
            return []
        return sorted(p.relative_to(self._inside).as_posix() for p in self._store.rglob("*")
                      if p.is_file() and not p.is_symlink())

    def on_run_start(self, run: RunInfo) -> None:
        import warnings

        from mlflow.tracking import MlflowClient

        if self.tracking_uri is None:
            if run.path is None:
                raise AdfloraError("an MLflow tracker of an in-memory run needs a "
                                   "tracking_uri", "pass MlflowTracker(tracking_uri=...)")
            self._store = _own_dir(run.path, "mlruns")
            self._inside = run.path
            self.tracking_uri = self._store.resolve().as_uri()
        if self.tracking_uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked: offline, no database needed
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the file store's deprecation notice
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            name = self.experiment or (run.path.resolve().name if run.path else "adflora")
            exp = self.client.get_experiment_by_name(name)
            self.experiment_id = (exp.experiment_id if exp is not None
                                  else self.client.create_experiment(name))
        self._hp = {k: ("" if v is None else str(v)[:500])
                    for k, v in flatten(run.config).items()}
        self._resume = run.resume

    def _run_id(self, info: RoundInfo, seed: int) -> str:
        from mlflow.entities import Param

        key = (info.job, seed)
        if key in self._runs:
            return self._runs[key]
        for k in [k for k in self._runs if k[0] != info.job]:   # the previous job ended
            with contextlib.suppress(Exception):
                self.client.set_terminated(self._runs.pop(k), "FINISHED")
        tags = {"adflora.job": info.job, "adflora.seed": str(seed)}
        if self._resume:
            found = self.client.search_runs(
                [self.experiment_id], f"tags.`adflora.job` = '{info.job}' and "
                f"tags.`adflora.seed` = '{seed}'", max_results=1)
            if found:
                run_id = self._runs[key] = found[0].info.run_id
                self.client.update_run(run_id, "RUNNING")
                # rounds after the checkpoint run again (to the same values): log them once
                self._logged[key] = None   # read at its first round
                return run_id
        r = self.client.create_run(self.experiment_id, tags=tags,
                                   run_name=f"{info.job}/seed{seed}")
        hp = {**self._hp, "job": info.job, "method": info.method, "seed": str(seed)}
        items = [Param(k, v) for k, v in hp.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(r.info.run_id, params=items[i:i + 100])
        self._runs[key] = r.info.run_id
        return r.info.run_id

    def on_round_end(self, info: RoundInfo) -> None:
        from mlflow.entities import Metric

        ms = int(info.wall_time * 1000)
        skip = set(info.labels)
        for seed in info.seeds:
            values = {k: v for r in info.rows
                      if r.get("seed") == seed and r.get("layer", "all") == "all"
                      for k, v in numeric(r, skip).items()}
            for name, rows in info.tables.items():
                values.update(table_values(name, rows, seed, skip))
            metrics = [Metric(k, v, ms, info.round) for k, v in values.items()]
            run_id = self._run_id(info, seed)
            key = (info.job, seed)
            if key in self._logged and metrics:
                if self._logged[key] is None:
                    self._logged[key] = {m.step for m in self.client.get_metric_history(
                        run_id, metrics[0].key)}
                if info.round in self._logged[key]:
                    continue
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def on_run_end(self, status: str) -> None:
        mstatus = {"done": "FINISHED", "stopped": "KILLED"}.get(status, "FAILED")
        for run_id in self._runs.values():
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, mstatus)
        self._runs.clear()


def make_trackers(names: Sequence[str] | None, *, logdir: str | Path | None = None
                  ) -> list[Callback]:
    """The built-in trackers ``names`` (``--track``; each of :data:`TRACKERS`, once).

    >>> [type(t).__name__ for t in make_trackers(["tensorboard"])]
    ['TensorBoardTracker']
    >>> make_trackers(["tensorbord"])
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: unknown tracker 'tensorbord'; ... 'tensorboard'?)
    """
    out: list[Callback] = []
    for name in dict.fromkeys(names or []):
        if name == "tensorboard":
            out.append(TensorBoardTracker(logdir))
        elif name == "mlflow":
            out.append(MlflowTracker())
        else:
            raise unknown_name("tracker", name, TRACKERS)
    return out
