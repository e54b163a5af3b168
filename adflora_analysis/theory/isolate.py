"""User checks run in a child process, each with a time limit: they cannot overrule the verdict.

The checks of ``--checks FILE.py`` files and of entry points (group ``adflora_analysis.checks``)
are imported and run by a fresh Python process (:func:`child_main`), never by the command
itself. The child reads one JSON request on stdin and answers with one JSON event per line on
a private copy of its stdout (the user's own prints go to stderr)::

    {"ev": "import", "source": i}            importing source i (user code: timed)
    {"ev": "loaded", "source": i, "checks": [names]} / {"ev": "load_error", ...}
    {"ev": "contexts", "contexts": [[method, variant], ...]}
    {"ev": "start", "check": name, "ctx": i}  running a check on context i (user code: timed)
    {"ev": "result", "check": name, "ctx": i, "results": [{"result": ..., "curve": ...}]}
    {"ev": "end"}

Results travel as plain data (:meth:`CheckResult.to_dict`, curves as column/row records), never
as pickles. A check that raises anything (``SystemExit`` and ``KeyboardInterrupt`` included)
is one ``error`` result; one that outlives ``timeout`` seconds, or ends or crashes the child
(``os._exit``, a segfault), is one ``error`` result too: the parent kills the child's process
group and goes on with the remaining checks in a fresh child.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adflora_analysis.errors import AdfloraError
from adflora_analysis.theory.result import (
    CheckResult,
    curve_from_records,
    curve_to_records,
)

CHECK_TIMEOUT_DEFAULT = 60.0
SETUP_TIMEOUT = 900.0   # the child's start-up and loading the run (no user code)
_CHILD = "from adflora_analysis.theory.isolate import child_main; child_main()"


@dataclass(frozen=True)
class Source:
    """Where user checks come from: a ``file`` (``name`` = its path) or an ``entry_point``
    (``name`` = the check's name, ``value`` = ``module:attr``)."""

    kind: str
    name: str
    value: str = ""

    @property
    def label(self) -> str:
        return Path(self.name).name if self.kind == "file" else self.name

    def what(self) -> str:
        return (f"check file {self.name!r}" if self.kind == "file"
                else f"entry point {self.name!r} ({self.value})")


def user_sources(check_files: list[str] | None, entry_points: bool = True,
                 loaded: set[str] | frozenset[str] = frozenset()) -> list[Source]:
    """The files (each must exist) and installed entry points whose checks run isolated;
    an entry point named like a check in ``loaded`` is left out (as before: first wins)."""
    out = []
    for f in check_files or []:
        p = Path(f)
        try:
            ok, there = p.is_file(), p.exists()
            where = str(p.resolve())
        except OSError as e:   # a name too long, a loop of links, ...
            raise AdfloraError(f"check file {str(p)[:120]!r} cannot be read "
                               f"({e.strerror or type(e).__name__})",
                               "pass a Python file that calls register_check") from None
        if not ok:
            raise AdfloraError(f"check file {str(p)!r} "
                               + ("is not a file" if there else "does not exist"),
                               "pass a Python file that calls register_check")
        out.append(Source("file", where))
    if entry_points:
        from importlib.metadata import entry_points as eps

        from adflora_analysis.theory.registry import ENTRY_POINT_GROUP

        seen = set(loaded)
        for ep in eps(group=ENTRY_POINT_GROUP):
            if ep.name not in seen:
                seen.add(ep.name)
                out.append(Source("entry_point", ep.name, ep.value))
    return out


def describe(e: BaseException) -> str:
    """What a user's exception was, in a few words.

    >>> describe(SystemExit(0)), describe(KeyboardInterrupt()), describe(ValueError("boom"))
    ('called sys.exit(0)', 'raised KeyboardInterrupt', 'ValueError: boom')
    """
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    msg = " ".join(str(e).split())[:300]
    if isinstance(e, Exception):
        return f"{type(e).__name__}: {msg}"
    return f"raised {type(e).__name__}" + (f": {msg}" if msg else "")


# --------------------------------------------------------------------------- the child
def _jsonable(o: Any) -> Any:
    import numpy as np

    from adflora_analysis.theory.result import clean

    if isinstance(o, np.ndarray):
        return clean(o.tolist())
    if isinstance(o, np.generic):
        return clean(o.item())
    return str(o)


def _load_source(src: Source) -> list[str]:
    """Import one source into the registry; the names it added."""
    from adflora_analysis.theory.registry import (
        ENTRY_POINT_GROUP,
        REGISTRY,
        Check,
        exec_check_file,
    )

    if src.kind == "file":
        return exec_check_file(Path(src.name))
    from importlib.metadata import EntryPoint

    if src.name in REGISTRY:
        return []
    fn = EntryPoint(src.name, src.value, ENTRY_POINT_GROUP).load()
    REGISTRY[src.name] = Check(src.name, fn, ("synthetic", "glue", "lm"))
    return [src.name]


def _load_data(req: dict[str, Any]):
    import pandas as pd

    from adflora_analysis.theory.data import RunData, check_data

    if not req.get("data_dir"):
        return check_data(req["run_dir"])
    d = Path(req["data_dir"])

    def table(name: str) -> pd.DataFrame | None:
        p = d / f"{name}.parquet"
        return pd.read_parquet(p) if p.exists() else None

    meta = json.loads((d / "meta.json").read_text())
    return RunData(table("metrics"), meta, table("constants"), table("mixing"),
                   Path(req["run_dir"]) if req.get("run_dir") else None)


def child_main() -> None:
    """The child process: import the sources, run every user check on every context, and
    report each step on the private channel (see the module docstring)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)   # the user's prints go to stderr, never into the channel
    req = json.loads(sys.stdin.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    sys.path[:] = [p for p in req.get("sys_path", []) if isinstance(p, str)] or sys.path

    def send(**ev: Any) -> None:
        proto.write(json.dumps(ev, default=_jsonable) + "\n")
        proto.flush()

    try:
        from adflora_analysis.theory.data import contexts
        from adflora_analysis.theory.registry import REGISTRY, run_check

        skip_src = set(req.get("skip_sources", []))
        for i, (kind, name, value) in enumerate(req["sources"]):
            if i in skip_src:
                continue
            send(ev="import", source=i)
            before = dict(REGISTRY)
            try:
                names = _load_source(Source(kind, name, value))
            except BaseException as e:  # noqa: BLE001 - user code: SystemExit included
                REGISTRY.clear()              # a file that failed registers nothing
                REGISTRY.update(before)
                send(ev="load_error", source=i, error=describe(e))
                continue
            send(ev="loaded", source=i, checks=names)
        data = _load_data(req)
        ctxs = contexts(data, z=req["z"], effect=req["effect"])
        send(ev="contexts", contexts=[[c.method, c.variant] for c in ctxs])
        skip = set(req.get("skip_checks", []))
        done = {(n, i) for n, i in req.get("done", [])}
        user = [c for c in REGISTRY.values() if not c.builtin and c.name not in skip]
        for i, ctx in enumerate(ctxs):
            for check in user:
                if (check.name, i) in done:
                    continue
                send(ev="start", check=check.name, ctx=i)
                try:
                    res = run_check(check, ctx)
                except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, ...
                    res = [CheckResult(check.name, "user", ctx.method, ctx.variant, "error",
                                       note=f"check {check.name!r} failed: {describe(e)}")]
                try:
                    items = [{"result": r.to_dict(),
                              "curve": curve_to_records(r.curve) if len(r.curve) else None}
                             for r in res]
                    json.dumps(items, default=_jsonable)
                except Exception as e:  # noqa: BLE001 - a result that cannot be sent
                    items = [{"result": CheckResult(
                        check.name, "user", ctx.method, ctx.variant, "error",
                        note=f"check {check.name!r} failed: its result cannot be sent "
                             f"({describe(e)})").to_dict(), "curve": None}]
                send(ev="result", check=check.name, ctx=i, results=items)
        send(ev="end")
    except BaseException as e:  # noqa: BLE001 - report, then leave
        try:
            send(ev="fatal", error=describe(e))
        except Exception:  # noqa: BLE001, S110 - the channel is gone: the parent sees EOF
            pass
    proto.close()
    os._exit(0)   # no user atexit handlers, no waiting for the user's threads


# --------------------------------------------------------------------------- the parent
class _Lines:
    """Lines of a pipe, read with a deadline."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = bytearray()

    def next(self, deadline: float) -> bytes | None | bool:
        """The next line; None at end of file; False when ``deadline`` passed first."""
        while True:
            k = self.buf.find(b"\n")
            if k >= 0:
                line = bytes(self.buf[:k])
                del self.buf[:k + 1]
                return line
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return False
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk


def _how_it_ended(proc: subprocess.Popen) -> str:
    try:
        rc = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return "closed its output"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # the child and anything it started
        except (ProcessLookupError, PermissionError):
            proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not refused
        pass
    if proc.stdout is not None:
        proc.stdout.close()


def _child_env() -> dict[str, str]:
    # the folder holding the adflora_analysis package (this file is adflora_analysis/theory/...)
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


class _Run:
    """The parent's bookkeeping over one or more children."""

    def __init__(self, sources: list[Source], labels: list[tuple[str, str]], timeout: float,
                 req: dict[str, Any]):
        self.sources, self.labels, self.timeout, self.req = sources, labels, timeout, req
        self.results: dict[int, list[CheckResult]] = {i: [] for i in range(len(labels))}
        self.file_errors: list[CheckResult] = []
        self.skip_sources: set[int] = set()
        self.skip_checks: set[str] = set()
        self.done: set[tuple[str, int]] = set()

    def source_error(self, i: int, why: str) -> None:
        s = self.sources[i]
        self.skip_sources.add(i)
        self.file_errors.append(CheckResult(s.label, "user", "-", "-", "error",
                                            note=f"{s.what()} {why}"))

    def check_error(self, name: str, i: int, why: str) -> None:
        self.skip_checks.add(name)
        m, v = self.labels[i]
        left = len(self.labels) - i - 1
        rest = f"; not run on the {left} later method/variant(s)" if left else ""
        self.results[i].append(CheckResult(
            name, "user", m, v, "error",
            note=f"check {name!r} {why} (method {m}, variant {v}){rest}"))

    def child(self) -> bool:
        """Run one child to its end; False when it must be run again (a user check hung or
        ended the child), True when all is done."""
        req = {**self.req, "skip_sources": sorted(self.skip_sources),
               "skip_checks": sorted(self.skip_checks), "done": sorted(self.done)}
        proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=_child_env(),
                                start_new_session=True)
        try:
            try:
                proc.stdin.write(json.dumps(req).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            return self._read(proc)
        finally:
            _kill(proc)

    def _read(self, proc: subprocess.Popen) -> bool:
        lines = _Lines(proc.stdout.fileno())
        current: tuple[Any, ...] | None = None    # ("import", i) or ("check", name, i)
        deadline = time.monotonic() + SETUP_TIMEOUT
        while True:
            line = lines.next(deadline)
            if line is False or line is None:
                timed_out = line is False
                if timed_out:
                    _kill(proc)
                how = (f"did not finish within {self.timeout:g} s (--check-timeout): "
                       "stopped" if timed_out
                       else f"ended the check process ({_how_it_ended(proc)})")
                if current and current[0] == "import":
                    self.source_error(current[1], ("did not finish importing within "
                                                   f"{self.timeout:g} s (--check-timeout)"
                                                   if timed_out else f"{how} while importing")
                                      + "; its checks did not run")
                    return False
                if current and current[0] == "check":
                    self.check_error(current[1], current[2], how)
                    return False
                self.fatal("the process running the user checks "
                           + ("did not respond" if timed_out else how))
                return True
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            kind = ev.get("ev")
            if kind == "import" and isinstance(ev.get("source"), int):
                current = ("import", ev["source"])
                deadline = time.monotonic() + self.timeout
                continue
            if kind in ("loaded", "load_error") and current and current[0] == "import" \
                    and ev.get("source") == current[1]:
                if kind == "load_error":
                    self.source_error(current[1], f"failed to import: {ev.get('error')}")
                elif not ev.get("checks") and self.sources[current[1]].kind == "file":
                    self.source_error(current[1], "registers no check (hint: decorate a "
                                      "function with @register_check(\"name\"))")
                current, deadline = None, time.monotonic() + SETUP_TIMEOUT
                continue
            if kind == "contexts":
                got = [tuple(c) for c in ev.get("contexts") or [] if isinstance(c, list)]
                if got != [tuple(x) for x in self.labels]:
                    self.fatal("the process running the user checks read other rows")
                    return True
                continue
            if kind == "start" and isinstance(ev.get("ctx"), int) \
                    and 0 <= ev["ctx"] < len(self.labels):
                current = ("check", str(ev.get("check")), ev["ctx"])
                deadline = time.monotonic() + self.timeout
                continue
            if kind == "result" and current and current[0] == "check" \
                    and (ev.get("check"), ev.get("ctx")) == current[1:]:
                self._take(current[1], current[2], ev.get("results"))
                current, deadline = None, time.monotonic() + SETUP_TIMEOUT
                continue
            if kind == "fatal":
                self.fatal(f"the process running the user checks failed: {ev.get('error')}")
                return True
            if kind == "end":
                return True

    def _take(self, name: str, i: int, items: Any) -> None:
        self.done.add((name, i))
        out = []
        try:
            for it in items:
                out.append(CheckResult.from_dict(it["result"],
                                                 curve_from_records(it.get("curve"))))
        except (TypeError, KeyError, ValueError) as e:
            m, v = self.labels[i]
            out = [CheckResult(name, "user", m, v, "error",
                               note=f"check {name!r} failed: it sent a malformed result "
                                    f"({e})")]
        self.results[i].extend(out)

    def fatal(self, why: str) -> None:
        self.file_errors.append(CheckResult("user-checks", "user", "-", "-", "error",
                                            note=f"{why}; the user checks did not all run"))


def run_user_checks(sources: list[Source], labels: list[tuple[str, str]], *,
                    run_dir: str | Path | None, z: float, effect: float,
                    timeout: float = CHECK_TIMEOUT_DEFAULT, data=None,
                    ) -> tuple[dict[int, list[CheckResult]], list[CheckResult]]:
    """Run the checks of ``sources`` in a child process on every context (``labels``: the
    parent's (method, variant) per context, in order). Returns the results per context and the
    errors that belong to no context (a file that failed to import, hung or registered
    nothing). ``data``: a :class:`RunData` to check instead of ``run_dir``'s rows."""
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise AdfloraError(f"--check-timeout {timeout} must be a positive number of seconds",
                           "use e.g. --check-timeout 60")
    req = {"run_dir": str(run_dir) if run_dir is not None else None, "z": z,
           "effect": effect, "sources": [[s.kind, s.name, s.value] for s in sources],
           "sys_path": list(sys.path), "data_dir": None}
    with tempfile.TemporaryDirectory(prefix="adflora-checks-") as tmp:
        if data is not None:
            _dump_data(data, Path(tmp))
            req["data_dir"] = tmp
        run = _Run(sources, labels, timeout, req)
        for _ in range(len(sources) + 64 * (len(labels) + 1)):   # each pass excludes one
            if run.child():
                break
    return run.results, run.file_errors


def _dump_data(data, d: Path) -> None:
    """A :class:`RunData` as files the child reads (Parquet tables, meta.json)."""
    from adflora_analysis import fileio

    for name in ("metrics", "constants", "mixing"):
        t = getattr(data, name)
        if t is not None:
            fileio.write_parquet(d / f"{name}.parquet", t)
    fileio.write_json(d / "meta.json", data.meta)
