"""Check 2 — one gossip step contracts the consensus error (docs/theory.md §1):

    E[Xi(W X) | X] <= (1 - p) Xi(X),

with equality for every X when the sampler is exchangeable (E[W^T W] = aI + bJ). Tested over
every gossiped block and round with X = the state after the local update (``xi_X_local``) and
WX = after gossip (``xi_X``), as one pooled ratio of sums across seeds: two-sided (an identity)
for an exchangeable sampler, so gossip applied twice or W = J is caught; one-sided otherwise.
With two seeds the rounds replicate instead of the seeds (a gossip step's
D = Ξ(WX) − (1 − p)Ξ(X) is a martingale difference; ``pooled_test(replicates="points")``).
Source: Koloskova et al. 2020, Assumption 4 (eq. 5); Boyd et al. 2006, Lemma 1.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from adflora_analysis.theory.data import Context
from adflora_analysis.theory.result import CheckResult
from adflora_analysis.theory.stats import (
    MIN_SEEDS,
    interval,
    pm,
    pooled_test,
)

SOURCE = "Koloskova et al. 2020, Assumption 4; Boyd et al. 2006, Lemma 1"


def tiny(x: np.ndarray) -> float:
    """Values below this are round-off of an exactly-zero consensus error."""
    return 1e-24 + 1e-12 * float(np.nanmax(np.abs(x))) if np.size(x) else 1e-24


def check_gossip(ctx: Context) -> CheckResult:
    """Check 2 for one (variant, method). Premises (declared at registration, tested once by
    the registry): one gossip phase per round, W^t doubly stochastic, p > 0, synchronous
    gossip."""
    run, p, p_se = ctx.run, ctx.p, ctx.p_se
    before_l, after_l, idx = [], [], []
    det: dict = {"one_minus_p": 1 - p, "p": p, "p_stderr": p_se, "rho": ctx.rho,
                 "rho_stderr": ctx.rho_se, "exchangeable": ctx.exchangeable}
    for blk in ("A", "B"):
        before, after = run.mat(f"xi_{blk}_local"), run.mat(f"xi_{blk}")
        cols = [j for j in range(run.R) if blk in run.mixed[j]
                and before[:, j].mean() > tiny(before)]
        if not cols:
            continue
        before_l.append(before[:, cols])
        after_l.append(after[:, cols])
        idx.append(pd.DataFrame({"block": blk, "round": run.rounds[cols]}))
        det[f"ratio_{blk}"] = float(after[:, cols].sum() / before[:, cols].sum())
    if not before_l:
        return CheckResult("gossip-contraction", "2", ctx.method, ctx.variant, "n/a",
                           note="no gossiped block with a nonzero consensus error")
    b, a = np.concatenate(before_l, 1), np.concatenate(after_l, 1)
    if p >= 1 and p_se == 0:     # W^t = J: one step reaches consensus, Ξ after is round-off
        ok = bool((a <= tiny(b)).all())
        return CheckResult("gossip-contraction", "2", ctx.method, ctx.variant,
                           "held" if ok else "violated", measured=float(a.mean()), bound=0.0,
                           ratio=math.inf if ok else 0.0, seeds=run.S, source=SOURCE,
                           test="deterministic (p = 1: Ξ after gossip is round-off of 0)",
                           note=("p = 1 (W^t = J): Ξ after gossip is round-off of zero at every "
                                 f"point (max {a.max():.2g})" if ok else
                                 f"p = 1 (W^t = J) but Ξ after gossip reaches {a.max():.3g}, "
                                 "above round-off: gossip did not average"), details=det)
    kind = "equal" if ctx.exchangeable else "upper"
    t = pooled_test(a, lambda pp: (1 - pp) * b, p, p_se, kind=kind, z=ctx.z, effect=ctx.effect)
    if 2 <= run.S < MIN_SEEDS:
        # two seeds: the seeds' spread has one degree of freedom and can by chance come out
        # far too small; a gossip step's D = Ξ(WX) − (1 − p)Ξ(X) is a martingale difference,
        # so the rounds replicate instead (docs/theory.md §5). One seed: no test, as for all.
        det["stderr_seeds"] = t.stderr
        t = pooled_test(a, lambda pp: (1 - pp) * b, p, p_se, kind=kind, z=ctx.z,
                        effect=ctx.effect, replicates="points")
        det["stderr_rounds"] = t.stderr
    measured_rate = float(a.mean(0).sum() / b.mean(0).sum())
    det["measured_rate"] = measured_rate
    curve = pd.concat(idx, ignore_index=True)
    curve["measured"], curve["bound"] = a.mean(0), (1 - p) * b.mean(0)
    lo, hi = t.ratio_ci
    note = (f"E[after]/E[before] = {measured_rate:.4f} vs 1 - p = {pm(1 - p, p_se)}"
            + (" (= rho: exchangeable sampler)" if ctx.exchangeable else
               (f"; rho = {ctx.rho:.4f}" if ctx.rho is not None else ""))
            + f"; bound/measured {interval(t.ratio, lo, hi)}"
            + ("; two-sided (identity)" if kind == "equal" else "; one-sided"))
    return CheckResult.from_test("gossip-contraction", "2", ctx.method, ctx.variant, t,
                                 source=SOURCE, note=note, details=det, curve=curve)
