"""Check 6 — the cross term C = ||(1/n) sum_i (B_i - B_bar)(A_i - A_bar)||_F (docs/theory.md §4).

- **6i (invariant)**: C <= sqrt(Xi_A Xi_B) at every seed, round and layer — Cauchy–Schwarz, so
  a unit test of the metric, not of the method — and, where the problem logs it, C equals
  ``cross_term_direct`` (its first form from the products B_i A_i; Cauchy–Schwarz alone holds
  for any pairing of the clients' factors).
- **6a**: E C_t <= sqrt(E U_A(t) E U_B(t)) with U check 4b's unrolled recursion driven by the
  measured displacement (C <= sqrt(Xi_A Xi_B), then Cauchy–Schwarz in expectation).
- **6b**: E C_t <= sqrt(V_A(t) V_B(t)) on the second half, V_X(t) = (1 - p/2)^(t - t0)
  E Xi_X(t0) + kappa(p) sup_{t0<s<=t} eta_s^2 K^2 E Gamma_X(s) (check 4c's lemma restarted at
  t0 = R/2): at a constant step the floor of C is kappa(p) eta^2 K^2 sqrt(Gamma_A Gamma_B).
- **6c** (only when the step decays): E C_t <= sqrt(W_A(t) W_B(t)) with W the exact recursion
  driven by eta_t^2 K^2 E Gamma(t), on the second half; and C -> 0 with C / eta^2 bounded: the
  exponent beta of C in eta on the second half (bias-corrected log seed means, bootstrap
  interval) must be > 0, and C / eta^2 is reported at the quarters.
- **6d** (``adf-lora`` against ``rolora`` and ``lora`` of the same variant and seeds): the
  time-averaged C of ADF-LoRA is below the other's; ratio other ÷ adf with a paired
  seed-bootstrap interval: held if its lower end is > 1, violated if its upper end is < 1,
  else underpowered.

6a–6c apply to methods whose blocks are each either gossiped every round or never move.
Sources: docs/architecture.md §4; ADF-LoRA (arXiv 2511.18291); the consensus recursion of
Koloskova et al. 2020.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from adflora_analysis.theory.consensus import kappa, unrolled
from adflora_analysis.theory.data import Context
from adflora_analysis.theory.gossip import tiny
from adflora_analysis.theory.result import CheckResult
from adflora_analysis.theory.stats import (
    bootstrap_ratio,
    interval,
    log_mean_unbiased,
    statistic_test,
)

SOURCE = "docs/theory.md §4; ADF-LoRA (arXiv 2511.18291); Koloskova et al. 2020"


def check_invariant(ctx: Context) -> CheckResult:
    """6i: C <= sqrt(Xi_A Xi_B) at every point (round-off tolerance 1e-9 relative). The ratio
    bound ÷ C is the minimum over the points where neither Xi is round-off of zero (none, e.g.
    ffa-lora's shared A: the ratio is undefined, shown as ``-``, not 0/0). A C above the
    bound after gossip but within the pre-gossip one (``xi_X_local``) is diagnosed as
    computed before gossip; one that differs from its first form otherwise pairs the wrong
    factors."""
    run = ctx.run
    cols = ["cross_term", "xi_A", "xi_B"]
    local = all(c in run.df and c in run.layers for c in ("xi_A_local", "xi_B_local"))
    cols += ["xi_A_local", "xi_B_local"] if local else []
    allp = pd.concat([run.layers[cols], run.df[cols]], ignore_index=True)
    C = allp.cross_term.to_numpy(float)
    xa, xb = allp.xi_A.to_numpy(float), allp.xi_B.to_numpy(float)
    B = np.sqrt(xa * xb)
    ok = C <= B + 1e-9 * B + 1e-15
    live = np.minimum(xa, xb) > tiny(np.concatenate([xa, xb]))   # not round-off of zero
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(C > 0, B / C, np.inf)[live]
    ratio = float(r.min()) if r.size else math.inf
    before = False
    if local and not ok.all():
        Bpre = np.sqrt(allp.xi_A_local.to_numpy(float) * allp.xi_B_local.to_numpy(float))
        before = bool((C <= Bpre + 1e-9 * Bpre + 1e-15).all())
    note = (f"C <= sqrt(Xi_A Xi_B) at {len(C)} points, {int((~ok).sum())} exceed it")
    if before:
        note += (" — and none exceeds the pre-gossip sqrt(Xi_A_local Xi_B_local): C was "
                 "computed before gossip (on the state after the local update), not on the "
                 "gossiped state whose Xi it is logged with")
    if not r.size:
        note += ("; ratio n/a: Xi_A or Xi_B is round-off of zero at every point (a factor "
                 "shared by every client), so C and its bound are both ~0")
    agree = True
    if run.has("cross_term_direct"):
        Cm, Cd = run.mat("cross_term"), run.mat("cross_term_direct")
        scale = np.sqrt(run.mat("xi_A") * run.mat("xi_B"))
        dev = np.abs(Cm - Cd)
        agree = bool((dev <= 1e-6 * np.maximum(Cd, scale) + 1e-12).all())
        if agree:
            note += (f"; C equals its first form (1/n)sum B_iA_i - B_bar A_bar (max deviation "
                     f"{dev.max():.2g})")
        elif before:
            note += (f"; C DIFFERS from its first form on the gossiped state (max deviation "
                     f"{dev.max():.3g}): computed before gossip")
        else:
            note += (f"; C DIFFERS from its first form (max deviation {dev.max():.3g})"
                     + (" while within Cauchy–Schwarz" if ok.all() else "")
                     + ": the metric pairs the wrong factors")
    note += "; a unit test of the metric, says nothing of the method"
    return CheckResult("cross-term-invariant", "6i", ctx.method, ctx.variant,
                       "held" if ok.all() and agree else "violated", measured=float(C.mean()),
                       bound=float(B.mean()), ratio=ratio, ratio_ci=(ratio, ratio),
                       threshold=1e-9, seeds=run.S,
                       test="deterministic (metric unit test: Cauchy–Schwarz)",
                       source="docs/architecture.md §4 (Cauchy–Schwarz)",
                       note=note,
                       details={"points": int(len(C)), "violations": int((~ok).sum()),
                                "ratio_points": int(r.size), "computed_before_gossip": before})


def _blocks_ok(ctx: Context) -> bool:
    """Each block is gossiped every round or never moves (Xi constant and ~0)."""
    run = ctx.run
    for b in ("A", "B"):
        if all(b in m for m in run.mixed):
            continue
        xi = run.mat(f"xi_{b}")
        if any(b in tr for tr in run.trained) or xi.max() > tiny(np.concatenate(
                [run.mat("xi_A"), run.mat("xi_B")], 1)):
            return False
    return True


def _na(ctx: Context, name: str, number: str, why: str) -> CheckResult:
    return CheckResult(name, number, ctx.method, ctx.variant, "n/a", note=why, source=SOURCE)


def _sqrt_test(ctx: Context, name: str, number: str, UA, UB, cols: np.ndarray, note: str,
               details: dict | None = None) -> CheckResult:
    """E C <= sqrt(mean U_A mean U_B) pooled over ``cols``; ``UA(idx, p)`` -> (R,) seed-mean
    bounds over seeds ``idx``."""
    C = ctx.run.mat("cross_term")

    def stat(idx, pp):
        b = np.sqrt(np.maximum(UA(idx, pp), 0) * np.maximum(UB(idx, pp), 0))[cols]
        return float(b.sum()), float(C[idx][:, cols].mean(0).sum())

    t = statistic_test(stat, ctx.run.S, ctx.p, ctx.p_se, z=ctx.z, effect=ctx.effect)
    full = np.arange(ctx.run.S)
    curve = pd.DataFrame({"round": ctx.run.rounds[cols], "measured": C.mean(0)[cols],
                          "bound": np.sqrt(UA(full, ctx.p) * UB(full, ctx.p))[cols]})
    return CheckResult.from_test(name, number, ctx.method, ctx.variant, t, source=SOURCE,
                                 note=note + f"; bound/measured {t.ratio:.3g}",
                                 details=details or {}, curve=curve)


def check_cross_term(ctx: Context) -> list[CheckResult]:
    """6i, 6a, 6b, 6c (and 6d for adf-lora) for one (variant, method). (The registry runs
    them as three checks: 6i has no premise, 6a–6c rest on the consensus recursion.)"""
    out = [check_invariant(ctx)]
    if not math.isfinite(ctx.p) or ctx.p <= 0:
        return out
    return out + check_cross_bounds(ctx) + check_adf_below(ctx)


def check_cross_bounds(ctx: Context) -> list[CheckResult]:
    """6a, 6b, 6c for one (variant, method) (premises: p > 0, W^t doubly stochastic, fresh
    gossip)."""
    run = ctx.run
    out: list[CheckResult] = []
    C = run.mat("cross_term")
    if C.max() <= tiny(np.sqrt(run.mat("xi_A") * run.mat("xi_B"))) or C.max() < 1e-150:
        why = "C is round-off of zero (a block is identical on every client)"
        out += [_na(ctx, "cross-term-unrolled", "6a", why),
                _na(ctx, "cross-term-floor", "6b", why)]
    elif not _blocks_ok(ctx):
        why = "a block is trained but not gossiped every round: the recursion does not apply"
        out += [_na(ctx, "cross-term-unrolled", "6a", why),
                _na(ctx, "cross-term-floor", "6b", why)]
    else:
        xi = {b: run.mat(f"xi_{b}") for b in ("A", "B")}
        disp = {b: run.mat(f"disp_{b}") for b in ("A", "B")}

        def U(b):
            return lambda idx, pp: unrolled(xi[b][idx, 0], disp[b][idx], pp).mean(0)

        cols = np.arange(1, run.R)
        out.append(_sqrt_test(ctx, "cross-term-unrolled", "6a", U("A"), U("B"), cols,
                              "E C <= sqrt(E U_A E U_B), U driven by the measured displacement"))
        if all(run.has(f"gamma_{b}") for b in ("A", "B")):
            out += _gamma_checks(ctx, xi)
        else:
            out.append(_na(ctx, "cross-term-floor", "6b", "no gamma_A/gamma_B columns"))
    return out


def _gamma_checks(ctx: Context, xi: dict[str, np.ndarray]) -> list[CheckResult]:
    run, p = ctx.run, ctx.p
    eta = ctx.lr
    K = ctx.K
    gam = {b: run.mat(f"gamma_{b}") for b in ("A", "B")}
    t0 = run.R // 2
    tail = np.arange(t0 + 1, run.R)
    half = np.arange(t0, run.R)
    if len(tail) == 0:   # the floor is read on the second half of the run, after t0
        return [_na(ctx, "cross-term-floor", "6b",
                    f"{run.R} rounds: the floor needs at least 3 (read after round R // 2)")]

    def V(b):
        def f(idx, pp):            # restarted at t0 with the measured Xi(t0), sup over (t0, t]
            d = eta ** 2 * K ** 2 * gam[b][idx].mean(0)
            out = np.zeros(run.R)
            out[tail] = ((1 - pp / 2) ** (tail - t0) * xi[b][idx, t0].mean()
                         + kappa(pp) * np.maximum.accumulate(d[tail]))
            return out
        return f

    C = run.mat("cross_term")
    g = {b: float((eta ** 2 * K ** 2 * gam[b].mean(0))[tail].max()) for b in ("A", "B")}
    floor = kappa(p) * math.sqrt(g["A"] * g["B"])
    det = {"kappa": kappa(p), "floor_kappa_eta2K2_sqrtGamma": floor,
           "tail_C": float(C.mean(0)[tail].mean()), "eta_final": float(eta[-1])}
    out = [_sqrt_test(ctx, "cross-term-floor", "6b", V("A"), V("B"), tail,
                      f"tail C = {det['tail_C']:.3g} <= kappa(p) eta^2 K^2 sqrt(Gamma_A "
                      f"Gamma_B) = {floor:.3g} (kappa = {kappa(p):.2f}) plus the transient "
                      f"(1 - p/2)^(t - t0) Xi(t0), t0 = {t0}", det)]
    if np.allclose(eta, eta[0]):
        return out

    def Wrec(b):
        def f(idx, pp):
            d = (eta ** 2 * K ** 2 * gam[b][idx].mean(0))
            return unrolled(np.full(1, xi[b][idx, 0].mean()), d[None], pp)[0]
        return f

    res = _sqrt_test(ctx, "cross-term-decay", "6c", Wrec("A"), Wrec("B"), half,
                     "decaying step: E C <= sqrt(W_A W_B), W driven by eta_t^2 K^2 E Gamma_t")
    # C -> 0 with C / eta^2 bounded: exponent of C in eta on the second half
    y_all = log_mean_unbiased(C[:, half])
    x = np.log(eta[half])

    def beta(idx):
        y = log_mean_unbiased(C[idx][:, half])
        return float(np.polyfit(x, y, 1)[0])

    b0 = float(np.polyfit(x, y_all, 1)[0])
    rng = np.random.default_rng(0)
    boots = np.array([beta(rng.integers(0, run.S, run.S)) for _ in range(400)])
    lo, hi = (float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)))
    q = [slice(run.R * i // 4, run.R * (i + 1) // 4) for i in range(4)]
    ratio_q = [float((C.mean(0) / eta ** 2)[s].mean()) for s in q]
    res.details.update(beta=b0, beta_ci=[lo, hi], C_over_eta2_quarters=ratio_q,
                       C_first_quarter=float(C.mean(0)[q[0]].mean()),
                       C_last_quarter=float(C.mean(0)[q[3]].mean()))
    decays = lo > 0
    if res.status == "held" and not decays:
        res.status = "violated"
    res.note += (f"; C ~ eta^beta on the second half, beta = {b0:.2f} [{lo:.2f}, {hi:.2f}]"
                 f" ({'C -> 0' if decays else 'no decay shown'}); C/eta^2 by quarter: "
                 + ", ".join(f"{v:.3g}" for v in ratio_q))
    out.append(res)
    return out


def check_adf_below(ctx: Context) -> list[CheckResult]:
    """6d: ADF-LoRA's time-averaged C below rolora's and lora's (paired seeds); [] for
    another method."""
    out: list[CheckResult] = []
    if ctx.method != "adf-lora":
        return out
    C = ctx.run.mat("cross_term").mean(1)
    for other in ("rolora", "lora"):
        r = ctx.runs.get(other)
        if r is None or r.seeds != ctx.run.seeds:
            continue
        Co = r.mat("cross_term").mean(1)
        ratio, (lo, hi) = bootstrap_ratio(Co, C)
        if ctx.run.S < 3:
            status = "underpowered"
        else:
            status = "held" if lo > 1 else ("violated" if hi < 1 else "underpowered")
        out.append(CheckResult(
            f"cross-term-below-{other}", "6d", ctx.method, ctx.variant, status,
            measured=float(C.mean()), bound=float(Co.mean()), ratio=ratio, ratio_ci=(lo, hi),
            seeds=ctx.run.S, test="paired seed bootstrap (95%)", source=SOURCE,
            note=f"time-averaged C: adf-lora {C.mean():.3g}, {other} {Co.mean():.3g}; "
                 f"{other} ÷ adf-lora = {interval(ratio, lo, hi, '.3g')}",
            details={"other": other}))
    return out


