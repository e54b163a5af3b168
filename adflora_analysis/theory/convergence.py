"""Check 5 — convergence to a stationary point, against an a-priori bound (docs/theory.md §3).

Measured: the eta_t-weighted running average over the rounds t < R of ||M_t grad f(x_bar)||^2
(column ``grad_norm_sq_inner``: the trained block's gradient of the global objective at the
clients' average, mean over the K inner steps; M_t = I when both blocks train), computed from
the states, not from the logged step. Bound: a function of the problem's constants only —
L (``L_hull``, rigorous on the hull of every iterate; max over the run), sigma^2
(``sigma_sq_max``, max), zeta^2 (``zeta_sq``, max), p, the *configured* eta_t, K, R and
F_0 = f(x_bar^0) - f_inf — following Lian et al. 2017 (Thm 1, descent step) and Koloskova et
al. 2020 (Thm 2, consensus recursion) with every constant written out (docs/theory.md (3.3)):

    B(R) = 2 F_0 / (K W_R) + L sigma^2 sum eta_t^2 / (n W_R) + L^2 sum eta_t X_t / W_R,

W_R = sum_{t<R} eta_t, X_t the a-priori bound of the consensus error inside round t:
X_t = [2 Xi_t + 2 eta_t^2 K^2 (sigma^2 + 2 zeta^2)] / (1 - 4 eta_t^2 K^2 L^2) and
Xi_{t+1} = (1 - p/2) Xi_t + c(p) eta_t^2 K^2 (sigma^2 + 2 zeta^2 + 2 L^2 X_t), Xi_0 = 0 (one
shared initialisation), c(p) = (1 - p)(1 + 2/p). Above eta_max (:func:`eta_max`, Koloskova et
al.'s eta = O(p / (K L)) with its constant) the recursion does not contract and B grows
geometrically in R; with 2 eta K L >= 1 the within-round bound fails and B is ``inf``: it does
not constrain the run (then the verdict rests on (i) and (iii) below).

Verdict. beta is the running average's log-log slope over the second half of the rounds,
reported with its seed-bootstrap interval against the exponent of the theorem's initial-gap term
2 F_0 / (K W_R) (-1 at a constant step; slower for a decaying one).

- Inside the step condition (configured eta L_hull <= 1): ``violated`` when (ii) the measured
  running average exceeds B(R) at the final R (pooled one-sided test), or (iii) the run stops
  converging: beta is significantly above 0 (it grows) and the average sits above the
  initial-gap term.
- Outside it (eta L_hull > 1, the descent step's premise fails): the run cannot violate the
  theorem. If the running average still decays (beta's interval below 0) the status is
  ``n/a (outside the theorem ...; converges anyway, beta = ...)``; if it decays significantly
  slower than the theorem's rate (beta's interval above the theorem's beta) it is
  ``violated`` with the cause named ("does not converge; eta L_hull > 1 is the likely cause");
  an interval that holds both the theorem's beta and 0 is ``underpowered``,
  so a setting that does not converge is never read as ``held`` or passed over.
"""

from __future__ import annotations

import math
import tomllib
from typing import Any

import numpy as np
import pandas as pd

from adflora_analysis.theory.data import Context
from adflora_analysis.theory.result import CheckResult
from adflora_analysis.theory.stationarity import f_inf
from adflora_analysis.theory.stats import decide, pooled_test, threshold

NAME = "stationarity"
SOURCE = ("Lian et al. 2017, Thm 1 (descent step); Koloskova et al. 2020, Thm 2 (consensus "
          "recursion); constants written out in docs/theory.md §3 (3.3)")
COLUMNS = ("grad_norm_sq_inner", "loss_start", "L_hull", "sigma_sq_max", "zeta_sq")
REQUIRES = ("one-phase-per-round", "synchronous-gossip", "doubly-stochastic", "p>0",
            "sgd-steps")
READS = (*(f"{c}?" for c in COLUMNS), "f_inf_B?", "grad_norm_sq?")


def configured_steps(ctx: Context) -> tuple[np.ndarray, str]:
    """The configured eta_t of every round (R,) — from the run's ``config.toml`` (lr,
    lr_schedule, lr_t0, lr_min, rounds), else the variant's ``lr`` at a constant schedule — and
    where it came from. Never the logged ``eta``: a planted step must not move the bound."""
    from adflora_analysis.core.lr_schedules import lr_at

    cfg: dict[str, Any] = {}
    path = getattr(ctx.data, "path", None)
    if path is not None and (path / "config.toml").is_file():
        with open(path / "config.toml", "rb") as f:
            cfg = tomllib.load(f)
    lr = ctx.vmeta.get("lr", cfg.get("lr"))
    if lr is None:
        return ctx.lr, "logged eta (the run records no configured lr)"
    sched = str(cfg.get("lr_schedule", "constant"))
    rounds = int(cfg.get("rounds", ctx.run.R))
    eta = np.array([lr_at(int(t), float(lr), sched, t0=float(cfg.get("lr_t0", 10.0)),
                          rounds=rounds, lr_min=float(cfg.get("lr_min", 0.0)))
                    for t in ctx.run.rounds])
    return eta, f"configured ({sched}, eta_0 = {float(lr):g})"


def consensus_bound(eta: np.ndarray, K: int, L: float, sig2: float, zeta2: float, p: float
                    ) -> tuple[np.ndarray, float]:
    """A-priori bound X_t (R,) of the consensus error inside each round (module docstring)
    and the recursion's worst contraction factor rho' (>= 1: no a-priori consensus bound).

    >>> X, rho = consensus_bound(np.full(3, 0.01), 1, 1.0, 1.0, 0.0, 0.5)
    >>> round(float(X[0]), 6), bool(rho < 1)   # 2 eta^2 sigma^2 / (1 - 4 eta^2 L^2)
    (0.0002, True)
    """
    c = (1 - p) * (1 + 2 / p) if p > 0 else math.inf
    xi, out, worst = 0.0, np.empty(len(eta)), 0.0
    noise = sig2 + 2 * zeta2
    with np.errstate(over="ignore", invalid="ignore"):
        for t, e in enumerate(eta):
            a = (e * K) ** 2
            q = 4 * a * L * L
            if q >= 1 or not math.isfinite(c):
                out[t:] = math.inf
                return out, math.inf
            X = (2 * xi + 2 * a * noise) / (1 - q)
            out[t] = X
            worst = max(worst, (1 - p / 2) + c * a * 4 * L * L / (1 - q))
            xi = (1 - p / 2) * xi + c * a * (noise + 2 * L * L * X)
            if not math.isfinite(xi):
                out[t + 1:] = math.inf
                return out, worst
    return out, worst


def eta_max(K: int, L: float, p: float) -> float:
    """Largest constant step at which the consensus recursion of :func:`consensus_bound`
    contracts (rho' < 1): (1 - p/2) + 4 c(p) a L^2 / (1 - 4 a L^2) < 1, a = (eta K)^2, i.e.
    a < p / (8 L^2 (c(p) + p/2)).

    >>> round(eta_max(1, 1.0, 0.5), 4)   # c(0.5) = 2.5: a < 0.5 / 22
    0.1508
    """
    if not p > 0:
        return 0.0
    c = (1 - p) * (1 + 2 / p)
    return math.sqrt(p / (8 * L * L * (c + p / 2))) / K


def slope(Rs: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y on log R (y > 0).

    >>> round(slope(np.array([10.0, 20.0, 40.0]), np.array([1.0, 0.5, 0.25])), 6)
    -1.0
    """
    ly = np.log(np.maximum(np.asarray(y, float), 1e-300))
    lx = np.log(np.asarray(Rs, float))
    return float(np.polyfit(lx, ly, 1)[0])


def fit_exponent(run_avg: np.ndarray, Rs: np.ndarray, *, n_boot: int = 400
                 ) -> tuple[float, float]:
    """beta of the seed mean's running average ~ R^beta over ``Rs`` and its seed-bootstrap
    standard error (NaN with one seed). ``run_avg``: (S, len(Rs))."""
    beta = slope(Rs, run_avg.mean(0))
    S = run_avg.shape[0]
    if S < 2:
        return beta, math.nan
    rng = np.random.default_rng(0)
    boots = [slope(Rs, run_avg[rng.integers(0, S, S)].mean(0)) for _ in range(n_boot)]
    return beta, float(np.std(boots, ddof=1))


def check_convergence(ctx: Context) -> list[CheckResult]:
    """Check 5 for one (variant, method): measured running average of ||M grad f(x_bar)||^2
    against the a-priori bound, and its decay exponent."""
    # clock drift and stale gossip: the registry answers n/a from REQUIRES before this runs
    run = ctx.run
    missing = [c for c in COLUMNS if not run.has(c)]
    if missing:
        return [CheckResult(NAME, "5", ctx.method, ctx.variant, "n/a", source=SOURCE,
                            note=f"the run lacks {', '.join(missing)}")]
    gaps = [c for c in COLUMNS if np.isnan(run.mat(c)).any()]
    if gaps:
        return [CheckResult(NAME, "5", ctx.method, ctx.variant, "n/a", source=SOURCE,
                            note=f"{', '.join(gaps)} measured on some rounds only: the running "
                                 "average and the bound need every round")]
    K, n, p = ctx.K, ctx.n, ctx.p
    eta, eta_src = configured_steps(ctx)
    W = np.cumsum(eta)
    meas_pt = run.mat("grad_norm_sq_inner")                    # (S, R)
    meas = np.cumsum(eta[None, :] * meas_pt, 1) / W[None, :]
    L = run.mat("L_hull").max(1)
    sig2 = np.nanmax(run.mat("sigma_sq_max"), 1)
    zeta2 = run.mat("zeta_sq").max(1)
    finf, fnote = f_inf(ctx)
    F0 = np.maximum(run.mat("loss_start")[:, 0] - finf, 0.0)
    gap = 2 * F0[:, None] / (K * W[None, :])
    noise = L[:, None] * sig2[:, None] / n * np.cumsum(eta ** 2)[None, :] / W[None, :]
    drift = np.empty_like(meas)
    rho = 0.0
    for s in range(run.S):
        X, r = consensus_bound(eta, K, float(L[s]), float(sig2[s]), float(zeta2[s]), p)
        rho = max(rho, r)
        with np.errstate(over="ignore", invalid="ignore"):
            drift[s] = L[s] ** 2 * np.cumsum(eta * X) / W
    with np.errstate(over="ignore", invalid="ignore"):
        bound = gap + noise + drift
    etaL = float(eta.max() * L.max())
    cond = float(eta.max() * K * L.max() / p) if p > 0 else math.inf
    finite = bool(np.isfinite(bound[:, -1]).all())
    if finite:
        t = pooled_test(meas[:, -1:], lambda _p: bound[:, -1:], 0.5, 0.0, z=ctx.z,
                        effect=ctx.effect)
    else:
        t = decide("upper", math.inf, 0.0, 0.0, run.S, float(meas[:, -1].mean()), math.inf,
                   z=ctx.z, effect=ctx.effect)
    # the decay: beta over the second half against the theorem's initial-gap exponent
    Rs = np.arange(1, run.R + 1, dtype=float)
    half = slice(run.R // 2, run.R)
    beta, beta_se = fit_exponent(meas[:, half], Rs[half]) if run.R >= 4 else (math.nan,) * 2
    beta_thm = slope(Rs[half], 1 / W[half]) if run.R >= 4 else math.nan
    thr = threshold(ctx.z, run.S)
    lo, hi = beta - thr * beta_se, beta + thr * beta_se
    curve = pd.DataFrame({"round": run.rounds, "measured": meas.mean(0),
                          "bound": bound.mean(0) if finite else np.full(run.R, np.nan),
                          "initial_gap_term": gap.mean(0)})
    det = {"f_inf": fnote, "eta": eta_src, "L": float(L.max()), "sigma_sq": float(sig2.max()),
           "zeta_sq": float(zeta2.max()), "F0": float(F0.mean()),
           "term_init": float(gap[:, -1].mean()), "term_noise": float(noise[:, -1].mean()),
           "term_drift": float(drift[:, -1].mean()), "eta_L": etaL, "eta_K_L_over_p": cond,
           "eta_max_consensus": eta_max(K, float(L.max()), p),
           "consensus_contraction": rho, "beta": beta, "beta_ci": [lo, hi],
           "beta_theorem": beta_thm,
           "final_grad_norm_sq": float(run.mat("grad_norm_sq")[:, -1].mean())
           if run.has("grad_norm_sq") else None}
    btxt = (f"β = {beta:.3g} [{lo:.3g}, {hi:.3g}] vs theorem {beta_thm:.3g}"
            if math.isfinite(beta_se) else f"β = {beta:.3g} vs theorem {beta_thm:.3g}")
    head = (f"a priori (L = {det['L']:.3g}, σ² = {det['sigma_sq']:.3g}, ζ² = "
            f"{det['zeta_sq']:.3g}, p = {p:.3g}, η {eta_src}): ")
    if finite:
        body = (f"bound/measured {t.ratio:.3g} at R = {run.R} (init {det['term_init']:.3g}, "
                f"noise {det['term_noise']:.3g}, drift {det['term_drift']:.3g})")
    else:
        body = (f"no finite bound: η = {eta.max():.3g} is "
                f"{eta.max() / det['eta_max_consensus']:.3g}x the largest step at which the "
                f"consensus recursion contracts (η_max = {det['eta_max_consensus']:.3g}; "
                f"2 η K L = {2 * eta.max() * K * det['L']:.3g}, η K L / p = {cond:.3g}: "
                "Koloskova et al.'s η = O(p/(K L)) fails)")
    res = CheckResult.from_test(NAME, "5", ctx.method, ctx.variant, t, source=SOURCE,
                                note=head + body + f"; running average ~ R^β on rounds "
                                f"{run.R // 2 + 1}-{run.R}: {btxt}", details=det, curve=curve)
    why = []
    if etaL > 1:
        # outside the theorem: its step condition fails, so the run cannot violate it; it is
        # judged on whether it converges at all (the running average decays significantly)
        det["outside_theorem"] = True
        if (hi < 0) if math.isfinite(hi) else (beta < 0):   # one seed: the point estimate
            res.status = "n/a"
            res.note = (f"outside the theorem: η L_hull = {etaL:.3g} > 1; converges anyway, "
                        f"β = {beta:.3g} [{lo:.3g}, {hi:.3g}]; " + res.note)
            det["reasons"] = why
            return [res]
        if math.isfinite(lo) and math.isfinite(beta_thm) and lo <= beta_thm:
            # the fit cannot tell: its interval holds both the theorem's decay and no decay
            res.status = "underpowered"
            res.note = (f"outside the theorem: η L_hull = {etaL:.3g} > 1, and the decay fit "
                        f"cannot tell whether the run converges (β = {beta:.3g} [{lo:.3g}, "
                        f"{hi:.3g}] holds both the theorem's {beta_thm:.3g} and 0; more seeds "
                        "or rounds); " + res.note)
            det["reasons"] = why
            return [res]
        why.append(f"does not converge: the running average of ||M ∇f(x̄)||² does not decay "
                   f"({btxt}); η L_hull = {etaL:.3g} > 1 (the theorem's step condition "
                   "fails) is the likely cause")
    elif math.isfinite(lo) and lo > 0 and meas[:, -1].mean() > gap[:, -1].mean():
        why.append("the run stops converging: the running average of ||M ∇f(x̄)||² grows over "
                   "the second half and sits above the theorem's initial-gap term "
                   f"{gap[:, -1].mean():.3g} (a floor, not a transient)")
    det["reasons"] = why
    if why:
        res.status = "violated"
        res.note = "; ".join(why) + "; " + res.note
    return [res]
