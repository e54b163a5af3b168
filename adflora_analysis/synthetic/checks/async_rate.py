"""Check 7 — consensus rate of stale / partial gossip (issue 12; docs/theory.md §9).

Over a stretch in which block X is frozen and gossiped every round (adf-lora's frozen factor),
X only mixes, here with staleness τ and participation π, and the seed mean of Ξ_X decays
asymptotically at the predicted rate ρ_τ,π = ρ(E[B ⊗ B]) of the augmented state
(:func:`adflora_analysis.topology.async_rates.async_consensus_rate`, in ``meta.json`` as
``async_rate``). The first τ + 1 rounds of each stretch are dropped (the stale copies still
hold the trained values), the geometric rate of the rest is fitted as in check 3
(:func:`.frozen.fit_geometric_rate`, bootstrap s.e. over seeds), and compared with ρ:
two-sided (|z| <= threshold) where the sampler is exchangeable, one-sided (fitted <= ρ + z s.e.)
otherwise. Sources: Boyd et al. 2006; Lian et al. 2018 (AD-PSGD); Assran et al. 2019 (SGP).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from adflora_analysis.synthetic.checks.data import Context
from adflora_analysis.synthetic.checks.frozen import fit_geometric_rate, stretches
from adflora_analysis.synthetic.checks.gossip import tiny
from adflora_analysis.synthetic.checks.result import CheckResult

SOURCE = ("Boyd et al. 2006 (randomized gossip); Lian et al. 2018 (AD-PSGD); Assran et al. "
          "2019 (SGP): the augmented state's expected companion operator")
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


def check_async_rate(ctx: Context) -> list[CheckResult]:
    """Check 7 for one (variant, method): one result per block with usable frozen stretches."""
    pred = ctx.vmeta.get("async_rate")
    if not pred:
        return []
    rho, rho_se = float(pred["rate"]), float(pred.get("stderr") or 0.0)
    tau = int(pred.get("staleness", 0))
    out = []
    for blk in ("A", "B"):
        series = frozen_series(ctx, blk, tau + 1)
        if not series:
            continue
        r, r_se = fit_geometric_rate(series)
        se = math.sqrt((r_se if math.isfinite(r_se) else 0.0) ** 2 + rho_se ** 2)
        z = (r - rho) / se if se > 0 else math.inf * np.sign(r - rho)
        two = ctx.exchangeable
        ok = abs(z) <= ctx.z if two else z <= ctx.z
        status = "held" if ok else "violated"
        if not math.isfinite(r_se) or ctx.run.S < 3:
            status = "underpowered"
        k = sum(M.shape[1] for M in series)
        curve = pd.concat([pd.DataFrame({"block": blk, "stretch": i, "k": np.arange(M.shape[1]),
                                         "measured": M.mean(0),
                                         "bound": M[:, 0].mean() * rho ** np.arange(M.shape[1])})
                           for i, M in enumerate(series)], ignore_index=True)
        out.append(CheckResult(
            "stale-gossip-rate", "7", ctx.method, ctx.variant, status, measured=r, bound=rho,
            ratio=rho / r if r > 0 else math.nan, threshold=ctx.z, z=float(z), seeds=ctx.run.S,
            test="two-sided identity" if two else "one-sided bound", source=SOURCE,
            note=(f"frozen {blk}, τ = {tau}, π = {pred.get('participation', 1.0):g}: fitted rate "
                  f"{r:.4f} ± {r_se:.4f} vs predicted {rho:.4f} ± {rho_se:.4f} ({k} points in "
                  f"{len(series)} stretches, first {tau + 1} rounds of each dropped)"),
            details={"block": blk, "fitted_rate": r, "fitted_rate_stderr": r_se,
                     "predicted_rate": rho, "predicted_rate_stderr": rho_se, "staleness": tau,
                     "participation": pred.get("participation"), "stretches": len(series),
                     "method_of_prediction": pred.get("method")},
            curve=curve))
    return out
