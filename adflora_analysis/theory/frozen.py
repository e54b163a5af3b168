"""Check 3 — frozen-block consensus (ADF-LoRA's claim; docs/theory.md §1, eq. 1.2).

Over a stretch of k rounds in which block X is not trained but gossiped every round, X only
mixes, so (check 2 applied k times, tower rule)

    E Xi_X(t0 + k) <= (1 - p)^k Xi_X(t0),

with equality for an exchangeable sampler (tested two-sided there). Whether the frozen block is
*supposed* to be gossiped comes from the method's spec (``core.methods``), not from the rows:
under ``rolora`` it is not (a ``finding``: Xi stays flat), under ``adf-lora`` it is, so an
adf-lora run that left it out of gossip is ``violated``. Stretches entering with Xi ~ 0 (a
shared init) are skipped. The geometric rate of the frozen block's Xi is fitted on the
bias-corrected log of the seed mean (stats.log_mean_unbiased) with a seed-bootstrap error.
Source: Koloskova et al. 2020, Assumption 4 iterated; ADF-LoRA (arXiv 2511.18291).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from adflora_analysis.theory.data import Context, async_gossip  # noqa: F401 - re-exported
from adflora_analysis.theory.gossip import tiny
from adflora_analysis.theory.result import CheckResult
from adflora_analysis.theory.stats import (
    EFFECT_DEFAULT,
    MIN_SEEDS,
    RatioTest,
    interval,
    log_mean_unbiased,
    pm,
    pooled_test,
    power_quantile,
    threshold,
)

SOURCE = "Koloskova et al. 2020, Assumption 4 iterated; ADF-LoRA (arXiv 2511.18291)"


def stretches(flags: list[bool]) -> list[tuple[int, int]]:
    """Maximal runs [start, end) where flags is True.

    >>> stretches([True, True, False, True])
    [(0, 2), (3, 4)]
    """
    out, start = [], None
    for i, f in enumerate([*flags, False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start, i))
            start = None
    return out


def fit_geometric_rate(series: list[np.ndarray], n_boot: int = 200, seed: int = 0
                       ) -> tuple[float, float]:
    """Pooled geometric rate of decaying stretches, each (S, k+1): least squares of the
    bias-corrected log seed mean on k with a free intercept per stretch. Returns (rate,
    bootstrap stderr over seeds).

    >>> s = [np.array([[1.0, 0.5, 0.25]] * 3)]
    >>> r, _ = fit_geometric_rate(s)
    >>> round(r, 6)
    0.5
    """
    def fit(idx) -> float:
        num = den = 0.0
        for M in series:
            y = log_mean_unbiased(M[idx])
            k = np.arange(len(y), dtype=float)
            kc = k - k.mean()
            num += float((kc * (y - y.mean())).sum())
            den += float((kc * kc).sum())
        return math.exp(num / den) if den > 0 else math.nan

    if not series:
        return math.nan, math.nan
    S = series[0].shape[0]
    rate = fit(np.arange(S))
    rng = np.random.default_rng(seed)
    boots = [fit(rng.integers(0, S, S)) for _ in range(n_boot)] if S > 1 else []
    return rate, float(np.std(boots, ddof=1)) if len(boots) > 1 else math.nan


def _target_se(ctx: Context) -> float:
    if ctx.exchangeable or ctx.rho is None:
        return ctx.p_se
    return float(ctx.rho_se or 0.0)


def rate_test(rate: float, rate_se: float, ctx: Context, seeds: int) -> RatioTest:
    """Check 3's verdict from the fitted per-round rate of the frozen block's Ξ: two-sided
    against 1 − p for an exchangeable sampler (then E Ξ(t0 + k) = (1 − p)^k Ξ(t0) exactly),
    one-sided against the second-moment rate ρ (1 − p when it is unknown) otherwise.
    ``z`` = (rate − target) / sqrt(rate_se² + target_se²) at the Student-t threshold of
    :func:`.stats.threshold`; ``ratio`` = target ÷ rate; ``mde``: the relative rate error
    detectable with 80 % power (above ``effect``, or fewer than 3 seeds: underpowered).

    >>> from adflora_analysis.theory.data import Context
    >>> ctx = Context(None, None, {}, "adf-lora", "v", {}, 3.0, 0.2, 0.3655, 0.0003, 0.6345,
    ...               0.0003, True, False, "synthetic")
    >>> t = rate_test(0.764, 0.0066, ctx, 20)
    >>> t.status, round(t.z, 1)
    ('violated', 19.6)
    >>> rate_test(0.636, 0.0066, ctx, 20).status
    'held'
    """
    two = bool(ctx.exchangeable)
    target = 1 - ctx.p if two or ctx.rho is None else float(ctx.rho)
    se = math.sqrt((rate_se if math.isfinite(rate_se) else math.inf) ** 2
                   + _target_se(ctx) ** 2)
    thr = threshold(ctx.z, seeds, two_sided=two)
    d = rate - target
    if not (math.isfinite(thr) and math.isfinite(se)):
        z = math.nan
    elif se > 0:
        z = d / se
    else:
        z = 0.0 if d == 0 else math.copysign(math.inf, d)
    mde = ((thr + power_quantile(seeds)) * se / target
           if math.isfinite(thr) and math.isfinite(se) and target > 0 else math.inf)
    bad = math.isfinite(z) and ((abs(z) > thr) if two else (z > thr))
    effect = ctx.effect if ctx.effect is not None else EFFECT_DEFAULT
    if bad:
        status = "violated"
    elif seeds < MIN_SEEDS or not math.isfinite(mde) or mde > effect:
        status = "underpowered"
    else:
        status = "held"
    ratio = target / rate if rate > 0 else math.inf
    rse = ratio * se / rate if rate > 0 and math.isfinite(se) else math.inf
    return RatioTest("equal" if two else "upper", float(ratio), float(rse), thr, float(z),
                     float(mde), seeds, status, float(rate), float(target))


def _declared_mixed(method: str, block: str) -> bool | None:
    """Whether the method's spec gossips ``block`` in the rounds it is frozen (None: unknown)."""
    from adflora_analysis.core.methods import METHODS

    spec = METHODS.get(method)
    if spec is None:
        return None
    return spec.gossips_frozen(block)


def check_frozen(ctx: Context) -> list[CheckResult]:
    """Check 3 for one (variant, method): one result per block with frozen stretches.
    Premises (declared at registration, tested once by the registry): p > 0, one phase per
    round, synchronous gossip (on stale or partial gossip a frozen block mixes with old copies
    through the masked W^t: check 7 tests it), W^t doubly stochastic."""
    run, p, p_se = ctx.run, ctx.p, ctx.p_se
    out = []
    for blk in ("A", "B"):
        frozen = [blk not in tr for tr in run.trained]
        xi, start_vals = run.mat(f"xi_{blk}"), run.mat(f"xi_{blk}_local")
        tol = tiny(np.concatenate([xi, start_vals], 1))
        declared = _declared_mixed(ctx.method, blk)
        meas, bnds, idx, series, flat = [], [], [], [], []
        for si, (a, b) in enumerate(stretches(frozen)):
            x0 = start_vals[:, a]
            if x0.mean() <= tol:
                continue
            rows_mixed = all(blk in run.mixed[j] for j in range(a, b))
            if declared is None and not rows_mixed and any(blk in run.mixed[j]
                                                           for j in range(a, b)):
                continue                       # partly gossiped, unknown method: no claim
            k = np.arange(1, b - a + 1)
            meas.append(xi[:, a:b])
            bnds.append((x0, k))
            idx.append(pd.DataFrame({"block": blk, "stretch": si, "round": run.rounds[a:b],
                                     "k": k}))
            M = np.concatenate([x0[:, None], xi[:, a:b]], 1)
            (series if rows_mixed else flat).append(M)
        if not meas:
            continue
        expected = "hold" if (declared if declared is not None else bool(series)) else "fail"
        m = np.concatenate(meas, 1)

        def bound(pp, bnds=bnds):
            return np.concatenate([x0[:, None] * (1 - pp) ** k for x0, k in bnds], 1)

        kind = "equal" if ctx.exchangeable else "upper"
        t = pooled_test(m, bound, p, p_se, kind=kind, z=ctx.z, effect=ctx.effect)
        curve = pd.concat(idx, ignore_index=True)
        curve["measured"], curve["bound"] = m.mean(0), bound(p).mean(0)
        det = {"block": blk, "one_minus_p": 1 - p, "rho": ctx.rho, "rho_stderr": ctx.rho_se,
               "stretches": len(meas), "stretch_length": int(curve.k.max()),
               "declared_gossiped": declared}
        if series:
            r, r_se = fit_geometric_rate(series)
            det.update(fitted_rate=r, fitted_rate_stderr=r_se, pooled_ratio=t.ratio,
                       pooled_ratio_ci=list(t.ratio_ci))
            t = rate_test(r, r_se, ctx, m.shape[0])
            target = "1 - p" if t.kind == "equal" else "rho"
            det.update(target_rate=t.bound, rate_z=t.z)
            side = "two-sided" if t.kind == "equal" else "one-sided"
            zs = (f", z = {t.z:.3g} ({side}, threshold {t.threshold:.2f})"
                  if math.isfinite(t.z) and math.isfinite(t.threshold) else f" ({side})")
            note = (f"frozen {blk} gossiped: fitted rate {pm(r, r_se)} vs {target} = "
                    f"{pm(t.bound, _target_se(ctx))}{zs}; pooled Ξ ratio bound/measured "
                    f"{interval(det['pooled_ratio'], *det['pooled_ratio_ci'])}")
        else:
            ratios = [float(M[:, -1].mean() / M[:, 0].mean()) for M in flat]
            det.update(mean_ratio_end_over_start=float(np.mean(ratios)))
            note = (f"frozen {blk} not gossiped: Xi(end)/Xi(start) = {np.mean(ratios):.6f}"
                    f" over {int(curve.k.max())}-round stretches; the mixed bound allows "
                    f"{(1 - p) ** int(curve.k.max()):.4f}")
        res = CheckResult.from_test("frozen-block-consensus", "3", ctx.method, ctx.variant, t,
                                    expected=expected, source=SOURCE, note=note, details=det,
                                    curve=curve)
        if expected == "fail":
            res.status = "finding" if t.status == "violated" else t.status
        out.append(res)
    return out
