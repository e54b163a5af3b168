"""Audit checks A1–A4: what the states say happened, against what the run says it did.

The round loop measures them from the states every round (:mod:`adflora_analysis.core.audit`,
columns ``audit_*``); each check here is deterministic, not statistical: the worst round of
any seed against a round-off tolerance in the state's dtype (``audit_eps`` = ε).

=====  ===============  ====================================================================
no.    check            violated when
=====  ===============  ====================================================================
A1     step-audit       the step taken differs from the replayed SGD step η_t·g by more than
                        :data:`STEP_TOL` · K · ε · κ (relative; κ the round's
                        ||X_before|| / ||Δ_replay||, at least 1)
A2     frozen-audit     a block the method says is frozen moved during the local steps
                        (exactly 0 expected)
A3     gossip-audit     the gossiped state differs from W^t applied to the pre-gossip state by
                        more than its rounding bound (``audit_gossip_over`` > 0)
A4     bytes-audit      ``bytes_sent`` differs from the bytes of W^t's nonzero off-diagonal
                        entries times the gossiped blocks' size
=====  ===============  ====================================================================

Each says n/a, with the reason, where the loop could not audit: A1 for AdamW steps (GLUE/LM)
or a mixer that runs the local update itself; A3/A4 declare ``synchronous-gossip`` (the
registry says ``n/a (stale gossip: ...)`` for them) and say n/a themselves for a gossip model
whose mixer declares nothing to compare with; every audit for a run made before the audits
existed.

>>> import numpy as np
>>> worst(np.array([[0.0, 2.0], [1.0, 0.5]]), np.array([0, 1]), [3, 4])  # (value, round, seed)
(2.0, 1, 3)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from adflora_analysis.theory.data import Context
from adflora_analysis.theory.result import CheckResult

STEP_TOL = 1e4
"""A1's tolerance on ||Δ_taken − Δ_replay|| / ||Δ_replay||, in units of K ε κ with
κ = max(1, ||X_before|| / ||Δ_replay||) of the round (``audit_step_cond``).

Why κ: each of the K steps X ← X − η g rounds at ε||X||, and the gradient's own forward error
is relative to the terms that cancel in it (s²BᵀBAΣ against sBᵀC, or the residual sXAᵀBᵀ − R),
about L||X|| in size, so η times it is ~ηL ε ||X||: the absolute error of Δ is
≲ c K ε ||X_before|| and the relative one ≲ c K ε ||X_before|| / ||Δ||. Far from a stationary
point κ ~ 1–100; near one (the interpolation regime of ``heterogeneity.toml``'s h = 0, where
the loop's moment-form gradient and the replay's row-form gradient both cancel to ~1e-8 of their
terms) κ reaches 1e9 and the relative error 8e-7 is round-off, not a mismatch. c = 1e4 covers
the dimension factors of the sums and the (1 + ηL)^K growth of an early error over a round
(float64: 1.1e-11 κ at K = 5, measured ≤ 3e-15 κ on clean runs; float32: 6e-3 κ). A step 0.95
times η·g is 5e-2 on every round, beyond the tolerance wherever κ < 4e9 (every round but those
at a stationary point)."""

SOURCE = "issue 20 item 1: checks read what happened (core/audit.py)"


def worst(m: np.ndarray, rounds: np.ndarray, seeds: list) -> tuple[float, int, Any]:
    """The largest finite value of an (S, R) array with its round and seed."""
    a = np.where(np.isfinite(m), m, -np.inf)
    i, j = np.unravel_index(int(np.argmax(a)), a.shape)
    return float(m[i, j]), int(rounds[j]), seeds[i]


def _na(ctx: Context, name: str, number: str, why: str) -> CheckResult:
    return CheckResult(name, number, ctx.method, ctx.variant, "n/a", note=why, source=SOURCE)


def _eps(ctx: Context) -> float:
    return float(np.nanmax(ctx.run.mat("audit_eps"))) if ctx.run.has("audit_eps") else 2.2e-16


def _result(ctx: Context, name: str, number: str, measured: float, bound: float, ok: bool,
            note: str, details: dict[str, Any], test: str) -> CheckResult:
    ratio = math.inf if measured == 0 else bound / measured
    return CheckResult(name, number, ctx.method, ctx.variant, "held" if ok else "violated",
                       measured=measured, bound=bound, ratio=ratio, seeds=ctx.run.S,
                       test=test, source=SOURCE, note=note, details=details)


def _older(ctx: Context, col: str) -> str | None:
    if ctx.run.has(col):
        return None
    return (f"the run has no {col!r} column (made before the audits, or the loop could not "
            "audit it)")


def check_step_audit(ctx: Context) -> CheckResult:
    """A1: the step the replayed clients took against η_t·g replayed through the problem."""
    name, no = "step-audit", "A1"
    if not ctx.run.has("audit_step_err"):
        opt = ctx.data.meta.get("optimizer") if ctx.data is not None else None
        opt = opt.get("name") if isinstance(opt, dict) else opt
        if ctx.kind in ("glue", "lm") or "adam" in str(opt or "").lower():
            return _na(ctx, name, no, f"AdamW steps: the step audit replays SGD only "
                       f"(optimizer {opt or 'AdamW'}); the frozen and gossip audits apply")
        if ctx.run.has("audit_eps"):
            return _na(ctx, name, no, "the mixer runs the local update (gradients at stale "
                       "models), so η·g at the round's start is not the step; not replayed")
        return _na(ctx, name, no, _older(ctx, "audit_step_err"))
    err = ctx.run.mat("audit_step_err")
    scale = ctx.run.mat("audit_step_scale")
    base = STEP_TOL * ctx.K * _eps(ctx)
    kappa = (np.maximum(np.nan_to_num(ctx.run.mat("audit_step_cond"), nan=1.0), 1.0)
             if ctx.run.has("audit_step_cond") else np.ones_like(err))
    tol_rt = base * kappa                                   # (S, R): each round's tolerance
    over = err / tol_rt
    ro, r, s = worst(over, ctx.run.rounds, ctx.run.seeds)
    i, j = ctx.run.seeds.index(s), list(ctx.run.rounds).index(r)
    m, tol = float(err[i, j]), float(tol_rt[i, j])
    ok = ro <= 1
    sc = float(np.nanmedian(scale))
    if ok:
        m, r, s = worst(err, ctx.run.rounds, ctx.run.seeds)
        i, j = ctx.run.seeds.index(s), list(ctx.run.rounds).index(r)
        tol = float(tol_rt[i, j])
        note = (f"the step taken equals η_t·g replayed from the states (max relative error "
                f"{m:.2g} ≤ {tol:.2g} = {STEP_TOL:g} K ε κ, κ = ||X|| / ||Δ|| = "
                f"{float(kappa[i, j]):.3g} at that round; ||Δ_taken|| / ||Δ_replay|| median "
                f"{sc:.6g})")
    elif abs(sc - 1) > 0.5 * float(np.nanmedian(err)):
        note = (f"the step taken is {sc:.4g} × the replayed SGD step η_t·g (max relative error "
                f"{m:.3g} at round {r}, seed {s}): the step size used is not the logged η "
                "(a scaled or mis-scheduled learning rate)")
    else:
        off = float((err > tol_rt).mean())
        cause = ("in every seed-round, so on every client: a gradient at another point (a stale "
                 "or previous step's gradient)" if off >= 0.9 else
                 f"in only {off:.0%} of the seed-rounds, so only when particular clients are "
                 "among the replayed ones: a client-specific fault (a client stepping on "
                 "another client's data)")
        note = (f"the step taken points elsewhere than the replayed η_t·g (max relative error "
                f"{m:.3g} at round {r}, seed {s}, size ratio {sc:.4g}), {cause}")
    return _result(ctx, name, no, m, tol, ok, note,
                   {"round": r, "seed": s, "median_scale": sc, "kappa": float(kappa[i, j]),
                    "max_scale_dev": float(np.nanmax(np.abs(scale - 1)))},
                   "deterministic (replay, round-off tolerance)")


def check_frozen_audit(ctx: Context) -> CheckResult:
    """A2: a block the method says is frozen did not move during the local steps."""
    name, no = "frozen-audit", "A2"
    why = _older(ctx, "audit_frozen_move")
    if why:
        return _na(ctx, name, no, why)
    mv = ctx.run.mat("audit_frozen_move")
    m, r, s = worst(mv, ctx.run.rounds, ctx.run.seeds)
    ok = m == 0
    frozen = sorted({b for tr in ctx.run.trained for b in "AB" if b not in tr})
    if ok:
        note = ("no frozen block moved during the local steps" if frozen else
                "no block is frozen in any round (vacuous)")
    else:
        rounds = int((mv > 0).any(0).sum())
        note = (f"a block said to be frozen moved during the local steps in {rounds} of "
                f"{ctx.run.R} rounds (mean ||Δ||² per client up to {m:.3g}, round {r}, seed "
                f"{s}): the method trains a factor it says is frozen")
    return _result(ctx, name, no, m, 0.0, ok, note, {"round": r, "seed": s,
                                                     "frozen_blocks": "".join(frozen)},
                   "deterministic (exact 0)")


def check_gossip_audit(ctx: Context) -> CheckResult:
    """A3: the gossiped state equals W^t applied to the pre-gossip state."""
    name, no = "gossip-audit", "A3"
    if not ctx.run.has("audit_gossip_over"):
        if ctx.run.has("audit_eps"):
            return _na(ctx, name, no, "the gossip model's mixer declares nothing to compare "
                       "with (no audit_gossip_* columns)")
        return _na(ctx, name, no, _older(ctx, "audit_gossip_over"))
    over = ctx.run.mat("audit_gossip_over")
    err = ctx.run.mat("audit_gossip_err")
    m, r, s = worst(over, ctx.run.rounds, ctx.run.seeds)
    e = float(err[ctx.run.seeds.index(s), list(ctx.run.rounds).index(r)])
    ok = m == 0
    note = (f"the gossiped state equals W^t X_pre within its rounding bound (largest deviation "
            f"{float(np.nanmax(err)):.2g} of the gossip's own movement)" if ok else
            f"the gossiped state is not W^t applied to the pre-gossip state (off by {e:.3g} of "
            f"the gossip's own movement, {int(m)} client projections beyond the rounding bound "
            f"at round {r}, seed {s}; {int((over > 0).sum())} seed-rounds off): gossip used "
            "another matrix than the logged W^t (applied twice, a client left out, other "
            "weights)")
    return _result(ctx, name, no, m, 0.0, ok, note,
                   {"round": r, "seed": s, "relative_error": e},
                   "deterministic (rounding bound of W X)")


def check_bytes_audit(ctx: Context) -> CheckResult:
    """A4: logged bytes_sent against W^t's nonzeros times the message size."""
    name, no = "bytes-audit", "A4"
    if not ctx.run.has("audit_bytes"):
        if ctx.run.has("audit_eps"):
            return _na(ctx, name, no, "the gossip model's mixer declares no message count "
                       "(no audit_bytes column); not recounted")
        return _na(ctx, name, no, _older(ctx, "audit_bytes"))
    want = ctx.run.mat("audit_bytes")
    got = ctx.run.mat("bytes_sent")
    dev = np.abs(got - want) / np.maximum(want, 1.0)
    m, r, s = worst(dev, ctx.run.rounds, ctx.run.seeds)
    ok = m == 0
    i, j = ctx.run.seeds.index(s), list(ctx.run.rounds).index(r)
    note = ("bytes_sent equals W^t's nonzero off-diagonal entries × the gossiped blocks' bytes"
            if ok else
            f"bytes_sent = {got[i, j]:.6g} but W^t's messages carry {want[i, j]:.6g} bytes "
            f"(round {r}, seed {s}; {int((dev > 0).sum())} seed-rounds off): the byte count "
            "is wrong, or gossip used other edges than W^t's")
    return _result(ctx, name, no, m, 0.0, ok, note, {"round": r, "seed": s},
                   "deterministic (exact count)")


AUDIT_READS = ("audit_step_err?", "audit_step_scale?", "audit_step_cond?",
               "audit_frozen_move?", "audit_gossip_err?", "audit_gossip_over?", "audit_bytes?",
               "audit_eps?", "bytes_sent?")
"""The columns the audit checks read (all optional: each check says n/a without them)."""

AUDITS = (
    ("step-audit", check_step_audit, ()),
    ("frozen-audit", check_frozen_audit, ()),
    ("gossip-audit", check_gossip_audit, ("synchronous-gossip",)),
    ("bytes-audit", check_bytes_audit, ("synchronous-gossip",)),
)
"""(name, function, premises) of the audit checks, registered by :mod:`adflora_analysis.theory`:
A3 and A4 rest on synchronous gossip (under stale or partial gossip the registry answers
``n/a (stale gossip: ...)`` before they run, as for every check declaring it)."""
