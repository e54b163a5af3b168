"""Checks 5a/5b/5c — the descent-bookkeeping audit (derivation: docs/theory.md §3).

An audit of the logs, **not** evidence of convergence: its bound is built from the same logged
quantities as its measured side (a, g_bar, the drift term and f^0 - f_inf), so bound ÷ measured
is ~1 by construction and it cannot fail on a run whose logs agree with each other, whatever the
method does. It catches logs that disagree with the descent lemma (an under-step, a corrupted
gradient; 5c also a step larger than the logged eta). Convergence is check 5 (:mod:`.convergence`,
a priori from the problem's constants).

**5a (tight)**. Every step k of round t moves the averaged model by x_bar+ = x_bar - eta_t g_hat
with g_hat = (1/n) sum_i M_t g_i. With a = M_t grad f(x_bar), g_bar = E g_hat = (1/n) sum_i
M_t grad f_i(x_i) and L_k the exact curvature of f along the trained block at x_bar
(B-phase: s^2 lam_max(A_bar Sigma A_bar^T); A-phase: s^2 lam_max(B_bar^T B_bar) lam_max(Sigma):
f is quadratic in one block, so this is exact on the whole step), Lian et al. 2017's step gives

    (eta/2)(||a||^2 + (1 - eta L_k)||g_bar||^2)
        <= f(x_bar) - E f(x_bar+) + (eta/2)||a - g_bar||^2 + (eta^2 L_k / 2) V_k / n,

with V_k the clients' mean (masked) gradient variance and ||a - g_bar||^2 the exact
client-drift bias (no Jensen step: it keeps sum_i (x_i - x_bar) = 0). When both blocks train
(``lora``), L_k is a local constant along the realized step and the curvature term is measured
pathwise (L_k ||g_hat||^2 on the right, ||g_bar||^2 kept whole on the left). Summed with weights
eta_t and f(x_bar^R) >= f_inf (f* of rank r; ``ffa-lora``: min over B of f(A^0, B)):

    sum eta_t [||a||^2 + ||g_bar||^2 - eta_t cl_t] / sum eta_t
        <= 2 (f(x_bar^0) - f_inf) / (K sum eta_t) + sum eta_t [drift_t + eta_t cr_t] / sum eta_t.

Tested at the final R (pooled across seeds, one-sided); the curve is every R. It requires
eta_t L_k <= 1 at every block step with the *logged* eta (an audit of the logs): a step above
the curvature limit is ``violated``. The measured running average is fitted as a + b/R.

**5c (per-round sandwich)**: the loss change of the averaged model in round t,
Delta_t = f(x_bar^{t,0}) - f(x_bar^{t+1,0}) (gossip keeps x_bar), against the logged first-order
decrease D_t = eta_t K <a, g_bar> = eta_t K (||a||^2 + ||g_bar||^2 - ||a - g_bar||^2) / 2.
One block (f quadratic and convex in it): D_t - eta_t^2 K (cl + cr) / 2 <= E Delta_t <= D_t;
joint steps: |E Delta_t - D_t| <= eta_t^2 K cr / 2 (cr = L ||g_hat||^2 pathwise). Both sides
are tested pooled over rounds and seeds: a step c x the logged one moves Delta_t to ~c D_t.

**5b (L_hull form)**: the earlier form with the trajectory-wide L_hull and the Jensen bound
L^2 Xi of the drift; needs eta L_hull <= 1 (L_hull at the final round, so not adapted to the
filtration: indicative). Koloskova et al. 2020's theorem further needs eta = O(p/(K L)); the
row says by how much the run breaks it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from adflora_analysis.theory.data import Context
from adflora_analysis.theory.result import CheckResult
from adflora_analysis.theory.stats import fit_a_plus_b_over_R, pooled_test, threshold

SOURCE = ("Lian et al. 2017, Thm 1 (descent step); Koloskova et al. 2020, Thm 2; "
          "constants derived in docs/theory.md §3")
NAME = "descent-audit"
REQUIRES = ("one-phase-per-round", "synchronous-gossip", "doubly-stochastic", "sgd-steps")
READS = ("grad_norm_sq_inner?", "sn_gbar_sq?", "sn_drift?", "sn_curv_left?", "sn_curv_right?",
         "L_block?", "loss_start?", "f_inf_B?", "loss?", "grad_norm_sq?", "xi_inner?",
         "sigma_sq_max?", "L_hull?", "eta?")
COLUMNS = ("grad_norm_sq_inner", "sn_gbar_sq", "sn_drift", "sn_curv_left", "sn_curv_right",
           "L_block", "loss_start")


def f_inf(ctx: Context) -> tuple[np.ndarray, str]:
    """Per-seed infimum the method can reach, shape (seeds,), and where it comes from:
    min_B f(A^0, B) if A never trains, else f* (the minimum loss seen when f* is unknown)."""
    run = ctx.run
    if not any("A" in tr for tr in run.trained) and run.has("f_inf_B"):
        return run.mat("f_inf_B")[:, 0], "min over B of f(A^0, B)"
    fstar = ctx.vmeta.get("f_star")
    if fstar is None:
        return np.nanmin(run.mat("loss"), 1), "f* unknown: min loss seen (optimistic)"
    seeds = ctx.vmeta.get("seeds") or run.seeds
    pos = {int(s): i for i, s in enumerate(seeds)}
    arr = np.asarray(fstar, float)
    return np.array([arr[pos[int(s)]] for s in run.seeds]), "f* (rank-r minimum)"


def check_descent_audit(ctx: Context) -> list[CheckResult]:
    """Checks 5a, 5b and 5c (the descent-bookkeeping audit) for one (variant, method)."""
    # clock drift and stale gossip: the registry answers n/a from REQUIRES before this runs
    out = []
    run = ctx.run
    missing = [c for c in COLUMNS if not run.has(c)]
    if missing:
        out.append(CheckResult(NAME, "5a", ctx.method, ctx.variant, "n/a",
                               note=f"the run lacks {', '.join(missing)}", source=SOURCE))
    else:
        out.append(_tight(ctx))
    out.append(_lhull(ctx))
    if not missing:
        out.append(_sandwich(ctx))
    return out


def _tight(ctx: Context) -> CheckResult:
    run, K = ctx.run, ctx.K
    eta = ctx.lr[None, :]
    f0 = run.mat("loss_start")[:, 0]
    finf, fnote = f_inf(ctx)
    a2, gb = run.mat("grad_norm_sq_inner"), run.mat("sn_gbar_sq")
    cl, cr, dr = run.mat("sn_curv_left"), run.mat("sn_curv_right"), run.mat("sn_drift")
    W = np.cumsum(np.broadcast_to(eta, a2.shape), 1)
    meas = np.cumsum(eta * (a2 + gb - eta * cl), 1) / W
    t_init = 2 * (f0 - finf)[:, None] / (K * W)
    t_drift = np.cumsum(eta * dr, 1) / W
    t_curv = np.cumsum(eta * eta * cr, 1) / W
    bound = t_init + t_drift + t_curv
    t = pooled_test(meas[:, -1:], lambda _p: bound[:, -1:], 0.5, 0.0, z=ctx.z,
                    effect=ctx.effect)
    block = np.array([len(tr) == 1 for tr in run.trained])
    etaL_all = ctx.lr * run.mat("L_block").max(0)
    etaL = etaL_all[block]                      # the eta L <= 1 requirement: one-block steps
    max_etaL = float(etaL.max()) if etaL.size else math.nan
    curve = pd.DataFrame({"round": run.rounds, "measured": meas.mean(0),
                          "bound": bound.mean(0)})
    Rs = np.arange(1, run.R + 1, dtype=float)
    run_avg = np.cumsum(a2.mean(0)) / Rs
    half = slice(run.R // 2, run.R)
    fa, fb = fit_a_plus_b_over_R(Rs[half], run_avg[half]) if run.R >= 4 else (math.nan,) * 2
    det = {"f_inf": fnote, "term_init": float(t_init[:, -1].mean()),
           "term_drift": float(t_drift[:, -1].mean()), "term_curvature":
           float(t_curv[:, -1].mean()), "max_eta_L_block": max_etaL,
           "max_eta_L_joint": float(etaL_all[~block].max()) if (~block).any() else None,
           "running_avg_fit_a": fa, "running_avg_fit_b": fb,
           "final_grad_norm_sq": float(run.mat("grad_norm_sq")[:, -1].mean())
           if run.has("grad_norm_sq") else None}
    note = (f"bound/measured {t.ratio:.3g} at R = {run.R} (init {det['term_init']:.3g}, "
            f"drift {det['term_drift']:.3g}, curvature {det['term_curvature']:.3g}); "
            + (f"max eta L = {max_etaL:.3g}" if math.isfinite(max_etaL) else
               f"joint steps, local eta L up to {det['max_eta_L_joint']:.3g}")
            + f"; f_inf = {fnote}; running average of "
            f"||M grad f||^2 ~ {fa:.3g} + {fb:.3g}/R")
    note = "audit of the logs (not a convergence test: check 5); " + note
    res = CheckResult.from_test(NAME, "5a", ctx.method, ctx.variant, t,
                                source=SOURCE, note=note, details=det, curve=curve)
    if math.isfinite(max_etaL) and max_etaL > 1:
        res.status = "violated"
        res.note = (f"step above the curvature limit: eta L = {max_etaL:.3g} > 1 (Lian et al. "
                    "2017 need eta L <= 1); " + res.note)
    return res


def _lhull(ctx: Context) -> CheckResult:
    run, K, n = ctx.run, ctx.K, ctx.n
    name = "descent-audit-Lhull"
    need = ("grad_norm_sq_inner", "xi_inner", "loss_start", "sigma_sq_max", "L_hull")
    if not all(run.has(c) for c in need):
        return CheckResult(name, "5b", ctx.method, ctx.variant, "n/a",
                           note="the run lacks the L_hull columns", source=SOURCE)
    eta = ctx.lr[None, :]
    f0 = run.mat("loss_start")[:, 0]
    finf, _ = f_inf(ctx)
    L = run.mat("L_hull")[:, -1:]
    sig = np.nanmax(run.mat("sigma_sq_max"), 1)[:, None]
    W = np.cumsum(np.broadcast_to(eta, (run.S, run.R)), 1)
    meas = np.cumsum(eta * run.mat("grad_norm_sq_inner"), 1) / W
    bound = (2 * (f0 - finf)[:, None] / (K * W)
             + L ** 2 * np.cumsum(eta * run.mat("xi_inner"), 1) / W
             + L * np.cumsum(eta * eta, 1) / W * sig / n)
    etaL = float((ctx.lr.max() * L).max())
    cond = float(ctx.lr.max() * K * L.max() / ctx.p) if ctx.p > 0 else math.inf
    curve = pd.DataFrame({"round": run.rounds, "measured": meas.mean(0),
                          "bound": bound.mean(0)})
    det = {"eta_L_hull": etaL, "eta_K_L_over_p": cond}
    cnote = (f"the run breaks Koloskova et al.'s step condition eta = O(p/(K L)) "
             f"(eta K L_hull / p = {cond:.3g})" if cond > 1 else
             f"eta K L_hull / p = {cond:.3g}")
    if etaL > 1:
        return CheckResult(name, "5b", ctx.method, ctx.variant, "n/a", source=SOURCE,
                           note=f"eta L_hull = {etaL:.3g} > 1: this form does not apply; "
                                + cnote, details=det, curve=curve)
    t = pooled_test(meas[:, -1:], lambda _p: bound[:, -1:], 0.5, 0.0, z=ctx.z,
                    effect=ctx.effect)
    return CheckResult.from_test(name, "5b", ctx.method, ctx.variant, t, source=SOURCE,
                                 note=f"L_hull^2 Xi form (Jensen drift bound): bound/measured "
                                      f"{t.ratio:.3g}; " + cnote, details=det, curve=curve)


def _difference_test(diff: np.ndarray, z: float) -> tuple[str, float, float]:
    """One-sided test that E diff >= 0 over seeds (S,): (status, mean, standard error);
    ``violated`` when mean + threshold × se < 0.

    >>> _difference_test(np.array([-1.0, -1.1, -0.9, -1.0]), 3.0)[0]
    'violated'
    """
    S = len(diff)
    se = float(diff.std(ddof=1) / math.sqrt(S)) if S > 1 else math.inf
    m = float(diff.mean())
    return ("violated" if m + threshold(z, S) * se < 0 else "held"), m, se


def _sandwich(ctx: Context) -> CheckResult:
    """5c: the per-round loss change of x_bar between the logged first-order decrease minus and
    plus its curvature terms (module docstring); each side a pooled one-sided test."""
    run, K = ctx.run, ctx.K
    eta = ctx.lr[None, :]
    a2, gb, dr = run.mat("grad_norm_sq_inner"), run.mat("sn_gbar_sq"), run.mat("sn_drift")
    cl, cr = run.mat("sn_curv_left"), run.mat("sn_curv_right")
    delta = run.mat("loss_start") - run.mat("loss")      # f(x_bar) before - after the round
    first = eta * K * (a2 + gb - dr) / 2
    joint = np.array([len(tr) > 1 for tr in run.trained])[None, :]
    slack_lo = eta * eta * K * (cl + cr) / 2
    slack_hi = np.where(joint, eta * eta * K * cr / 2, 0.0)
    upper = pooled_test(delta, lambda _p: first + slack_hi, 0.5, 0.0, z=ctx.z,
                        effect=ctx.effect)
    lo_side = first - slack_lo
    lower = pooled_test(lo_side, lambda _p: delta, 0.5, 0.0, z=ctx.z, effect=ctx.effect)
    lo_sum, d_sum = lo_side.sum(1), delta.sum(1)
    lower_status, lower_txt = lower.status, None
    if lo_sum.mean() <= 0 or d_sum.mean() <= 0:
        # a ratio of sums is meaningless when a side sums to <= 0 (large eta L: the curvature
        # slack exceeds the first-order decrease); test the per-seed difference instead
        lower_status, diff, se = _difference_test(d_sum - lo_sum, ctx.z)
        lower_txt = (f"lower side as a difference (the lower bound sums to "
                     f"{lo_sum.mean():.3g}): Σ Δ - lower = {diff:.3g} ± {se:.2g}")
    if d_sum.mean() <= 0 < (first + slack_hi).sum(1).mean():
        st, _, _ = _difference_test((first + slack_hi).sum(1) - d_sum, ctx.z)
        upper = dataclasses.replace(upper, status=st)
    curve = pd.DataFrame({"round": run.rounds, "measured": delta.mean(0),
                          "bound": (first + slack_hi).mean(0),
                          "lower": (first - slack_lo).mean(0)})
    det = {"upper_ratio": upper.ratio, "upper_status": upper.status,
           "lower_ratio": lower.ratio, "lower_status": lower_status,
           "loss_change": float(delta.sum(1).mean()),
           "first_order_decrease": float(first.sum(1).mean())}
    note = (f"audit of the logs: sum of f(x̄) decreases {det['loss_change']:.4g} against the "
            f"logged first-order decrease {det['first_order_decrease']:.4g}; upper side "
            f"(bound/measured) {upper.ratio:.3g}, "
            + ("" if lower_txt else "lower side (measured/bound) ")
            + (lower_txt if lower_txt else
               f"{1 / lower.ratio if lower.ratio else math.inf:.3g}"))
    res = CheckResult.from_test(f"{NAME}-round", "5c", ctx.method, ctx.variant, upper,
                                source=SOURCE, details=det, curve=curve, note=note)
    if upper.status == "violated":
        res.note = ("f(x̄) fell faster than the logged steps allow: the step taken is larger "
                    "than the logged eta times the logged gradient; " + res.note)
    elif lower_status == "violated":
        res.status = "violated"
        res.note = ("f(x̄) fell slower than the logged steps imply: a step smaller than logged "
                    "or a gradient other than the logged one; " + res.note)
    elif lower_status == "underpowered" and res.status == "held":
        res.status = "underpowered"
    return res
