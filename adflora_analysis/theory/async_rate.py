"""Check 7 — consensus rate of stale / partial gossip (issue 12; docs/theory.md §9).

Over a stretch in which block X is frozen and gossiped every round (adf-lora's frozen factor),
X only mixes, here with staleness τ and participation π, and the seed mean of Ξ_X decays
asymptotically at the predicted rate ρ_τ,π = ρ(E[B ⊗ B]) of the augmented state
(:func:`adflora_analysis.topology.async_rates.async_consensus_rate`, in ``meta.json`` as
``async_rate``). The first τ + 1 rounds of each stretch are dropped (the stale copies still
hold the trained values), the geometric rate of the rest is fitted as in check 3
(:func:`.frozen.fit_geometric_rate`), with a jackknife s.e. over seeds (:func:`jackknife_rate`),
and compared with ρ and its s.e. (0 when exact): two-sided (|z| <= threshold) where the sampler
is exchangeable, one-sided (fitted <= ρ + threshold s.e.) otherwise. The threshold is the
Student-t quantile with S − 1 degrees of freedom at the normal tail of ``ctx.z`` (the s.e. comes
from S seeds); docs/theory.md §9 says why the seed bootstrap and a normal threshold were too
optimistic at 10 seeds. Sources: Boyd et al. 2006; Lian et al. 2018 (AD-PSGD); Assran et al.
2019 (SGP); Efron & Stein 1981 (jackknife).

The prediction follows the run's asynchrony model (``[gossip] model``, ``async_rate.model``;
:func:`adflora_analysis.topology.async_rates.model_consensus_rate`): **stale-read** gossip
(this round's W^t on τ-old copies) — the augmented operator, derived; **AD-PSGD** (stale
gradients, current models averaged) — a frozen block mixes synchronously, so the τ = 0 rate,
derived; **push-sum** (SGP) — derived (the τ = 0 rate) for τ = 0 on a symmetric W^t, otherwise
*measured* by a direct simulation of the push-sum recursion (``method = "simulated"``), which
the note says.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.stats as st

from adflora_analysis.theory.data import Context
from adflora_analysis.theory.frozen import fit_geometric_rate, stretches
from adflora_analysis.theory.gossip import tiny
from adflora_analysis.theory.result import CheckResult
from adflora_analysis.theory.stats import pm

SOURCE = ("Boyd et al. 2006 (randomized gossip); Lian et al. 2018 (AD-PSGD); Assran et al. "
          "2019 (SGP): the augmented state's expected companion operator")
LABELS = {"stale-read": "stale-read gossip", "ad-psgd": "AD-PSGD (stale gradients)",
          "push-sum": "push-sum (SGP)"}
"""How the note names each asynchrony model (``async_rate.model``; stale-read when absent)."""
MIN_POINTS = 3
"""Rounds a stretch must keep after dropping its first τ + 1 to be fitted."""


def frozen_series(ctx: Context, block: str, skip: int) -> list[np.ndarray]:
    """(S, k) Ξ of ``block`` over each stretch where it is frozen and gossiped every round,
    without the stretch's first ``skip`` rounds; stretches entering at round-off are left out."""
    run = ctx.run
    xi = run.mat(f"xi_{block}")
    tol = tiny(xi)
    out = []
    for a, b in stretches([block not in tr and block in mx
                           for tr, mx in zip(run.trained, run.mixed, strict=True)]):
        if b - (a + skip) < MIN_POINTS:
            continue
        M = xi[:, a + skip:b]
        if M[:, 0].mean() <= tol * 1e6:
            continue
        out.append(M)
    return out


def jackknife_rate(series: list[np.ndarray]) -> tuple[float, float]:
    """The pooled fitted rate of stretches (S, k) (:func:`.frozen.fit_geometric_rate`) and its
    leave-one-seed-out jackknife standard error (nan below 3 seeds).

    >>> M = np.array([[1.0, 0.5, 0.25], [2.0, 1.0, 0.5], [1.0, 0.6, 0.36]])
    >>> r, se = jackknife_rate([M])
    >>> round(r, 4), round(se, 4)
    (0.5236, 0.0329)
    """
    rate = fit_geometric_rate(series, n_boot=0)[0]
    S = series[0].shape[0]
    if S < 3:
        return rate, math.nan
    loo = np.array([fit_geometric_rate([M[keep] for M in series], n_boot=0)[0]
                    for keep in ~np.eye(S, dtype=bool)])
    return rate, float(np.sqrt((S - 1) / S * ((loo - loo.mean()) ** 2).sum()))


def t_threshold(z: float, seeds: int) -> float:
    """The Student-t (``seeds`` − 1 d.o.f.) quantile with the normal tail beyond ``z``.

    >>> round(t_threshold(3.0, 10), 2), round(t_threshold(3.0, 10_000), 2)
    (4.09, 3.0)
    """
    return float(st.t.ppf(st.norm.cdf(z), max(seeds - 1, 1)))


def transient_range(pred: dict, series: list[np.ndarray], tau: int) -> tuple[float, float]:
    """(min, max) over :data:`~adflora_analysis.topology.async_rates.LAG_STARTS` and the
    stretches' lengths of the rate a window fit of the exact E Ξ reads (the prediction's
    reduced operator, :func:`~adflora_analysis.topology.async_rates.window_rates`), shifted by
    the difference between ``pred["rate"]`` and the operator's own ρ; (nan, nan) without
    ``patterns`` (full-operator predictions)."""
    pats = pred.get("patterns")
    if not pats or not pred.get("n"):
        return math.nan, math.nan
    from adflora_analysis.topology.async_rates import reduced_rate, window_rates

    n, pi = int(pred["n"]), float(pred.get("participation", 1.0))
    shift = float(pred["rate"]) - reduced_rate(np.asarray(pats), n, tau, pi)
    vals = [v for k in sorted({M.shape[1] for M in series})
            for v in window_rates(np.asarray(pats), n, tau, pi, tau + 1, tau + 1 + k).values()]
    return min(vals) + shift, max(vals) + shift


def check_async_rate(ctx: Context) -> list[CheckResult]:
    """Check 7 for one (variant, method): one result per block with usable frozen stretches."""
    pred = ctx.vmeta.get("async_rate")
    if not pred:
        return []
    # clock drift (the frozen block is trained by the clients whose clocks have switched):
    # the registry answers n/a from REQUIRES before this runs
    rho, rho_se = float(pred["rate"]), float(pred.get("stderr") or 0.0)
    tau = int(pred.get("staleness", 0))
    model = str(pred.get("model", "stale-read"))
    # the operator behind a derived prediction has lag τ only under stale-read
    op_pred = pred if model == "stale-read" else {**pred, "staleness": 0}
    how = ("measured by direct simulation" if pred.get("method") == "simulated"
           else "derived")
    out = []
    for blk in ("A", "B"):
        series = frozen_series(ctx, blk, tau + 1)
        if not series:
            continue
        r, r_se = jackknife_rate(series)
        se = math.sqrt((r_se if math.isfinite(r_se) else 0.0) ** 2 + rho_se ** 2)
        z = (r - rho) / se if se > 0 else math.inf * np.sign(r - rho)
        two = ctx.exchangeable or str(pred.get("method", "")).endswith("-reduced")
        thr = t_threshold(ctx.z, ctx.run.S)
        ok = abs(z) <= thr if two else z <= thr
        status = "held" if ok else "violated"
        if not math.isfinite(r_se) or ctx.run.S < 3:
            status = "underpowered"
        lo, hi = transient_range(op_pred, series, int(op_pred["staleness"]))
        transient = ""
        if math.isfinite(lo) and hi - lo > thr * se:
            status = "underpowered"
            transient = (f"; the window's fit depends on the lags at the switch by "
                         f"{lo - rho:+.4f} .. {hi - rho:+.4f} (subdominant modes near ρ: "
                         f"longer phases needed)")
        k = sum(M.shape[1] for M in series)
        curve = pd.concat([pd.DataFrame({"block": blk, "stretch": i, "k": np.arange(M.shape[1]),
                                         "measured": M.mean(0),
                                         "bound": M[:, 0].mean() * rho ** np.arange(M.shape[1])})
                           for i, M in enumerate(series)], ignore_index=True)
        out.append(CheckResult(
            "stale-gossip-rate", "7", ctx.method, ctx.variant, status, measured=r, bound=rho,
            ratio=rho / r if r > 0 else math.nan, threshold=thr, z=float(z), seeds=ctx.run.S,
            test="two-sided identity" if two else "one-sided bound", source=SOURCE,
            note=(f"{LABELS.get(model, model)}, frozen {blk}, τ = {tau}, "
                  f"π = {pred.get('participation', 1.0):g}: fitted rate "
                  f"{pm(r, r_se)} vs predicted {pm(rho, rho_se)} ({k} points in "
                  f"{len(series)} stretches, first {tau + 1} rounds of each dropped; "
                  f"{pred.get('method', '?')} prediction, {how}){transient}"),
            details={"block": blk, "fitted_rate": r, "fitted_rate_stderr": r_se,
                     "predicted_rate": rho, "predicted_rate_stderr": rho_se, "staleness": tau,
                     "participation": pred.get("participation"), "stretches": len(series),
                     "method_of_prediction": pred.get("method"),
                     "moments_of_prediction": pred.get("moments"), "stderr_kind": "jackknife",
                     "window_rate_range": [lo, hi], "model": model,
                     "prediction": how},
            curve=curve))
    return out
