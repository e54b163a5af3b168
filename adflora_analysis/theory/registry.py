"""The registry of theory checks: built-in ones and user checks, run the same way.

A check is a function ``fn(ctx: Context) -> CheckResult | list[CheckResult] | None`` (None or
[]: does not apply). Register one with :func:`register_check` in a Python file passed to
``adflora synthetic check --checks FILE.py``, or expose it as an entry point of group
``adflora_analysis.checks`` (the entry point's name is the check's name). :func:`bound_check`
turns a measured curve and its bound into a result with the built-ins' statistics::

    from adflora_analysis.theory import bound_check, register_check

    @register_check("loss-below-start")
    def loss_below_start(ctx):
        return bound_check(ctx, "loss-below-start", "u1", ctx.run.mat("loss"),
                           ctx.run.mat("loss_start")[:, :1] + 0 * ctx.run.mat("loss"))

A user check that raises, returns something that is not a result, or names a missing column
gives one ``error`` result naming the check and the problem; the other checks still run. The
checks of ``--checks`` files and entry points run in a child process with a time limit
(:mod:`.isolate`): ``sys.exit``, ``KeyboardInterrupt``, a hang or a crash is that check's
``error``, never the command's exit status.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from adflora_analysis.errors import AdfloraError
from adflora_analysis.theory.data import Context
from adflora_analysis.theory.result import CheckResult
from adflora_analysis.theory.stats import ONE_SEED, pooled_test

ENTRY_POINT_GROUP = "adflora_analysis.checks"
CheckFn = Callable[[Context], "CheckResult | list[CheckResult] | None"]


@dataclass(frozen=True)
class Check:
    """A registered check: ``kinds`` are the run kinds it applies to; ``requires`` the premises
    (:mod:`.premises`) it rests on; ``reads`` the metric columns it reads (a trailing ``?``:
    read when present, the check still runs without it); ``number`` and ``label`` name its
    results when the registry answers for it (a failed premise, missing columns)."""

    name: str
    fn: CheckFn
    kinds: tuple[str, ...] = ("synthetic",)
    builtin: bool = False
    requires: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    number: str = "user"
    label: str = ""

    @property
    def required_columns(self) -> tuple[str, ...]:
        """The declared columns without which the check cannot run."""
        return tuple(c for c in self.reads if not c.endswith("?"))

    @property
    def columns(self) -> tuple[str, ...]:
        """Every declared column, optional ones included (without the ``?``)."""
        return tuple(c.rstrip("?") for c in self.reads)


REGISTRY: dict[str, Check] = {}


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def register_check(name: str, *, kinds: tuple[str, ...] = ("synthetic", "glue", "lm"),
                   requires: tuple[str, ...] | list[str] = (),
                   reads: tuple[str, ...] | list[str] = (), builtin: bool = False,
                   number: str | None = None, label: str | None = None,
                   ) -> Callable[[CheckFn], CheckFn]:
    """Decorator adding ``fn`` to :data:`REGISTRY` under ``name`` (a user check replaces a user
    check of the same name; built-in names are refused). ``requires``: premise names of
    :data:`.premises.PREMISES` (an unknown one is an error here, at registration); ``reads``:
    the metric columns the check reads (``"col?"`` for one it reads only when present).

    >>> try:
    ...     register_check("x", requires=("doubly-stochastik",))
    ... except AdfloraError as e:
    ...     print(e.problem); print(e.hint.split("?")[0])
    check 'x' requires the unknown premise 'doubly-stochastik'
    did you mean 'doubly-stochastic'
    """
    from adflora_analysis.theory.premises import PREMISES

    req = (requires,) if isinstance(requires, str) else tuple(requires)
    rd = (reads,) if isinstance(reads, str) else tuple(reads)
    for r in req:
        if r not in PREMISES:
            raise AdfloraError(f"check {name!r} requires the unknown premise {r!r}",
                               f"{_did_you_mean(r, list(PREMISES))}known: "
                               + ", ".join(PREMISES))
    for c in rd:
        if not isinstance(c, str) or not c.rstrip("?"):
            raise AdfloraError(f"check {name!r} declares the column {c!r}",
                               "reads= takes metric column names, e.g. reads=(\"xi_A\",)")

    def deco(fn: CheckFn) -> CheckFn:
        old = REGISTRY.get(name)
        if old is not None and old.builtin and not builtin:
            raise AdfloraError(f"check {name!r} is built in", "give your check another name")
        REGISTRY[name] = Check(name, fn, tuple(kinds), builtin, req, rd,
                               number if number is not None else ("-" if builtin else "user"),
                               label or name)
        return fn
    return deco


def columns_needed(selection: str | list[str] | tuple[str, ...] = "all") -> frozenset[str]:
    """The metric columns the selected checks read (optional ones included), so a run can
    compute only those. ``selection``: ``"all"`` (every registered check), ``"none"`` or a
    list of check names (an unknown name is an error, with a did-you-mean).

    >>> import adflora_analysis.theory
    >>> sorted(columns_needed(["gossip-contraction"]))
    ['xi_A', 'xi_A_local', 'xi_B', 'xi_B_local']
    >>> columns_needed("none")
    frozenset()
    >>> try:
    ...     columns_needed(["gossip-contractoin"])
    ... except AdfloraError as e:
    ...     print(e.problem); print(e.hint.split("?")[0])
    unknown check 'gossip-contractoin'
    did you mean 'gossip-contraction'
    """
    if isinstance(selection, str):
        if selection == "all":
            names = list(REGISTRY)
        elif selection == "none":
            names = []
        else:
            names = [selection]
    else:
        names = list(selection)
    out: set[str] = set()
    for n in names:
        c = REGISTRY.get(n)
        if c is None:
            raise AdfloraError(f"unknown check {n!r}",
                               f"{_did_you_mean(n, list(REGISTRY))}checks: "
                               + ", ".join(REGISTRY) + "; or \"all\" / \"none\"")
        out.update(c.columns)
    return frozenset(out)


def exec_check_file(p: Path) -> list[str]:
    """Import the Python file ``p`` (its exceptions propagate); the check names it registered
    or replaced."""
    before = dict(REGISTRY)
    spec = importlib.util.spec_from_file_location(f"adflora_user_checks_{p.stem}", p)
    if spec is None or spec.loader is None:
        raise ImportError(f"{str(p)!r} is not a Python file")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [n for n, c in REGISTRY.items() if before.get(n) is not c]


def load_check_file(path: str | Path) -> list[str]:
    """Import a Python file that registers checks into this process; returns the names it
    added. (``run_checks`` runs ``--checks`` files in a child process instead:
    :mod:`.isolate`.)"""
    p = Path(path)
    if not p.is_file():
        raise AdfloraError(f"check file {str(p)!r} does not exist",
                           "pass a Python file that calls register_check")
    try:
        added = exec_check_file(p)
    except Exception as e:  # noqa: BLE001 - any failure of user code is bad input
        raise AdfloraError(f"check file {str(p)!r} failed to import: {type(e).__name__}: {e}",
                           "fix the file; it must run with `python FILE.py`") from None
    if not added:
        raise AdfloraError(f"check file {str(p)!r} registers no check",
                           "decorate a function with @register_check(\"name\")")
    return added


def load_entry_points() -> list[str]:
    """Register the checks of installed packages (entry point group ``adflora_analysis.checks``)."""
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in REGISTRY:
            continue
        try:
            fn = ep.load()
        except Exception as e:  # noqa: BLE001
            fn = _failing(f"entry point failed to load: {type(e).__name__}: {e}")
        REGISTRY[ep.name] = Check(ep.name, fn, ("synthetic", "glue", "lm"))
        names.append(ep.name)
    return names


def _failing(msg: str) -> CheckFn:
    def fn(ctx: Context) -> CheckResult:
        raise RuntimeError(msg)
    return fn


def bound_check(ctx: Context, name: str, number: str, measured: np.ndarray,
                bound: np.ndarray, *, kind: str = "upper", note: str = "",
                source: str = "") -> CheckResult:
    """A result from a measured (S, R) curve and its (S, R) bound (or (S,) / (S, P) arrays):
    the pooled ratio-of-sums test of the built-ins, with the curve for the report."""
    m = np.asarray(measured, float)
    b = np.asarray(bound, float)
    if m.ndim == 1:
        m, b = m[:, None], b.reshape(-1, 1)
    if m.shape != b.shape or m.shape[0] != ctx.run.S:
        raise ValueError(f"measured {m.shape} and bound {b.shape} must both be "
                         f"(seeds = {ctx.run.S}, points)")
    if not (np.isfinite(m).all() and np.isfinite(b).all()):
        raise ValueError("measured or bound has non-finite values")
    t = pooled_test(m, lambda _p: b, 0.5, 0.0, kind=kind, z=ctx.z, effect=ctx.effect)
    idx = ctx.run.rounds if m.shape[1] == ctx.run.R else np.arange(m.shape[1])
    curve = pd.DataFrame({"round": idx, "measured": m.mean(0), "bound": b.mean(0)})
    return CheckResult.from_test(name, number, ctx.method, ctx.variant, t, note=note,
                                 source=source, curve=curve)


def _validate(name: str, out: object) -> list[CheckResult]:
    items = [] if out is None else (list(out) if isinstance(out, list | tuple) else [out])
    for r in items:
        if not isinstance(r, CheckResult):
            raise TypeError(f"returned {type(r).__name__}, not a CheckResult")
        if r.status not in ("held", "violated", "finding", "underpowered", "n/a", "error"):
            raise ValueError(f"returned the status {r.status!r}")
        if r.status in ("held", "violated") and not (math.isfinite(r.ratio)
                                                     or math.isinf(r.ratio)):
            raise ValueError("returned a verdict without a ratio (NaN)")
    return items


def _one_seed(results: list[CheckResult], ctx: Context) -> list[CheckResult]:
    """Say why a one-seed run's tests are underpowered (no spread, so no test at all)."""
    if getattr(ctx.run, "S", 2) < 2:
        for r in results:
            if r.status == "underpowered" and ONE_SEED not in r.note:
                r.note = f"{r.note}; {ONE_SEED}" if r.note else ONE_SEED
    return results


def missing_columns(check: Check, ctx: Context) -> list[str]:
    """The check's required declared columns that the context's rows lack (or hold only NaN)."""
    run = ctx.run
    return [c for c in check.required_columns if not run.has(c)]


def _answer(check: Check, ctx: Context, note: str, details: dict | None = None
            ) -> list[CheckResult]:
    return [CheckResult(check.label or check.name, check.number, ctx.method, ctx.variant, "n/a",
                        note=note, details=dict(details or {}))]


def gate(check: Check, ctx: Context) -> list[CheckResult] | None:
    """The registry's answer for a check that cannot run on ``ctx`` — a failed premise
    (``n/a``, note ``premise failed: check 1: ...`` / ``stale gossip: ...``) or missing
    declared columns (``n/a``, note ``columns missing: ...``) — or None when it can run."""
    from adflora_analysis.theory.premises import premise_failure

    f = premise_failure(ctx, check.requires)
    if f is not None:
        return _answer(check, ctx, f.note, {"premise": f.premise, **(f.details or {})})
    miss = missing_columns(check, ctx)
    if miss:
        return _answer(check, ctx, "columns missing: " + ", ".join(miss) + " (the run did not "
                       "compute them: re-run with checks = \"all\" or naming this check)",
                       {"missing_columns": miss})
    thin = thinned_columns(check, ctx)
    if thin:
        every = ctx.run.df["measured"].eq(1).mean()
        return _answer(check, ctx, "reads " + ", ".join(thin) + ", measured on "
                       f"{every:.0%} of the rounds only (measure_every > 1); its statistic "
                       "needs every round (re-run with measure_every = 1)",
                       {"thinned_columns": thin})
    return None


def thinned_columns(check: Check, ctx: Context) -> list[str]:
    """The columns ``check`` reads that the run measured on some rounds only
    (``measure_every > 1``: NaN where the row's ``measured`` is 0) — read from the rows, so
    any testbed's thinning is seen. The built-in checks sum, unroll or fit over consecutive
    rounds, so one that reads such a column is ``n/a`` rather than judged on a thinned
    series."""
    df = ctx.run.df
    if "measured" not in df or not (df["measured"] == 0).any():
        return []
    off = df["measured"] == 0
    cols = [c.rstrip("?") for c in check.reads]
    return [c for c in cols if c in df and df.loc[off, c].isna().all()
            and df.loc[~off, c].notna().any()]


def run_check(check: Check, ctx: Context) -> list[CheckResult]:
    """Run one check on one context: first its declared premises and columns (:func:`gate`),
    then the check. A built-in that lacks a column says n/a; a user check that fails in any
    way becomes one ``error`` result naming it and the problem."""
    try:
        stop = gate(check, ctx)
        if stop is not None:
            return stop
        return _one_seed(_validate(check.name, check.fn(ctx)), ctx)
    except AdfloraError as e:
        if check.builtin:
            return [CheckResult(check.name, "-", ctx.method, ctx.variant, "n/a",
                                note=e.problem)]
        msg = e.problem
    except Exception as e:  # noqa: BLE001 - user code: any failure is reported, not raised
        if check.builtin:
            raise
        msg = f"{type(e).__name__}: {e}"
    return [CheckResult(check.name, "user", ctx.method, ctx.variant, "error",
                        note=f"check {check.name!r} failed: {msg}")]
