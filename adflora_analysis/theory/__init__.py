"""The theory checks (docs/architecture.md §5, derivations in docs/theory.md), one module per
check over a shared statistics module (:mod:`.stats`), with a registry (:mod:`.registry`) that
runs built-in and user checks alike.

=====  ==========================  ===========================================================
no.    module                      what
=====  ==========================  ===========================================================
1      :mod:`.mixing`              W^t doubly stochastic and nonnegative, p > 0
2      :mod:`.gossip`              E[Xi(WX) | X] <= (1 - p) Xi(X) (two-sided if exchangeable)
3      :mod:`.frozen`              frozen block: E Xi(t0 + k) <= (1 - p)^k Xi(t0)
4/4b/4c :mod:`.consensus`          consensus recursion: one step, unrolled, a priori (Gamma)
5      :mod:`.convergence`         convergence: running avg of ||M grad f||^2 vs an a-priori bound
5a-5c  :mod:`.stationarity`        descent-bookkeeping audit of the logs (not convergence)
6i-6d  :mod:`.cross_term`          cross term: invariant, unrolled, floor, decay, ADF < others
7      :mod:`.async_rate`          stale/partial gossip: fitted frozen rate vs predicted (§9)
A1-A4  :mod:`.audits`              audits from the states: step, frozen, gossip, bytes
=====  ==========================  ===========================================================

Statuses: held / violated / finding (fails as the method is expected to) / underpowered (the
seeds could not have shown a violation of the size the check guards against) / n/a / error.
``--strict`` fails on violated or errored checks that should hold. User checks (``--checks``
files, entry points) run in a child process with a time limit (:mod:`.isolate`);
``checks.json`` records the run state it covers (:mod:`.saved`, :func:`load_saved_checks`).

>>> {"gossip-contraction", "stationarity", "cross-term"} <= set(REGISTRY)
True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from adflora_analysis.errors import AdfloraError
from adflora_analysis.theory import async_rate as _async_rate
from adflora_analysis.theory import convergence as _convergence
from adflora_analysis.theory import stationarity as _stationarity
from adflora_analysis.theory.async_rate import check_async_rate
from adflora_analysis.theory.audits import AUDIT_READS, AUDITS
from adflora_analysis.theory.consensus import check_consensus, kappa
from adflora_analysis.theory.convergence import check_convergence
from adflora_analysis.theory.cross_term import (
    check_adf_below,
    check_cross_bounds,
    check_invariant,
)
from adflora_analysis.theory.data import Context, RunData, Series, check_data, contexts
from adflora_analysis.theory.expect import apply_expectations, expectation_unmet
from adflora_analysis.theory.frozen import check_frozen, fit_geometric_rate
from adflora_analysis.theory.gossip import check_gossip
from adflora_analysis.theory.isolate import (
    CHECK_TIMEOUT_DEFAULT,
    run_user_checks,
    user_sources,
)
from adflora_analysis.theory.mixing import check_mixing
from adflora_analysis.theory.registry import (
    REGISTRY,
    bound_check,
    columns_needed,
    load_check_file,
    load_entry_points,
    register_check,
    run_check,
)
from adflora_analysis.theory.result import CheckResult
from adflora_analysis.theory.saved import (
    load_saved_checks,
    rounds_covered,
    run_state,
    save_results,
)
from adflora_analysis.theory.stationarity import check_descent_audit
from adflora_analysis.theory.stats import EFFECT_DEFAULT, Z_DEFAULT

__all__ = ["CHECK_TIMEOUT_DEFAULT", "REGISTRY", "CheckResult", "Context", "RunData", "Series",
           "bound_check", "check_data", "check_run", "columns_needed", "contexts",
           "expectation_unmet", "fit_geometric_rate",
           "format_results", "kappa", "load_check_file", "load_entry_points", "load_saved_checks",
           "register_check", "rounds_covered", "run_checks", "run_state", "save_results"]

_ALL = ("synthetic", "glue", "lm")
_XI = ("xi_A", "xi_B")
_XI_LOCAL = ("xi_A_local", "xi_B_local")
_RECURSION = ("doubly-stochastic", "p>0", "synchronous-gossip")
# name, function, kinds, requires (premises, in the order they are tested), reads (metric
# columns; "col?" read when present), number and label of the registry's own n/a answers
BUILTINS: tuple[tuple, ...] = (
    ("mixing-validity", check_mixing, _ALL, (), (), "1", "mixing-validity"),
    ("gossip-contraction", check_gossip, _ALL, ("one-gossip-phase-per-round", *_RECURSION),
     (*_XI, *_XI_LOCAL), "2", "gossip-contraction"),
    ("frozen-block", check_frozen, _ALL, ("p>0", "one-phase-per-round", "synchronous-gossip",
                                          "doubly-stochastic"),
     (*_XI, *_XI_LOCAL), "3", "frozen-block-consensus"),
    ("consensus", check_consensus, ("synthetic",), ("one-gossip-phase-per-round", *_RECURSION),
     (*_XI, "disp_A", "disp_B", "gamma_A?", "gamma_B?", "eta?"), "4", "consensus-step"),
    ("stationarity", check_convergence, ("synthetic",), _convergence.REQUIRES,
     _convergence.READS, "5", "stationarity"),
    ("descent-audit", check_descent_audit, ("synthetic",), _stationarity.REQUIRES,
     _stationarity.READS, "5a", "descent-audit"),
    ("cross-term-invariant", check_invariant, _ALL, (),
     ("cross_term", *_XI, "cross_term_direct?", "xi_A_local?", "xi_B_local?"), "6i",
     "cross-term-invariant"),
    ("cross-term", check_cross_bounds, _ALL, _RECURSION,
     ("cross_term", *_XI, "disp_A", "disp_B", "gamma_A?", "gamma_B?", "eta?"), "6a",
     "cross-term-unrolled"),
    ("cross-term-below", check_adf_below, _ALL, (), ("cross_term",), "6d",
     "cross-term-below"),
    ("stale-gossip-rate", check_async_rate, _ALL, getattr(_async_rate, "REQUIRES", ()),
     getattr(_async_rate, "READS", _XI), "7", "stale-gossip-rate"),
)
for _name, _fn, _kinds, _req, _reads, _no, _label in BUILTINS:
    register_check(_name, kinds=_kinds, requires=_req, reads=_reads, builtin=True, number=_no,
                   label=_label)(_fn)
# the audits (what the states say happened, :mod:`.audits`): each answers n/a itself
for _no, (_name, _fn, _req) in enumerate(AUDITS, 1):
    register_check(_name, kinds=_ALL, requires=_req, reads=AUDIT_READS, builtin=True,
                   number=f"A{_no}", label=_name)(_fn)


def _columns_present(data: RunData, ctxs: list[Context]) -> None:
    """One error when the run was made with ``checks = "none"`` (config.toml), or when no
    check that reads the rows can run because the run computed none of their columns (a run
    naming other checks), naming the missing columns and how to get them."""
    rows = [c for c in REGISTRY.values() if c.builtin and c.required_columns]
    said = data.meta.get("checks")
    missing: dict[str, None] = {}
    for ctx in ctxs:
        for c in rows:
            if ctx.kind not in c.kinds:
                continue
            miss = [col for col in c.required_columns if not ctx.run.has(col)]
            if not miss and said != "none":
                return
            missing.update(dict.fromkeys(miss))
    if not missing:
        return
    what = ("the run was made with checks = \"none\" (the method alone), so it lacks the "
            "columns the theory checks read" if said == "none" else
            "the run has none of the columns the theory checks read"
            + (f" (it was made with checks = {said!r})" if said is not None else ""))
    raise AdfloraError(f"{what}: missing " + ", ".join(sorted(missing)),
                       "re-run the study with checks = \"all\" (or a list of check names, "
                       "e.g. checks = [\"gossip-contraction\"]) to compute them")


def check_run(run_dir: str | Path, *, z: float = Z_DEFAULT, effect: float = EFFECT_DEFAULT,
              check_files: list[str] | None = None, entry_points: bool = True,
              data: RunData | None = None, check_timeout: float = CHECK_TIMEOUT_DEFAULT,
              ) -> tuple[list[CheckResult], dict[str, Any]]:
    """:func:`run_checks` and the run state the results cover (:func:`run_state`: status,
    completeness, last round of every job, config hash), read with the same rows."""
    from adflora_analysis.rundir import RunDir

    status = RunDir(run_dir, writer=False).status if data is None else None
    sources = user_sources(check_files, entry_points,
                           {n for n, c in REGISTRY.items() if not c.builtin})
    planted = data is not None
    data = data if planted else check_data(run_dir)
    ctxs = contexts(data, z=z, effect=effect)
    _columns_present(data, ctxs)
    per_ctx: list[list[CheckResult]] = [[] for _ in ctxs]
    for i, ctx in enumerate(ctxs):
        for check in list(REGISTRY.values()):
            if ctx.kind in check.kinds or not check.builtin:
                per_ctx[i].extend(run_check(check, ctx))
    loose: list[CheckResult] = []
    if sources:
        user, loose = run_user_checks(sources, [(c.method, c.variant) for c in ctxs],
                                      run_dir=run_dir, z=z, effect=effect,
                                      timeout=check_timeout, data=data if planted else None)
        for i, rs in user.items():
            per_ctx[i].extend(rs)
    state = run_state(run_dir, data.metrics, status=status)
    results = apply_expectations([r for rs in per_ctx for r in rs] + loose,
                                 data.meta.get("expect"))
    return results, state


def run_checks(run_dir: str | Path, *, z: float = Z_DEFAULT, effect: float = EFFECT_DEFAULT,
               check_files: list[str] | None = None, entry_points: bool = True,
               data: RunData | None = None, check_timeout: float = CHECK_TIMEOUT_DEFAULT,
               ) -> list[CheckResult]:
    """Every registered check (built-in, from ``check_files``, from entry points) for every
    (variant, method) of a run directory (synthetic or GLUE). The checks of ``check_files``
    and entry points run in a child process, each within ``check_timeout`` seconds
    (:mod:`.isolate`); checks registered in this process run here."""
    return check_run(run_dir, z=z, effect=effect, check_files=check_files,
                     entry_points=entry_points, data=data, check_timeout=check_timeout)[0]


def _f(x: float, fmt: str = ".3g") -> str:
    return format(x, fmt) if isinstance(x, int | float) and math.isfinite(x) else "-"


def format_results(results: list[CheckResult]) -> str:
    """Plain-text table: number, check, method, variant, status, measured, bound, ratio with
    interval, z with its threshold, detectable effect, note."""
    head = (f"{'no':<4} {'check':<26} {'method':<9} {'variant':<14} {'status':<13} "
            f"{'measured':>9} {'bound':>9} {'bound/meas [interval]':>24} {'z (thr)':>13} "
            f"{'mde':>6}  note")
    lines = [head]
    for r in results:
        ci = (f" [{_f(r.ratio_ci[0])}, {_f(r.ratio_ci[1])}]"
              if all(math.isfinite(v) for v in r.ratio_ci) else "")   # none with one seed
        rat = f"{_f(r.ratio, '.4g')}{ci}"
        zt = f"{_f(r.z, '.2f')} ({_f(r.threshold, '.2f')})"
        lines.append(f"{r.number:<4} {r.check[:26]:<26} {r.method[:14]:<14} "
                     f"{r.variant[:14]:<14} {r.status:<13} {_f(r.measured):>9} "
                     f"{_f(r.bound):>9} {rat:>24} {zt:>13} {_f(r.mde, '.2g'):>6}  {r.note}")
    return "\n".join(lines)
